"""The sweep's leaderboard: one row per trial, as a table, a CSV and a plot."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402
from rich.table import Table  # noqa: E402

from raysys.evaluation.plots import save_figure  # noqa: E402
from raysys.tune.space import trial_params  # noqa: E402
from raysys.layout import checkpoints, trial_run_name  # noqa: E402
from raysys.tune.trial import TRAIN_DONE, read_record  # noqa: E402

#: Trial statuses in the leaderboard.
COMPLETED, STOPPED, ERROR, UNFINISHED = "completed", "stopped", "error", "unfinished"
COLUMNS = ["trial", "trial_id", "family", "status", "epochs", "epochs_run", "val_pr_auc", "val_loss",
           "best_val_loss", "run_id", "checkpoint_path", "latest_checkpoint", "params"]
FAMILY_COLORS = {"ae": "tab:blue", "vae": "tab:orange", "lstm": "tab:green", "conv": "tab:purple"}


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def trial_status(tune_status: str, record: dict[str, Any] | None, last_result: dict[str, Any]) -> str:
    """``completed`` (trained to its own end), ``stopped`` (by ASHA or the time budget),
    ``error``, or ``unfinished`` (pending or running when the sweep ended)."""
    if tune_status == "ERROR":
        return ERROR
    if tune_status == "TERMINATED":
        done = (record or {}).get("status") == "completed" or bool(last_result.get(TRAIN_DONE))
        return COMPLETED if done else STOPPED
    return UNFINISHED


def latest_checkpoint(train_run_dir: str | os.PathLike) -> tuple[int, str | None]:
    """(epoch, path) of the newest checkpoint in a Train run directory; ``(0, None)`` without one."""
    found = checkpoints(train_run_dir)
    return (found[0][0], str(found[0][1])) if found else (0, None)


def _creation_index(trial: Any) -> int:
    """The index the searcher gave the trial (its experiment tag starts with it: ``"3_family=..."``)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def build_leaderboard(trials: Iterable[Any], train_storage: str | os.PathLike, metric: str, mode: str) -> pd.DataFrame:
    """One row per Tune trial (``ray.tune.experiment.Trial``), best ``metric`` first.

    ``trial`` is the order the searcher created trials in; parameters are in
    ``params`` (JSON) and also spread over ``p.<name>`` columns. ``epochs`` is the last epoch
    Tune saw; ``epochs_run`` the last one the Train run checkpointed (a worker can finish an
    epoch or two more between ASHA's decision and the trial's end): the compute spent.
    """
    rows = []
    for trial in sorted(trials, key=_creation_index):
        last = dict(trial.last_result or {})
        record = read_record(train_storage, trial.trial_id)
        family, params = trial_params(trial.config)
        ckpt_epoch, ckpt_path = latest_checkpoint(Path(train_storage) / trial_run_name(trial.trial_id))
        epochs = int(last.get("epoch", 0) or 0)
        rows.append({
            "trial_id": trial.trial_id, "family": family,
            "status": trial_status(trial.status, record, last),
            "epochs": epochs, "epochs_run": max(epochs, ckpt_epoch),
            "val_pr_auc": _float(last.get("val_pr_auc")), "val_loss": _float(last.get("val_loss")),
            "best_val_loss": _float(last.get("best_val_loss")),
            "run_id": (record or {}).get("run_id"), "checkpoint_path": last.get("checkpoint_path"),
            "latest_checkpoint": ckpt_path,
            "params": json.dumps(params, sort_keys=True),
            **{f"p.{k}": (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in params.items()},
        })
    frame = pd.DataFrame(rows, columns=COLUMNS[1:] if not rows else None)
    frame.insert(0, "trial", range(len(frame)))
    if len(frame):
        frame = frame.sort_values(metric, ascending=(mode == "min"), na_position="last", kind="stable")
    return frame.reset_index(drop=True)


def total_trial_epochs(leaderboard: pd.DataFrame, column: str = "epochs_run") -> int:
    """Epochs trained over all trials (``epochs_run``: the compute a sweep spent; ``epochs``:
    the epochs Tune saw)."""
    return int(leaderboard[column].sum()) if len(leaderboard) else 0


def leaderboard_table(leaderboard: pd.DataFrame, metric: str, title: str = "Sweep leaderboard",
                      limit: int = 20) -> Table:
    """A rich table of the top ``limit`` trials."""
    table = Table(title=title)
    for column, justify in (("#", "right"), ("trial", "left"), ("family", "left"), ("status", "left"),
                            ("epochs", "right"), (metric, "right"), ("val_loss", "right")):
        table.add_column(column, justify=justify)
    for row in leaderboard.head(limit).itertuples(index=False):
        table.add_row(str(row.trial), row.trial_id, row.family, row.status, str(row.epochs),
                      _fmt(getattr(row, metric)), _fmt(row.val_loss))
    return table


def best_table(best: dict[str, dict[str, Any]], title: str = "Best trial per family") -> Table:
    """A rich table of ``best.json``: family, trial, metric, detector directory."""
    table = Table(title=title)
    for column in ("family", "trial", "metric", "value", "detector"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for family, entry in best.items():
        table.add_row(family, entry["trial_id"], entry["metric_name"], _fmt(entry["metric"]), entry["checkpoint"])
    return table


def _fmt(value: Any) -> str:
    value = _float(value)
    return "-" if math.isnan(value) else f"{value:.4f}"


def plot_leaderboard(leaderboard: pd.DataFrame, metric: str, mode: str, path: str | os.PathLike,
                     title: str = "Sweep") -> Path:
    """``metric`` of each trial in creation order (colour: family; hollow: stopped early;
    x: error) with the running best, above the epochs each trial trained."""
    frame = leaderboard.sort_values("trial")
    fig, (ax, ep_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for family, group in frame.groupby("family", sort=True):
        color = FAMILY_COLORS.get(family, "tab:gray")
        for status, style in ((COMPLETED, {"facecolors": color}), (STOPPED, {"facecolors": "none"}),
                              (UNFINISHED, {"facecolors": "none", "linestyle": ":"})):
            part = group[group["status"] == status]
            if len(part):
                ax.scatter(part["trial"], part[metric], edgecolors=color, s=40, zorder=3,
                           label=f"{family} ({status})", **style)
        errors = group[group["status"] == ERROR]
        if len(errors):
            ax.scatter(errors["trial"], [0] * len(errors), marker="x", color=color, label=f"{family} (error)")
        ep_ax.bar(group["trial"], group["epochs_run"], color=color, label=family)
    values = frame[metric].astype(float)
    running = values.cummax() if mode == "max" else values.cummin()
    ax.step(frame["trial"], running, where="post", color="black", linewidth=1, label="best so far")
    ax.set(ylabel=metric, title=f"{title}: {metric} per trial")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    ep_ax.set(xlabel="trial (creation order)", ylabel="epochs trained")
    ep_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ep_ax.grid(alpha=0.3)
    return save_figure(fig, path)
