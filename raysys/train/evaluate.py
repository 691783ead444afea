"""Scoring a fitted detector on validation and test data: threshold, metrics, plots."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from raysys.data import SensorDataset
from raysys.evaluation import calibrate_threshold, default_threshold_method, detection_metrics
from raysys.evaluation.calibration import label_free_metrics, label_free_threshold
from raysys.evaluation import plots
from raysys.layout import METRICS_FILE
from raysys.models import BaseDeepDetector


@dataclass
class Evaluation:
    """A detector's calibrated threshold and its test metrics.

    Args:
        threshold: Decision threshold calibrated on the validation split.
        threshold_method: How the threshold was chosen.
        metrics: Test metrics (``detection_metrics``).
        val_scores: Scores of the validation rows.
        test_scores: Scores of the test rows.
        extra_scores: Other test scores (e.g. the VAE's latent distances) with their ROC AUC.
    """

    threshold: float
    threshold_method: str
    metrics: dict[str, Any]
    val_scores: np.ndarray = field(repr=False)
    test_scores: np.ndarray = field(repr=False)
    extra_scores: dict[str, float] = field(default_factory=dict)


def evaluate_detector(detector: BaseDeepDetector, dataset: SensorDataset, threshold_method: str | None = None,
                      percentile: float = 99.0, target_far: float = 0.01) -> Evaluation:
    """Calibrate a threshold on validation, then measure on the held-out test split.

    ``threshold_method`` None: ``best_f1`` on labelled data, ``far`` without labels. Without
    validation labels every validation row is taken as normal and the threshold is
    :func:`raysys.evaluation.calibration.label_free_threshold` (the first rows of a windowed detector,
    scored on padding, left out); the metrics then include the false-alarm rate on the held-out rows
    beside the asked one (:func:`raysys.evaluation.calibration.label_free_metrics`).
    """
    method = threshold_method or default_threshold_method(dataset.labelled("val"))
    val_scores = detector.decision_function(dataset.features("val"))
    test_scores = detector.decision_function(dataset.features("test"))
    y_val, y_test = dataset.known_labels("val"), dataset.known_labels("test")
    asked = target_far if method == "far" else None
    metrics: dict[str, Any] = {}
    if y_val is None:
        skip = getattr(detector, "window", 1) - 1
        threshold, holdout = label_free_threshold(val_scores[skip:], method, target_far, percentile)
        rows = holdout["holdout_rows"] if holdout else 0
        metrics.update(label_free_metrics(threshold, test_scores > threshold,
                                          val_scores[len(val_scores) - rows:] > threshold if rows else None, asked))
    else:
        threshold = calibrate_threshold(method, y_val, val_scores, percentile, target_far)
    extra: dict[str, float] = {}
    if y_test is not None:
        metrics.update(detection_metrics(y_test, test_scores, threshold, dataset.anomaly_types("test"),
                                         dataset.test["timestamp"].to_numpy()),
                       labelled=True, far_asked=asked)
        if hasattr(detector, "latent_scores"):
            for name, scores in detector.latent_scores(dataset.features("test")).items():
                extra[f"{name}_roc_auc"] = float(roc_auc_score(y_test, scores))
    return Evaluation(threshold, method, metrics, val_scores, test_scores, extra)


def write_evaluation(evaluation: Evaluation, dataset: SensorDataset, history: list[dict[str, float]],
                     out_dir: str | os.PathLike, name: str) -> Path:
    """Write threshold.json, metrics.json and the plots of one evaluation into ``out_dir``."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "threshold.json").write_text(json.dumps(
        {"threshold": evaluation.threshold, "method": evaluation.threshold_method}, indent=2))
    (out / METRICS_FILE).write_text(json.dumps({**evaluation.metrics, **evaluation.extra_scores}, indent=2))
    y_test = dataset.known_labels("test")
    if history:
        plots.loss_curves({name: history}, out / "plots" / "loss_curves.png")
    plots.score_distribution(evaluation.test_scores, y_test, evaluation.threshold,
                             out / "plots" / "score_distribution.png", f"{name}: test scores")
    if y_test is not None:
        plots.roc_pr_curves({name: (y_test, evaluation.test_scores)}, out / "plots" / "roc_pr.png")
        plots.confusion_matrix_plot(evaluation.metrics["confusion_matrix"], out / "plots" / "confusion_matrix.png")
        plots.recall_by_type(evaluation.metrics["recall_by_type"], out / "plots" / "recall_by_type.png")
    return out
