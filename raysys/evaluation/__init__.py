"""Detection metrics, threshold calibration and the plots every stage logs."""

from raysys.evaluation.metrics import (
    THRESHOLD_METHODS,
    best_f1_threshold,
    calibrate_threshold,
    detection_metrics,
    far_threshold,
    flat_metrics,
    metrics_table,
)

__all__ = ["THRESHOLD_METHODS", "best_f1_threshold", "calibrate_threshold", "detection_metrics",
           "far_threshold", "flat_metrics", "metrics_table"]
