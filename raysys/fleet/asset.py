"""One asset's detector set, fitted in-process: what every fleet task runs (and the fleet benchmark's
in-process baseline). Fit the deep members on the asset's normal training rows, build and calibrate
the asset's ONNX ensemble on its own validation split (:func:`raysys.ensemble.build.build_ensemble`),
measure it on its test split and check the fleet's gates; never raise: a failure is a FAILED result
with its reason, so one bad asset cannot stop a fleet."""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Trained, gates passed: served.
SUCCEEDED = "SUCCEEDED"
#: Trained, a gate failed: kept and listed, not served.
GATE_FAILED = "GATE_FAILED"
#: No model: bad data or an error (``reason`` says which).
FAILED = "FAILED"
STATUSES = (SUCCEEDED, GATE_FAILED, FAILED)
#: Test metrics kept per asset in the fleet's table (those the asset's data can measure).
TABLE_METRICS = ("roc_auc", "f1", "precision", "recall", "false_alarm_rate", "event_f1", "alarm_rate",
                 "heldout_false_alarm_rate", "heldout_far_ratio", "far_asked")


@dataclass
class AssetResult:
    """What training one asset produced.

    Args:
        asset_id: The asset.
        status: :data:`SUCCEEDED`, :data:`GATE_FAILED` or :data:`FAILED`.
        reason: Why it failed (error, or the gates that failed), else None.
        threshold: The ensemble's calibrated threshold.
        metrics: :data:`TABLE_METRICS` the asset's data measured.
        gates: The gate report (``GateReport.to_dict()``).
        data: Rows per split and the first and last timestamp of the asset's data.
        fit_s: Seconds spent loading, fitting, exporting and evaluating (the in-process cost).
        files: The ensemble directory, relative path -> bytes (empty when FAILED).
    """

    asset_id: str
    status: str
    reason: str | None = None
    threshold: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    gates: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    fit_s: float = 0.0
    files: dict[str, bytes] = field(default_factory=dict, repr=False)


def _data_range(dataset: Any) -> dict[str, Any]:
    frames = [dataset.train, dataset.val, dataset.test]
    return {"rows": {name: len(f) for name, f in zip(("train", "val", "test"), frames)},
            "start": str(dataset.train["timestamp"].iloc[0]) if len(dataset.train) else None,
            "end": str(dataset.test["timestamp"].iloc[-1]) if len(dataset.test) else None}


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fit_asset(dataset: Any, config: Any, device: str = "cpu") -> AssetResult:
    """Fit, build, evaluate and gate one asset's ensemble from its :class:`~raysys.data.SensorDataset`
    (``dataset.metadata["asset_id"]`` names it) with :class:`raysys.fleet.config.FleetConfig` ``config``."""
    from raysys.ensemble.build import build_ensemble
    from raysys.ensemble.workflow import gate_report
    from raysys.evaluation import flat_metrics
    from raysys.models import build_detector

    asset_id = dataset.metadata["asset_id"]
    X = dataset.features("train", normal_only=True)
    detectors = {family: build_detector(family, **{**config.params, "seed": config.seed}).fit(X, device=device)
                 for family in config.families}
    with tempfile.TemporaryDirectory(prefix=f"raysys-{asset_id}-") as tmp:
        build = build_ensemble(detectors, dataset, Path(tmp) / "ensemble", threshold_method=config.threshold_method,
                               target_far=config.target_far, iforest=config.classical, pca=config.classical,
                               seed=config.seed, intra_op_threads=1)
        files = _read_tree(build.directory)
    report = gate_report(build, config.gates)
    flat = flat_metrics(build.ensemble_metrics)
    metrics = {k: flat[k] for k in TABLE_METRICS if k in flat}
    failed = [g.describe() for g in report.failures]
    return AssetResult(asset_id, GATE_FAILED if failed else SUCCEEDED, "; ".join(failed) or None,
                       float(build.spec["threshold"]), metrics, report.to_dict(), _data_range(dataset), files=files)


def train_asset(data: str | os.PathLike, asset_id: str, config: Any) -> AssetResult:
    """Load asset ``asset_id`` of the fleet dataset ``data`` and :func:`fit_asset` it, on a GPU when the
    task holds one; any error becomes a :data:`FAILED` result naming it (what a fleet task runs)."""
    started = time.perf_counter()
    try:
        import torch

        from raysys.data.fleet import load_fleet

        torch.set_num_threads(max(1, int(config.num_cpus)))
        device = "cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        result = fit_asset(load_fleet(data).asset(asset_id), config, device)
    except Exception as exc:  # isolate: the fleet records the reason and goes on
        reason = f"{type(exc).__name__}: {exc}"
        result = AssetResult(asset_id, FAILED, reason, data={"traceback": traceback.format_exc(limit=6)})
    result.fit_s = time.perf_counter() - started
    return result
