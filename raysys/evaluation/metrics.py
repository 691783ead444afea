"""Detection metrics (scikit-learn) and decision-threshold calibration."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from rich.markup import escape
from rich.table import Table
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from raysys.data.anomalies import NORMAL
from raysys.evaluation import THRESHOLD_METHODS


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the highest F1 on labelled data (flag when score > threshold)."""
    if len(np.unique(y_true)) < 2:
        raise ValueError("best_f1 threshold needs both normal and anomalous labelled rows")
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    # precision_recall_curve flags score >= t; step just below t so that "score > threshold" matches
    lower = scores[scores < thresholds[best]]
    return float((thresholds[best] + lower.max()) / 2) if len(lower) else float(np.nextafter(thresholds[best], -np.inf))


def calibrate_threshold(method: str, y_true: np.ndarray | None, scores: np.ndarray, percentile: float = 99.0,
                        target_far: float = 0.01) -> float:
    """Pick a threshold on validation data by ``method``.

    ``best_f1``: the best-F1 threshold (needs labels); ``percentile``: the given percentile of normal
    scores; ``far``: the threshold keeping a false-alarm rate on normal rows
    (:func:`raysys.evaluation.calibration.tail_threshold`). ``y_true`` None: every row is normal.
    """
    if method == "best_f1":
        if y_true is None:
            raise ValueError("threshold method 'best_f1' needs labelled validation rows, and the data has no "
                             "labels; use 'far' (a false-alarm rate asked for) or 'percentile'")
        return best_f1_threshold(y_true, scores)
    normal = scores if y_true is None else scores[np.asarray(y_true) == 0]
    if method == "percentile":
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"percentile must be in (0, 100), got {percentile}")
        return float(np.percentile(normal, percentile))
    if method == "far":
        from raysys.evaluation.calibration import tail_threshold

        return tail_threshold(normal, target_far)
    raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {method!r}")


def default_threshold_method(labelled: bool) -> str:
    """The threshold method used when none is asked for: ``best_f1`` on labelled data, else ``far``."""
    return "best_f1" if labelled else "far"


def detection_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float,
                      anomaly_types: np.ndarray | None = None, timestamps: np.ndarray | None = None) -> dict[str, Any]:
    """Point-wise metrics (precision, recall, F1, ROC AUC, PR AUC, false-alarm rate, confusion
    matrix, recall per type), event metrics of the flagged rows (:func:`raysys.evaluation.events.event_metrics`:
    event recall / precision / F1, delay, false alarms per day with ``timestamps``) and the range-based
    ``vus_pr`` (:func:`raysys.evaluation.events.vus_pr`). docs/metrics.md defines them."""
    from raysys.evaluation.events import event_metrics, vus_pr

    y_true = np.asarray(y_true).astype(int)
    y_pred = (np.asarray(scores) > threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    out: dict[str, Any] = {
        "precision": float(precision), "recall": float(recall), "f1": float(f1),
        "roc_auc": float(roc_auc_score(y_true, scores)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y_true, scores)) if both else float("nan"),
        "false_alarm_rate": float(fp / max(fp + tn, 1)),
        "threshold": float(threshold),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        **event_metrics(y_true, y_pred, timestamps),
        "vus_pr": float(vus_pr(y_true, scores)) if both else float("nan"),
    }
    if anomaly_types is not None:
        types = np.asarray(anomaly_types)
        out["recall_by_type"] = {str(t): float(y_pred[types == t].mean())
                                 for t in sorted(set(types.tolist()) - {NORMAL})}
    return out


def alarm_sensor_share(contributions: np.ndarray, alarms: np.ndarray, sensors: Sequence[str]) -> dict[str, float]:
    """Each sensor's share of the positive per-sensor contributions over the ``alarms`` rows (summing to
    1; empty when no row is alarmed or none has a positive contribution): which sensors the alarms
    of a split point at (docs/attribution.md)."""
    alarmed = np.asarray(contributions, dtype=np.float64)[np.asarray(alarms, dtype=bool)]
    positive = np.clip(alarmed, 0.0, None).sum(axis=0)
    total = positive.sum()
    return {} if not total > 0 else {s: float(v / total) for s, v in zip(sensors, positive)}


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Metrics flattened to ``name -> float`` for MLflow (nested dicts joined with ``_``)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{prefix}{key}_"))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def metrics_table(metrics: dict[str, Any], title: str = "Test metrics") -> Table:
    """A rich table of the headline metrics and the recall per anomaly type; without labels
    (``labelled`` False), the test alarm rate and the held-out false-alarm rate beside the asked one."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if not metrics.get("labelled", True):
        for key in ("alarm_rate", "heldout_false_alarm_rate", "far_asked", "heldout_far_ratio", "threshold"):
            table.add_row(key, _fmt(metrics.get(key)))
        return table
    for key in ("roc_auc", "pr_auc", "vus_pr", "precision", "recall", "f1", "false_alarm_rate", "far_asked",
                "event_recall", "event_precision", "mean_delay_rows", "false_alarms_per_day", "threshold"):
        table.add_row(key, _fmt(metrics.get(key)))
    for kind, value in metrics.get("recall_by_type", {}).items():
        table.add_row(escape(f"recall[{kind}]"), f"{value:.4f}")  # unescaped, rich reads [kind] as markup
    cm = metrics["confusion_matrix"]
    table.add_row("confusion (tn fp fn tp)", f"{cm['tn']} {cm['fp']} {cm['fn']} {cm['tp']}")
    return table


def headline(metrics: dict[str, Any]) -> str:
    """One line of the metrics that matter, the measured false-alarm rate beside the asked one."""
    asked = metrics.get("far_asked")
    if not metrics.get("labelled", True):
        far = metrics.get("heldout_false_alarm_rate")
        held = ("not measured (too few held-out rows)" if far is None else
                f"{far:.4f}" + (f" (asked {asked:g})" if asked is not None else ""))
        return f"no labels: test alarm rate {metrics['alarm_rate']:.4f}; false alarms on held-out normal rows {held}"
    far = f"false alarms {metrics['false_alarm_rate']:.4f}" + (f" (asked {asked:g})" if asked is not None else "")
    return (f"ROC AUC {metrics['roc_auc']:.4f}  PR AUC {metrics['pr_auc']:.4f}  precision {metrics['precision']:.4f}"
            f"  recall {metrics['recall']:.4f}  F1 {metrics['f1']:.4f}  {far}; events: recall "
            f"{metrics['event_recall']:.4f}, precision {metrics['event_precision']:.4f}, false alarms per day "
            f"{metrics['false_alarms_per_day']:.2f}; VUS-PR {metrics['vus_pr']:.4f}")
