"""Move a registered ensemble's threshold to new normal data, without retraining (``raysys recalibrate``).

The members, their normalisation and weights stay as they are; only the decision threshold moves.
The ensemble is loaded (ONNX, onnxruntime), the new normal rows are scored in time order as one
series, and :func:`raysys.evaluation.calibration.tail_threshold` turns their scores into the
threshold for the asked false-alarm rate. With enough rows the threshold comes from the first
``1 - HOLDOUT_FRACTION`` of the rows in time order and its false-alarm rate is measured on the rest
(the held-out tail, newer than anything it was calibrated on); a held-out rate above
``GATE_FACTOR`` times the asked one refuses the recalibration (the data is not stationary enough
for one threshold) unless forced. A passing result is registered as a new version of the model:
the old ``ensemble.json`` with ``threshold``, ``threshold_method: "far"``, ``target_far`` replaced
and a ``recalibrated`` provenance entry; the ONNX files copied unchanged. ``champion`` moves to it
and the version it left gets ``previous`` (:func:`raysys.ensemble.registry.register_directory`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysys.data.io import LABEL, read_table, validate_table
from raysys.data.synthetic import TIMESTAMP
from raysys.ensemble.runtime import NO_REASON, EnsembleRuntime, load_runtime
from raysys.evaluation.calibration import GATE_FACTOR, HOLDOUT_FRACTION, holdout_calibration
from raysys.layout import DATASET_METADATA, ENSEMBLE_SPEC, SPLITS, split_file
from raysys.tracking import DEFAULT_EXPERIMENT, resolve_tracking_uri

logger = logging.getLogger(__name__)

#: Fewest normal rows (after the first ``history`` rows, whose windows rest on padding) to recalibrate on.
MIN_ROWS = 200
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass
class Recalibration:
    """What :func:`recalibrate` measured and registered.

    Args:
        threshold: The new threshold; ``previous_threshold`` the source model's.
        target_far: The false-alarm rate asked for.
        calibration_far: Measured false-alarm rate on the rows the threshold was calibrated on.
        holdout_far: Measured on the held-out tail (None when there were too few rows for one).
        rows, calibration_rows, holdout_rows: Normal rows scored, calibrated on, held out.
        spec: The new ``ensemble.json``.
        version: The new registered version (None when ``register=False``); ``model_uri`` its URI.
        name: Registered model name; ``run_id`` the MLflow run that logged it.
    """

    threshold: float
    previous_threshold: float
    target_far: float
    calibration_far: float
    holdout_far: float | None
    rows: int
    calibration_rows: int
    holdout_rows: int
    spec: dict[str, Any]
    name: str
    version: str | None = None
    model_uri: str | None = None
    run_id: str | None = None

    def summary(self) -> str:
        which = f"the first {1 - HOLDOUT_FRACTION:.0%} in time order" if self.holdout_rows else "all of them"
        lines = [(f"threshold {self.previous_threshold:.6g} -> {self.threshold:.6g} for a false-alarm rate of "
                  f"{self.target_far:g} ({self.rows} normal rows)"),
                 (f"  measured false-alarm rate on the {self.calibration_rows} calibration rows ({which}): "
                  f"{self.calibration_far:.4f}")]
        if self.holdout_far is not None:
            lines.append(f"  measured false-alarm rate on the held-out {self.holdout_rows} rows (the last "
                         f"{HOLDOUT_FRACTION:.0%} in time order): {self.holdout_far:.4f} "
                         f"(gate: <= {GATE_FACTOR:g} x {self.target_far:g} = {GATE_FACTOR * self.target_far:g})")
        else:
            lines.append("  no held-out check: too few rows for one (the gate was not applied)")
        return "\n".join(lines)


def resolve_model_version(model: str, tracking_uri: str) -> tuple[str, str, str | None]:
    """(name, version, run_id) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; ``ValueError`` naming
    the URI when the registry has no such model, alias or version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    match = _MODEL_URI.match(str(model))
    if match is None:
        raise ValueError(f"{model}: expected a registered model URI models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = match.group("name", "alias", "version")
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        found = (client.get_model_version_by_alias(name, alias) if alias is not None
                 else client.get_model_version(name, version))
    except mlflow.exceptions.MlflowException as exc:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise ValueError(f"{model}: model URI not found: registered model {name!r} has no {what} in "
                         f"{tracking_uri} ({exc.message})") from None
    return name, str(found.version), found.run_id


def normal_rows(data: str | os.PathLike | None, input_path: str | os.PathLike | None,
                sensors: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """(X, normal, source): every row in time order (float32, the model's ``sensors``), which rows are
    normal, and the path read.

    ``data``: a prepared dataset directory, its splits concatenated (they follow each other in time);
    rows labelled anomalous are scored as part of the series (so windows see the real history) but are
    not normal. ``input_path``: a CSV or Parquet file of normal operation (a ``label`` column, if any,
    leaves its anomalous rows out the same way).
    """
    if (data is None) == (input_path is None):
        raise ValueError("give exactly one of a dataset directory (--data) or a file (--input)")
    if data is not None:
        root = Path(data)
        if not (root / DATASET_METADATA).exists():
            raise FileNotFoundError(f"{root}: not a prepared dataset (no {DATASET_METADATA})")
        parts = []
        for split in SPLITS:
            file = split_file(root, split)
            parts.append(_check_sensors(validate_table(read_table(file), str(file), min_rows=1).frame, sensors, file))
        frame, source = pd.concat(parts, ignore_index=True), str(root)
        if not frame[TIMESTAMP].is_monotonic_increasing:
            raise ValueError(f"{root}: the splits {list(SPLITS)} do not follow each other in time")
    else:
        raw = read_table(input_path)
        _check_sensors(raw, sensors, input_path)
        keep = [c for c in (TIMESTAMP, *sensors, LABEL) if c in raw.columns]
        if TIMESTAMP in raw.columns:
            frame = validate_table(raw[keep], str(input_path), label_col=LABEL if LABEL in keep else None,
                                   min_rows=1).frame
        else:
            frame = raw[keep]
        source = str(input_path)
    X = frame[sensors].to_numpy(dtype=np.float32)
    normal = (frame[LABEL].to_numpy() == 0) if LABEL in frame.columns else np.ones(len(frame), dtype=bool)
    return X, normal, source


def _check_sensors(frame: pd.DataFrame, sensors: list[str], source: str | os.PathLike) -> pd.DataFrame:
    missing = [s for s in sensors if s not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing sensor column(s) {missing}; the model needs {sensors}")
    return frame


def calibrate(runtime: EnsembleRuntime, X: np.ndarray, normal: np.ndarray, target_far: float,
              holdout_fraction: float = HOLDOUT_FRACTION) -> dict[str, Any]:
    """Score ``X`` (one series in time order) and calibrate a threshold on its ``normal`` rows
    (:func:`raysys.evaluation.calibration.holdout_calibration`).

    The first ``runtime.history`` rows are left out (their windows rest on padding). Rows the runtime
    flags whatever their score (out of range) count as false alarms.
    """
    usable = normal.copy()
    usable[:runtime.history] = False
    n = int(usable.sum())
    if n < MIN_ROWS:
        raise ValueError(f"too few normal rows to recalibrate: {n} (of {len(X)} rows; the first {runtime.history} "
                         f"are left out for history), need at least {MIN_ROWS}")
    out = runtime.score(X)
    forced = (out["reason"] != NO_REASON)[usable]
    measured = holdout_calibration(out["score"][usable], target_far, forced, holdout_fraction)
    if not measured["holdout_rows"]:
        logger.warning("only %d normal rows: no held-out check (too few for %g false alarms to be measured); "
                       "calibrating on all of them", n, target_far)
    return {**measured, "out_of_range_rows": int(forced.sum())}


def recalibrated_spec(spec: dict[str, Any], measured: dict[str, Any], target_far: float,
                      provenance: dict[str, Any]) -> dict[str, Any]:
    """The old ``spec`` with the new threshold (method ``far``) and a ``recalibrated`` entry."""
    new = json.loads(json.dumps(spec))
    new.update({"threshold": float(measured["threshold"]), "threshold_method": "far", "target_far": target_far,
                "percentile": None})
    new["recalibrated"] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **provenance,
        "previous": {k: spec.get(k) for k in ("threshold", "threshold_method", "target_far", "percentile")},
        "rows": measured["rows"], "calibration_rows": measured["calibration_rows"],
        "holdout_rows": measured["holdout_rows"], "holdout_fraction": HOLDOUT_FRACTION if measured["holdout_rows"] else 0.0,
        "calibration_far": measured["calibration_far"], "holdout_far": measured["holdout_far"],
        "gate_factor": GATE_FACTOR, "out_of_range_rows": measured["out_of_range_rows"]}
    return new


def recalibrate(model: str, data: str | os.PathLike | None = None, input_path: str | os.PathLike | None = None,
                *, target_far: float = 0.01, name: str | None = None, tracking_uri: str | None = None,
                experiment: str = DEFAULT_EXPERIMENT, force: bool = False, register: bool = True) -> Recalibration:
    """Move ``model``'s threshold to new normal data and register the result as a new version.

    Args:
        model: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (its version stays untouched).
        data: A prepared dataset directory: its rows not labelled anomalous are the new normal data.
        input_path: Or a CSV/Parquet file of normal operation with the model's sensor columns.
        target_far: False-alarm rate asked for.
        name: Registered model name of the new version (default: the source model's).
        tracking_uri: MLflow tracking (and registry) URI (default: ``$MLFLOW_TRACKING_URI`` or ./mlruns).
        experiment: MLflow experiment of the run that logs the new version.
        force: Register even when the held-out false-alarm rate exceeds ``GATE_FACTOR`` x ``target_far``.
        register: False only measures (nothing logged).

    Raises:
        ValueError: bad URI, missing sensors, too few rows, or the gate refused (naming the numbers).
    """
    uri = resolve_tracking_uri(tracking_uri)
    source_name, source_version, source_run = resolve_model_version(model, uri)
    runtime = load_runtime(f"models:/{source_name}/{source_version}", uri)
    X, normal, source = normal_rows(data, input_path, runtime.sensors)
    measured = calibrate(runtime, X, normal, target_far)
    holdout_far = measured["holdout_far"]
    if holdout_far is not None and holdout_far > GATE_FACTOR * target_far and not force:
        raise ValueError(
            f"recalibration refused: the measured false-alarm rate on the held-out last {measured['holdout_rows']} "
            f"rows is {holdout_far:.4f}, above {GATE_FACTOR:g} x the asked {target_far:g} = {GATE_FACTOR * target_far:g} "
            f"(calibrated on the first {measured['calibration_rows']} rows: {measured['calibration_far']:.4f}); the "
            "new data is not stationary enough for one threshold. Use --force to register it anyway")
    provenance = {"source": {"model_uri": str(model), "name": source_name, "version": source_version,
                             "run_id": source_run},
                  "data": {"path": source, "kind": "dataset" if data is not None else "file"}, "forced": bool(force)}
    spec = recalibrated_spec(runtime.spec, measured, target_far, provenance)
    result = Recalibration(spec["threshold"], runtime.threshold, target_far, measured["calibration_far"], holdout_far,
                           measured["rows"], measured["calibration_rows"], measured["holdout_rows"], spec,
                           name or source_name)
    if not register:
        return result
    from raysys.ensemble.registry import register_directory

    with tempfile.TemporaryDirectory() as tmp:
        staged = shutil.copytree(runtime.directory, Path(tmp) / "ensemble")
        (staged / ENSEMBLE_SPEC).write_text(json.dumps(spec, indent=2))
        EnsembleRuntime.load(staged)  # the new directory must load before it is registered
        example = pd.DataFrame(X[normal][:5].astype(np.float64), columns=runtime.sensors)
        params = {"source_model": f"models:/{source_name}/{source_version}", "data": source,
                  "target_far": target_far, "previous_threshold": runtime.threshold, "threshold": spec["threshold"],
                  "forced": bool(force)}
        metrics = {k: float(v) for k, v in measured.items() if v is not None and k != "threshold"}
        metrics["threshold"] = spec["threshold"]
        registration = register_directory(
            staged, spec, example, result.name, tracking_uri=uri, experiment=experiment, run_name="recalibrate",
            params=params, metrics=metrics,
            tags={"raysys.recalibrated_from": f"{source_name}/{source_version}", "target_far": f"{target_far:g}",
                  "holdout_far": "none" if holdout_far is None else f"{holdout_far:.4f}"})
    result.version, result.model_uri, result.run_id = (registration.version, registration.model_uri,
                                                      registration.run_id)
    return result
