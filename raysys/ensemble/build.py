"""Build an ensemble directory from fitted detectors, and measure it on the held-out test split.

``build_ensemble`` fits the Isolation Forest and the PCA detector (members ``pca_t2`` and
``pca_spe``), on request the CVA detector (member ``cva``), exports every member to ONNX (checked
against its source), calibrates normalisation, weights and threshold on the validation split, writes
``ensemble.json`` last (a failed build never looks complete), then evaluates what it wrote through
:class:`~raysys.ensemble.runtime.EnsembleRuntime`, exactly as production will run it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from sklearn.ensemble import IsolationForest

from raysys import __version__
from raysys.data import SensorDataset
from raysys.ensemble.alarms import AlarmLogic
from raysys.ensemble.calibrate import normalisation_stats, select_weights
from raysys.ensemble.export import OPSET, PARITY_RTOL, SPE, T2, export_member, random_rows, source_scores
from raysys.ensemble.runtime import (DEFAULT_RANGE_FACTOR, FORMAT_VERSION, NO_REASON, EnsembleRuntime, MemberSessions,
                                     combine, input_range, normalise, trailing_mean)
from raysys.layout import ENSEMBLE_SPEC
from raysys.evaluation import (THRESHOLD_METHODS, alarm_sensor_share, calibrate_threshold, default_threshold_method,
                               detection_metrics)
from raysys.evaluation.calibration import label_free_metrics, label_free_threshold
from raysys.models.cva import CVADetector
from raysys.models.pca import PCADetector

IFOREST = "iforest"
#: Name of the PCA member's file; its members are ``pca_t2`` and ``pca_spe``.
PCA = "pca"
#: Name of the CVA member (and its file).
CVA = "cva"
ENSEMBLE = "ensemble"


@dataclass
class EnsembleBuild:
    """A written ensemble directory and what it measured on the test split.

    Args:
        directory: The ensemble directory (``ensemble.json`` and ``.onnx`` files).
        spec: The parsed ``ensemble.json``.
        metrics: ``ensemble`` and each member name to its test ``detection_metrics``; members are
            thresholded alone, calibrated on validation the same way as the ensemble.
        latency_ms: Single-row scoring latency of the runtime: ``p50``, ``p95``.
        test_scores: ``ensemble`` and each member name to its (normalised) test scores.
        test_top_sensors: Per test row, the ensemble's top sensors (``EnsembleRuntime.score(explain=True)``).
        models: Source model of each ``.onnx`` file (by file stem), for comparison with the export.
        example: A few raw validation rows (sensor name -> values), the logged model's input example.
    """

    directory: Path
    spec: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    latency_ms: dict[str, float]
    test_scores: dict[str, np.ndarray] = field(repr=False)
    test_top_sensors: list[list[str]] = field(repr=False)
    models: dict[str, Any] = field(repr=False)
    example: dict[str, list[float]] = field(repr=False, default_factory=dict)

    @property
    def ensemble_metrics(self) -> dict[str, Any]:
        """The ensemble's test metrics."""
        return self.metrics[ENSEMBLE]

    @property
    def member_metrics(self) -> dict[str, dict[str, Any]]:
        """Each member's test metrics, thresholded alone."""
        return {name: m for name, m in self.metrics.items() if name != ENSEMBLE}


def fit_isolation_forest(dataset: SensorDataset, n_estimators: int = 100, seed: int = 0) -> IsolationForest:
    """An Isolation Forest on the raw sensor values of the normal training rows."""
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed)
    return forest.fit(dataset.features("train", normal_only=True))


def fit_pca(dataset: SensorDataset) -> PCADetector:
    """A static PCA detector (``PCADetector`` defaults: components explaining 90% of the variance,
    no lags) on the raw sensor values of the normal training rows."""
    return PCADetector(lags=0).fit(dataset.features("train", normal_only=True))


def fit_cva(dataset: SensorDataset) -> CVADetector:
    """A CVA detector (``CVADetector`` defaults) on the training split in time order; past-future pairs
    that read a labelled anomaly are left out."""
    labels = dataset.labels("train") if dataset.labelled("train") else None
    return CVADetector().fit(dataset.features("train"), labels)


def source_ensemble_scores(models: Mapping[str, Any], spec: Mapping[str, Any], X: np.ndarray) -> np.ndarray:
    """The ensemble score computed from the source models (PyTorch, scikit-learn) instead of ONNX."""
    by_model = {name: source_scores(model, X) for name, model in models.items()}
    raw = np.column_stack([by_model[Path(m["file"]).stem][m["output"]] for m in spec["members"]])
    center, scale, weights, windows = (np.array([m[k] for m in spec["members"]])
                                       for k in ("center", "scale", "weight", "window"))
    return trailing_mean(combine(normalise(raw, center, scale), weights, windows), spec.get("smoothing", 1))


def single_row_latency(runtime: EnsembleRuntime, X: np.ndarray, repeats: int = 200) -> dict[str, float]:
    """Milliseconds to score one row (after a warm-up), median and 95th percentile over ``repeats`` rows."""
    runtime.score(X[:1])
    times = []
    for i in range(repeats):
        row = X[i % len(X): i % len(X) + 1]
        start = time.perf_counter()
        runtime.score(row)
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


@dataclass
class _Calibration:
    """What the validation split decided, and the normalised member scores it decided on.

    ``labelled``: whether the validation split had labels; without them the weights are equal and
    the threshold comes from the label-free rule (``holdout``: its split of the validation rows).
    """

    center: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    threshold: float
    normalised: np.ndarray
    labelled: bool
    holdout: dict[str, Any] | None = None


def _calibrate(sessions: MemberSessions, windows: np.ndarray, dataset: SensorDataset, method: str,
               options: dict[str, Any], rounds: int, smoothing: int) -> _Calibration:
    """Normalisation centre and scale, weights and threshold from the validation split.

    With labels: greedy weights and the threshold method on labelled rows. Without: every row is
    taken as normal, the weights are equal (the label-free rule, docs/ensemble.md) and the threshold
    is the label-free one (:func:`raysys.evaluation.calibration.label_free_threshold`); so is a split whose
    labels hold no anomaly (e.g. one asset of a fleet). Weights are
    chosen on the members' own scores; the threshold on the ensemble score as the runtime computes
    it, smoothed over ``smoothing`` rows.
    """
    y_val = dataset.known_labels("val")
    if y_val is not None and not y_val.any():  # labelled, but no anomaly to weigh on: every row is normal
        y_val = None
    raw = sessions.raw_scores(dataset.features("val")).astype(np.float64)
    center, scale = normalisation_stats(raw if y_val is None else raw[y_val == 0])
    normalised = normalise(raw, center, scale)
    if y_val is None:
        weights = np.full(normalised.shape[1], 1.0 / normalised.shape[1])
        skip = int(windows.max()) - 1 + smoothing - 1  # rows whose windows (or means) rest on padding
        score = trailing_mean(combine(normalised, weights, windows), smoothing)
        threshold, holdout = label_free_threshold(score[skip:], method, **options)
        return _Calibration(center, scale, weights, threshold, normalised, False, holdout)
    weights = select_weights(normalised, y_val, method, rounds, windows, **options)
    threshold = calibrate_threshold(method, y_val, trailing_mean(combine(normalised, weights, windows), smoothing),
                                    **options)
    return _Calibration(center, scale, weights, threshold, normalised, True)


def _calibration_record(calibration: _Calibration) -> dict[str, Any]:
    """``ensemble.json``'s ``calibration``: which rule set the weights and threshold, on which rows."""
    if calibration.labelled:
        return {"labels": True, "weights": "greedy selection on labelled validation rows"}
    record: dict[str, Any] = {"labels": False, "weights": "equal (no labels)"}
    if calibration.holdout:
        record.update({k: calibration.holdout[k] for k in ("rows", "calibration_rows", "holdout_rows")},
                      rule="tail threshold of the first rows in time order, false-alarm rate measured on the rest")
    return record


def _evaluate(runtime: EnsembleRuntime, dataset: SensorDataset, calibration: _Calibration, method: str,
              options: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], list[list[str]]]:
    """Test metrics and scores of the ensemble and of each member alone (thresholded on validation
    the same way as the ensemble): detection metrics with test labels; without validation labels, also
    :func:`raysys.evaluation.calibration.label_free_metrics` on the held-out validation tail. The
    ensemble's also hold ``alarm_sensor_share``; the test rows' top sensors come last."""
    test = runtime.score(dataset.features("test"), explain=True)
    scores = {ENSEMBLE: test["score"], **{name: test["members"][name] for name in runtime.members}}
    target_far = options["target_far"] if method == "far" else None
    y_test = dataset.known_labels("test")
    forced = test["reason"] != NO_REASON
    if calibration.labelled:
        thresholds = {ENSEMBLE: runtime.threshold, **{
            name: calibrate_threshold(method, dataset.labels("val"), calibration.normalised[:, j], **options)
            for j, name in enumerate(runtime.members)}}
        holdouts: dict[str, dict[str, Any] | None] = {}
    else:
        skip = runtime.history - runtime.smoothing + 1  # the members' own padding; they are not smoothed
        val = runtime.score(dataset.features("val"))
        val_forced = (val["reason"] != NO_REASON)[skip:]
        thresholds, holdouts = {ENSEMBLE: runtime.threshold}, {ENSEMBLE: calibration.holdout}
        val_scores = {ENSEMBLE: val["score"][skip:]}
        for j, name in enumerate(runtime.members):
            thresholds[name], holdouts[name] = label_free_threshold(calibration.normalised[skip:, j], method, **options)
            val_scores[name] = val["members"][name][skip:]
    metrics = {}
    for name, threshold in thresholds.items():
        if y_test is not None:
            metrics[name] = {**detection_metrics(y_test, scores[name], threshold, dataset.anomaly_types("test"),
                                                 dataset.test["timestamp"].to_numpy()),
                             "labelled": True, "far_asked": target_far}
        else:
            metrics[name] = {}
        if not calibration.labelled:
            holdout = holdouts[name]
            tail = slice(len(val_forced) - holdout["holdout_rows"], None) if holdout and holdout["holdout_rows"] else None
            metrics[name].update(label_free_metrics(
                threshold, (scores[name] > threshold) | forced,
                None if tail is None else (val_scores[name][tail] > threshold) | val_forced[tail], target_far))
    metrics[ENSEMBLE]["alarm_sensor_share"] = alarm_sensor_share(test["contributions"], test["is_anomaly"],
                                                                 runtime.sensors)
    return metrics, scores, test["top_sensors"]


def build_ensemble(detectors: Mapping[str, Any], dataset: SensorDataset, out_dir: str | os.PathLike, *,
                   threshold_method: str | None = None, target_far: float = 0.01, percentile: float = 99.0,
                   iforest: bool = True, pca: bool = True, cva: bool = False, rounds: int = 10, seed: int = 0,
                   smoothing: int = 1, range_factor: float | Mapping[str, float] = DEFAULT_RANGE_FACTOR,
                   sources: Mapping[str, Mapping[str, Any]] | None = None, parity_rtol: float = PARITY_RTOL,
                   intra_op_threads: int | None = 1, alarm: AlarmLogic | None = None) -> EnsembleBuild:
    """Export, calibrate and evaluate an ensemble of fitted detectors; write it to ``out_dir``.

    Args:
        detectors: Member name to fitted raysys detector (e.g. ``{"ae": ..., "lstm": ...}``).
        dataset: Supplies the sensor schema, the validation split (calibration and parity checks)
            and the test split (metrics).
        out_dir: Ensemble directory to write; must be empty or missing.
        threshold_method: ``best_f1``, ``far`` or ``percentile`` (``raysys.evaluation``); None:
            ``best_f1`` when the validation split has labels, else ``far``.
        target_far: False-alarm rate on validation normal rows for ``far``.
        percentile: Percentile of validation normal scores for ``percentile``.
        iforest: Add an Isolation Forest member fitted on the normal training rows.
        pca: Add a PCA detector fitted on the normal training rows, as two members: ``pca_t2``
            (Hotelling's T2) and ``pca_spe`` (squared prediction error).
        cva: Add a CVA detector fitted on the training split, as member ``cva`` (its combined state +
            residual statistic); for processes under feedback control.
        rounds: Greedy weight-selection rounds (weights are multiples of ``1 / rounds``).
        smoothing: Rows in the trailing mean of the ensemble score (1: none); the threshold is
            calibrated on the smoothed score, and ``ensemble.json`` records it for the runtime.
        seed: Random state of the Isolation Forest and of the random parity inputs.
        range_factor: How far outside its normal training range (in spans of it) a sensor reading
            may lie before the runtime flags the row ``out_of_range``; one number or per sensor.
        sources: Member name to provenance, recorded in ``ensemble.json``.
        parity_rtol: Largest relative error allowed between ONNX and the source model.
        intra_op_threads: onnxruntime threads used for calibration and evaluation.
        alarm: How flagged rows become alarm events (:class:`raysys.ensemble.alarms.AlarmLogic`; None:
            the default, one event per run of flagged rows), recorded in ``ensemble.json``.
    """
    threshold_method = threshold_method or default_threshold_method(dataset.labelled("val"))
    if isinstance(smoothing, bool) or not isinstance(smoothing, int) or smoothing < 1:
        raise ValueError(f"smoothing must be an int >= 1 (rows in the trailing mean of the score), got {smoothing!r}")
    if threshold_method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {threshold_method!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: ensemble directory exists and is not empty")
    reserved = {**({IFOREST: "the Isolation Forest"} if iforest else {}),
                **({name: "the PCA detector" for name in (PCA, f"{PCA}_{T2}", f"{PCA}_{SPE}")} if pca else {}),
                **({CVA: "the CVA detector"} if cva else {})}
    for name in detectors:
        if name in reserved:
            raise ValueError(f"member name {name!r} is reserved for {reserved[name]}; rename that detector")
    models: dict[str, Any] = dict(detectors)
    if not models and not iforest and not pca and not cva:
        raise ValueError("no ensemble members: give at least one detector or keep the Isolation Forest, PCA or CVA")
    if iforest:
        models[IFOREST] = fit_isolation_forest(dataset, seed=seed)
    if pca:
        models[PCA] = fit_pca(dataset)
    if cva:
        models[CVA] = fit_cva(dataset)
    out.mkdir(parents=True, exist_ok=True)

    checks = {"validation": dataset.features("val"),
              "random": random_rows(dataset.features("train", normal_only=True), seed=seed)}
    exported = [export_member(name, model, out, checks, parity_rtol) for name, model in models.items()]
    members = [{"name": name, "family": e.family, "file": e.file, "output": output, "window": e.window,
                **({"contributions": e.contributions[name]} if name in e.contributions else {})}
               for e in exported for name, output in e.outputs.items()]

    sensors = dataset.sensors
    options = {"target_far": target_far, "percentile": percentile}
    calibration = _calibrate(
        MemberSessions(out, members, len(sensors), intra_op_threads), np.array([m["window"] for m in members]),
        dataset, threshold_method, options, rounds, smoothing)
    for member, c, s, w in zip(members, calibration.center, calibration.scale, calibration.weights):
        member.update(center=float(c), scale=float(s), weight=float(w))
    spec = {
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "raysys_version": __version__,
        "sensors": sensors,
        "history": max(e.window for e in exported) - 1 + smoothing - 1,
        "smoothing": smoothing,
        "alarm": (alarm or AlarmLogic()).to_spec(),
        "padding": "repeat_first_row",
        "normalisation": "robust_z: (raw - center) / scale; center = median, scale = IQR of validation normal scores",
        "combination": "weighted_mean",
        "threshold": float(calibration.threshold),
        "input_range": input_range(dataset.features("train", normal_only=True), sensors, range_factor),
        "threshold_method": threshold_method,
        "target_far": target_far if threshold_method == "far" else None,
        "percentile": percentile if threshold_method == "percentile" else None,
        "calibration": _calibration_record(calibration),
        "members": members,
        "files": {e.file: {"family": e.family, "window": e.window, "opset": OPSET, "parity_max_rel_error": e.parity,
                           "source": dict((sources or {}).get(Path(e.file).stem, {"kind": "fitted"}))}
                  for e in exported},
        "dataset": {"path": str(dataset.path), "profile": dataset.metadata.get("profile"),
                    "validation_rows": len(dataset.val)},
    }
    (out / ENSEMBLE_SPEC).write_text(json.dumps(spec, indent=2, default=str))

    runtime = EnsembleRuntime.load(out, intra_op_threads)
    metrics, scores, top_sensors = _evaluate(runtime, dataset, calibration, threshold_method, options)
    latency = single_row_latency(runtime, dataset.features("test"))
    example = dataset.val[sensors].head(5).to_dict(orient="list")
    return EnsembleBuild(out, spec, metrics, latency, scores, top_sensors, models, example)
