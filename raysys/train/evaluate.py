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
from raysys.evaluation import calibrate_threshold, detection_metrics
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


def evaluate_detector(detector: BaseDeepDetector, dataset: SensorDataset, threshold_method: str = "best_f1",
                      percentile: float = 99.0, target_far: float = 0.01) -> Evaluation:
    """Calibrate a threshold on validation, then measure on the held-out test split."""
    val_scores = detector.decision_function(dataset.features("val"))
    threshold = calibrate_threshold(threshold_method, dataset.labels("val"), val_scores, percentile, target_far)
    test_scores = detector.decision_function(dataset.features("test"))
    metrics = detection_metrics(dataset.labels("test"), test_scores, threshold, dataset.anomaly_types("test"))
    extra: dict[str, float] = {}
    if hasattr(detector, "latent_scores"):
        for name, scores in detector.latent_scores(dataset.features("test")).items():
            extra[f"{name}_roc_auc"] = float(roc_auc_score(dataset.labels("test"), scores))
    return Evaluation(threshold, threshold_method, metrics, val_scores, test_scores, extra)


def write_evaluation(evaluation: Evaluation, dataset: SensorDataset, history: list[dict[str, float]],
                     out_dir: str | os.PathLike, name: str) -> Path:
    """Write threshold.json, metrics.json and the plots of one evaluation into ``out_dir``."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "threshold.json").write_text(json.dumps(
        {"threshold": evaluation.threshold, "method": evaluation.threshold_method}, indent=2))
    (out / METRICS_FILE).write_text(json.dumps({**evaluation.metrics, **evaluation.extra_scores}, indent=2))
    y_test = dataset.labels("test")
    if history:
        plots.loss_curves({name: history}, out / "plots" / "loss_curves.png")
    plots.score_distribution(evaluation.test_scores, y_test, evaluation.threshold,
                             out / "plots" / "score_distribution.png", f"{name}: test scores")
    plots.roc_pr_curves({name: (y_test, evaluation.test_scores)}, out / "plots" / "roc_pr.png")
    plots.confusion_matrix_plot(evaluation.metrics["confusion_matrix"], out / "plots" / "confusion_matrix.png")
    plots.recall_by_type(evaluation.metrics["recall_by_type"], out / "plots" / "recall_by_type.png")
    return out
