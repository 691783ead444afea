"""Detection metrics, threshold calibration and the plots every stage logs.

The functions are imported on first use (they need scikit-learn), so command lines that only name
:data:`THRESHOLD_METHODS` stay fast.
"""

from __future__ import annotations

from raysys._lazy import lazy_exports
#: How a decision threshold is chosen on validation data (``calibrate_threshold``).
THRESHOLD_METHODS = ("best_f1", "percentile", "far")

_LAZY = {name: "raysys.evaluation.metrics" for name in (
    "alarm_sensor_share", "best_f1_threshold", "calibrate_threshold", "default_threshold_method", "detection_metrics",
    "flat_metrics",
    "headline", "metrics_table")} | {name: "raysys.evaluation.events" for name in (
    "event_metrics", "events_of", "range_pr_auc", "vus_pr")}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["THRESHOLD_METHODS", *_LAZY]
