"""The files an ensemble's evaluation leaves for people: metrics, gate report and plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

from raysys.data import SensorDataset
from raysys.ensemble.build import ENSEMBLE, EnsembleBuild
from raysys.ensemble.gates import GateReport
from raysys.evaluation import plots
from raysys.layout import GATE_REPORT, METRICS_FILE


def write_evaluation(build: EnsembleBuild, dataset: SensorDataset, report: GateReport,
                     out_dir: str | os.PathLike) -> Path:
    """Write ``metrics.json``, ``gate_report.json`` and ``plots/*.png`` of the test split into ``out_dir``.

    Plots: ROC and precision-recall curves of every member and the ensemble, the ensemble's
    confusion matrix, recall per anomaly type (these three need test labels) and score distribution.
    """
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps({"test": build.metrics, "latency_ms": build.latency_ms}, indent=2))
    (out / GATE_REPORT).write_text(json.dumps(report.to_dict(), indent=2))
    y_test = dataset.known_labels("test")
    ensemble = build.ensemble_metrics
    if ensemble.get("labelled"):
        plots.roc_pr_curves({name: (y_test, scores) for name, scores in build.test_scores.items()},
                            out / "plots" / "roc_pr.png")
        plots.confusion_matrix_plot(ensemble["confusion_matrix"], out / "plots" / "confusion_matrix.png",
                                    "Ensemble confusion matrix (test)")
        plots.recall_by_type(ensemble["recall_by_type"], out / "plots" / "recall_by_type.png",
                             "Ensemble recall per anomaly type (test)")
    plots.score_distribution(build.test_scores[ENSEMBLE], y_test, build.spec["threshold"],
                             out / "plots" / "score_distribution.png", "Ensemble: test scores")
    return out
