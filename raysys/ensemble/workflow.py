"""The whole ensemble stage in one call: members -> build -> gates -> evaluation files -> registry."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from raysys.data import SensorDataset, load_dataset
from raysys.ensemble.alarms import AlarmLogic
from raysys.ensemble.build import EnsembleBuild, build_ensemble
from raysys.ensemble.gates import LABELLED_GATES, GateReport, check_gates
from raysys.ensemble.members import load_members
from raysys.ensemble.registry import DEFAULT_MODEL_NAME, Registration, register_ensemble
from raysys.ensemble.report import write_evaluation
from raysys.evaluation import flat_metrics, headline
from raysys.evaluation.calibration import HOLDOUT_FRACTION, MIN_HOLDOUT_ALARMS
from raysys.layout import EVALUATION_DIR
from raysys.tracking import DEFAULT_EXPERIMENT

DEFAULT_OUT = Path("runs") / "ensemble"


@dataclass
class EnsembleResult:
    """What :func:`run_ensemble` produced.

    Args:
        build: The ensemble directory, its spec, test metrics (ensemble and members) and latency.
        gates: The quality-gate report.
        evaluation_dir: Folder with ``metrics.json``, ``gate_report.json`` and ``plots/``.
        registration: The MLflow run and, if the gates passed, the registered version
            (None when registration was not asked for).
    """

    build: EnsembleBuild
    gates: GateReport
    evaluation_dir: Path
    registration: Registration | None

    @property
    def ensemble_dir(self) -> Path:
        return self.build.directory

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """``ensemble`` and each member name to its test metrics."""
        return self.build.metrics

    @property
    def version(self) -> str | None:
        """The registered model version, or None if nothing was registered."""
        return self.registration.version if self.registration else None

    @property
    def best_member(self) -> tuple[str, float] | None:
        """The member with the best test F1 alone, and that F1 (None without test labels)."""
        members = self.build.member_metrics
        if not members or not self.build.ensemble_metrics.get("labelled"):
            return None
        name = max(members, key=lambda n: members[n]["f1"])
        return name, members[name]["f1"]

    def summary(self) -> str:
        """The test metrics in one line, with the best member alone when there are labels."""
        line = headline(self.build.ensemble_metrics)
        best = self.best_member
        return line + (f" (best member alone: {best[0]}, F1 {best[1]:.4f})" if best else "")


def gate_values(build: EnsembleBuild) -> dict[str, float]:
    """What gates can test: the ensemble's flat test metrics and single-row latency in onnxruntime,
    ``latency_ms`` (median, steady on a busy machine) and ``latency_ms_p95``."""
    return {**flat_metrics(build.ensemble_metrics), "latency_ms": build.latency_ms["p50"],
            "latency_ms_p95": build.latency_ms["p95"]}


def unmeasured_gates(build: EnsembleBuild) -> dict[str, str]:
    """Gates this build cannot measure, with why: the labelled ones without test labels; the label-free
    ``heldout_far_ratio`` when the threshold came from labels, from no asked rate, or from too few rows."""
    out = {}
    if not build.ensemble_metrics.get("labelled"):
        out.update({name: "the test split has no labels" for name in sorted(LABELLED_GATES)})
    if "heldout_far_ratio" not in build.ensemble_metrics:
        calibration = build.spec["calibration"]
        out["heldout_far_ratio"] = (
            "the threshold was calibrated on labelled validation rows (the test split's false-alarm rate is gated)"
            if calibration["labels"] else
            "no false-alarm rate was asked for (threshold method far)" if build.spec["threshold_method"] != "far" else
            f"too few validation rows to hold some out ({calibration.get('rows')} rows; at the asked rate fewer than "
            f"{MIN_HOLDOUT_ALARMS} false alarms would be expected on a held-out {HOLDOUT_FRACTION:.0%})")
    return out


def gate_report(build: EnsembleBuild, gates: Mapping[str, float] | None = None) -> GateReport:
    """Check ``gates`` (default :data:`raysys.ensemble.gates.DEFAULT_GATES`) on a build: what it
    measured (:func:`gate_values`), skipping what it cannot (:func:`unmeasured_gates`)."""
    return check_gates(gate_values(build), gates, unmeasured_gates(build))


def run_ensemble(data: str | os.PathLike | SensorDataset, *, sweep: str | os.PathLike | None = None,
                 run_ids: Iterable[str] = (), detector_dirs: Iterable[str | os.PathLike] = (),
                 detectors: Mapping[str, Any] | None = None, out_dir: str | os.PathLike | None = None,
                 name: str = DEFAULT_MODEL_NAME, gates: Mapping[str, float] | None = None,
                 threshold_method: str | None = None, target_far: float = 0.01, percentile: float = 99.0,
                 iforest: bool = True, pca: bool = True, cva: bool = False, register: bool = True,
                 tracking_uri: str | None = None,
                 experiment: str = DEFAULT_EXPERIMENT, parent_run_id: str | None = None,
                 seed: int = 0, smoothing: int = 1, alarm: AlarmLogic | None = None) -> EnsembleResult:
    """Build the ensemble from its members, check the gates, write the evaluation and register it if they pass.

    Members come from ``sweep`` (its ``best.json``), MLflow ``run_ids``, ``detector_dirs`` and/or
    already fitted ``detectors`` (name -> detector), in that order; with ``cva`` none of them is needed
    (the classical members alone).

    Args:
        data: The prepared dataset (or its directory) the members were trained on.
        out_dir: Work directory; gets ``ensemble/`` and ``evaluation/`` (default ``runs/ensemble/<time>``).
        name: Registered model name.
        gates: Gate name to limit (default :data:`raysys.ensemble.gates.DEFAULT_GATES`); gates the
            data cannot measure (:func:`unmeasured_gates`) are skipped and listed in the report.
        register: Log to MLflow and register when the gates pass; False only builds and checks.
        Other arguments: see :func:`raysys.ensemble.build.build_ensemble` and
            :func:`raysys.ensemble.registry.register_ensemble`.
    """
    dataset = data if isinstance(data, SensorDataset) else load_dataset(data)
    run_ids, detector_dirs = list(run_ids), list(detector_dirs)
    found: dict[str, Any] = {}
    sources: dict[str, dict[str, Any]] = {}
    # load_members says when none is given; with the CVA member the trained ones are optional
    if sweep is not None or run_ids or detector_dirs or not (detectors or cva):
        for member in load_members(sweep, run_ids, detector_dirs, tracking_uri):
            found[member.name], sources[member.name] = member.detector, member.source
    for key, detector in (detectors or {}).items():
        if key in found:
            raise ValueError(f"member name {key!r} given twice (a loaded member already has it)")
        found[key] = detector
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT / time.strftime("%Y%m%d-%H%M%S")
    build = build_ensemble(found, dataset, out / "ensemble", threshold_method=threshold_method,
                           target_far=target_far, percentile=percentile, iforest=iforest, pca=pca, cva=cva, seed=seed,
                           sources=sources, smoothing=smoothing, alarm=alarm)
    report = gate_report(build, gates)
    evaluation_dir = write_evaluation(build, dataset, report, out / EVALUATION_DIR)
    registration = (register_ensemble(build, report, name, tracking_uri, experiment, evaluation_dir, parent_run_id)
                    if register else None)
    return EnsembleResult(build, report, evaluation_dir, registration)
