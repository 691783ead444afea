"""Figures logged to MLflow and used by the report: labelled axes, readable at a glance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from raysys.evaluation.events import events_of as _runs  # noqa: E402


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Lay out, write (creating folders) and close ``fig``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike) -> Path:
    """Train and validation loss per epoch, one colour per run."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, history), color in zip(histories.items(), plt.cm.tab10.colors):
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], color=color, marker="o", markersize=3,
                label=f"{name} train")
        ax.plot(epochs, [h["val_loss"] for h in history], color=color, marker="s", markersize=3, linestyle="--",
                label=f"{name} validation")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss curves", yscale="log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def score_distribution(scores: np.ndarray, y_true: np.ndarray | None, threshold: float, path: str | os.PathLike,
                       title: str = "Anomaly score distribution") -> Path:
    """Histograms of normal vs anomalous scores (all rows without labels) with the decision threshold."""
    fig, ax = plt.subplots(figsize=(7, 4))
    # scores span orders of magnitude: log bins, or symmetric-log ones when scores can be negative
    positive = bool((scores > 0).all())
    if positive:
        bins = np.logspace(np.log10(scores.min()), np.log10(scores.max()), 60)
    else:
        bins = np.sinh(np.linspace(np.arcsinh(scores.min()), np.arcsinh(scores.max()), 60))
    if y_true is None:
        ax.hist(scores, bins=bins, alpha=0.6, label="all rows (no labels)", density=True)
    else:
        ax.hist(scores[y_true == 0], bins=bins, alpha=0.6, label="normal", density=True)
        ax.hist(scores[y_true == 1], bins=bins, alpha=0.6, label="anomalous", density=True)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xscale("log" if positive else "symlog", **({} if positive else {"linthresh": 1.0}))
    ax.set(xlabel="anomaly score", ylabel="density", title=title)
    ax.legend()
    return save_figure(fig, path)


def roc_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike) -> Path:
    """ROC and precision-recall curves side by side for each named ``(y_true, scores)``."""
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, (y_true, scores) in curves.items():
        fpr, tpr, _ = roc_curve(y_true, scores)
        precision, recall, _ = precision_recall_curve(y_true, scores)
        roc_ax.plot(fpr, tpr, label=name)
        pr_ax.plot(recall, precision, label=name)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", ylim=(0, 1.02))
    roc_ax.legend(fontsize=8)
    pr_ax.legend(fontsize=8)
    return save_figure(fig, path)


def confusion_matrix_plot(cm: Mapping[str, int], path: str | os.PathLike, title: str = "Confusion matrix") -> Path:
    """The 2x2 confusion matrix with counts in the cells."""
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(grid, cmap="Blues")
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > grid.max() / 2 else "black", fontsize=12)
    ax.set_xticks([0, 1], ["normal", "anomaly"])
    ax.set_yticks([0, 1], ["normal", "anomaly"])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return save_figure(fig, path)


def recall_by_type(recalls: Mapping[str, float], path: str | os.PathLike, title: str = "Recall per anomaly type"
                   ) -> Path:
    """Bar chart of the share of each anomaly type's rows that were flagged."""
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(recalls)
    ax.bar(names, [recalls[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(i, recalls[n] + 0.02, f"{recalls[n]:.2f}", ha="center")
    ax.set(xlabel="anomaly type", ylabel="recall", title=title, ylim=(0, 1.1))
    return save_figure(fig, path)


def timeline(timestamps: np.ndarray, sensors: Mapping[str, np.ndarray], scores: np.ndarray, threshold: float,
             y_true: np.ndarray | None, path: str | os.PathLike, title: str = "Test split timeline",
             top_sensors: Sequence[Sequence[str]] | None = None) -> Path:
    """Sensor traces above the ensemble score, true anomalies shaded (when labelled), flags marked:
    what was caught. With ``top_sensors`` (per row), each run of flagged rows is labelled with the top
    sensor at its peak."""
    n = len(sensors)
    fig, axes = plt.subplots(n + 1, 1, figsize=(13, 1.6 * (n + 1) + 0.8), sharex=True)
    spans = [] if y_true is None else _runs(np.asarray(y_true).astype(bool))
    for ax, (name, values) in zip(axes, sensors.items()):
        ax.plot(timestamps, values, linewidth=0.6, color="tab:blue")
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
    score_ax = axes[-1]
    score_ax.plot(timestamps, scores, linewidth=0.6, color="tab:purple", label="ensemble score")
    score_ax.axhline(threshold, color="black", linestyle="--", linewidth=0.8, label="threshold")
    flagged = scores > threshold
    score_ax.scatter(np.asarray(timestamps)[flagged], scores[flagged], s=4, color="tab:red", label="flagged", zorder=3)
    for start, stop in (_runs(flagged) if top_sensors is not None else []):
        peak = start + int(np.argmax(scores[start:stop]))
        if top_sensors[peak]:
            score_ax.annotate(top_sensors[peak][0], (timestamps[peak], scores[peak]), fontsize=6, rotation=45,
                              xytext=(2, 3), textcoords="offset points", color="tab:red")
    score_ax.set_ylabel("score", fontsize=8)
    score_ax.set_xlabel("time")
    if (scores > 0).all():
        score_ax.set_yscale("log")
    for ax in axes:
        for start, stop in spans:
            ax.axvspan(timestamps[start], timestamps[stop - 1], color="tab:orange", alpha=0.25, linewidth=0)
    handles, labels = score_ax.get_legend_handles_labels()
    if y_true is not None:
        handles.append(plt.Rectangle((0, 0), 1, 1, color="tab:orange", alpha=0.25))
        labels.append("true anomaly")
    score_ax.legend(handles, labels, fontsize=7, loc="upper left", ncol=4)
    axes[0].set_title(title)
    return save_figure(fig, path)


def fleet_distributions(values: Mapping[str, np.ndarray], far_asked: float | None, path: str | os.PathLike,
                        title: str = "Per-asset metrics") -> Path:
    """One histogram per metric over a fleet's assets (``values``: metric -> one value per asset, NaN where
    an asset could not measure it); false-alarm panels mark the rate asked for."""
    names = [n for n, v in values.items() if np.isfinite(np.asarray(v, dtype=float)).any()] or list(values)[:1]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        data = np.asarray(values[name], dtype=float)
        data = data[np.isfinite(data)]
        ax.hist(data, bins=min(30, max(5, len(data) // 3)), color="tab:blue", alpha=0.8)
        if far_asked is not None and "false_alarm" in name:
            ax.axvline(far_asked, color="tab:red", linestyle="--", label=f"asked {far_asked:g}")
            ax.legend()
        ax.set(title=f"{name} ({len(data)} assets)", xlabel=name, ylabel="assets")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    return save_figure(fig, path)
