"""Attribution benchmark: does an alarm name the sensors its event touched?

On a generated dataset (``raysys generate``: its test split records, per row, the event type and the
sensors the event changed in ``anomaly_type`` / ``anomaly_sensors``), :func:`run_attribution` fits the
default families in-process, builds the ensemble the pipeline would (Isolation Forest and PCA
members included), scores the test split with ``explain=True`` and, for each event:

- detected: some row of the event is flagged (``is_anomaly``);
- top-1 hit: at the event's peak row (its highest score), the first of ``top_sensors`` is one of
  the touched sensors; top-3 hit: one of the first three is.

Hit rates are over the detected events, per event type and over the single-sensor types
(:data:`SINGLE_SENSOR_TYPES`, the issue's target: top-1 >= 0.8, top-3 >= 0.95). Results and how to
rerun them: docs/attribution.md. Importing this module is light (numpy), so that ``raysys benchmark
--help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from raysys.data.io import SensorDataset

#: Event types that change one sensor (the target's population).
SINGLE_SENSOR_TYPES = ("spike", "stuck", "drift")
#: Families fitted when none are named (the quick pipeline's dense and sequence families).
DEFAULT_FAMILIES = ("ae", "lstm")
#: The rates the issue asks of single-sensor events.
TARGETS = {"top1": 0.8, "top3": 0.95}


def labelled_events(dataset: SensorDataset) -> list[dict[str, Any]]:
    """The test split's events: maximal runs of anomalous rows of one type and one set of sensors,
    as ``{"type", "sensors", "rows": (start, stop)}`` (half-open)."""
    from raysys.data.anomalies import ANOMALY_SENSORS
    from raysys.data.io import ANOMALY_TYPE, LABEL

    frame = dataset.test
    if ANOMALY_SENSORS not in frame.columns or LABEL not in frame.columns:
        raise ValueError(f"{dataset.path}: the test split has no {LABEL!r} and {ANOMALY_SENSORS!r} columns; "
                         "generate the data with `raysys generate` (it records which sensors each event touched)")
    labels = frame[LABEL].to_numpy()
    keys = list(zip(frame[ANOMALY_TYPE].astype(str), frame[ANOMALY_SENSORS].astype(str)))
    events, i = [], 0
    while i < len(keys):
        j = i + 1
        while j < len(keys) and labels[i] == labels[j] and keys[j] == keys[i]:
            j += 1
        if labels[i] == 1:
            events.append({"type": keys[i][0], "sensors": keys[i][1].split(","), "rows": (i, j)})
        i = j
    return events


def hit_rates(events: Sequence[Mapping[str, Any]], scores: np.ndarray, flags: np.ndarray,
              top_sensors: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Detected events and top-1 / top-3 hit rates (over detected events), per type, over the
    single-sensor types and over all; see the module docstring."""
    per_event = []
    for event in events:
        a, b = event["rows"]
        peak = a + int(np.argmax(scores[a:b]))
        top = list(top_sensors[peak])
        per_event.append({"type": event["type"], "detected": bool(flags[a:b].any()),
                          "top1": bool(top) and top[0] in event["sensors"],
                          "top3": any(s in event["sensors"] for s in top[:3])})

    def summary(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        detected = [e for e in chosen if e["detected"]]
        rate = (lambda key: float(np.mean([e[key] for e in detected]))) if detected else (lambda key: None)
        return {"events": len(chosen), "detected": len(detected), "top1": rate("top1"), "top3": rate("top3")}

    types = sorted({e["type"] for e in per_event})
    return {"by_type": {t: summary([e for e in per_event if e["type"] == t]) for t in types},
            "single_sensor": summary([e for e in per_event if e["type"] in SINGLE_SENSOR_TYPES]),
            "all": summary(per_event)}


def run_attribution(data: str | os.PathLike, out_dir: str | os.PathLike, families: Sequence[str] = DEFAULT_FAMILIES,
                    params: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
                    on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit ``families`` (default parameters, updated by ``params[family]``) on the training split of the
    dataset at ``data``, build the ensemble into ``out_dir``, and measure its attribution on the test split.

    Returns ``{"families", "threshold", "hit_rates": hit_rates(...), "targets"}``.
    """
    from raysys.data.io import load_dataset
    from raysys.ensemble.build import build_ensemble
    from raysys.ensemble.runtime import EnsembleRuntime
    from raysys.models import build_detector

    dataset = load_dataset(data)
    events = labelled_events(dataset)  # fails before anything is fitted on data without ground truth
    X, y = dataset.features("train"), dataset.labels("train")
    models = {}
    for family in families:
        if on_step:
            on_step(f"fitting {family}")
        models[family] = build_detector(family, seed=seed, **dict((params or {}).get(family, {}))).fit(X, y)
    if on_step:
        on_step("building the ensemble")
    build = build_ensemble(models, dataset, Path(out_dir), seed=seed)
    runtime = EnsembleRuntime.load(build.directory)
    result = runtime.score(dataset.features("test"), explain=True)
    return {"families": list(families), "threshold": runtime.threshold,
            "hit_rates": hit_rates(events, result["score"], result["is_anomaly"], result["top_sensors"]),
            "targets": dict(TARGETS)}


def results_table(result: Mapping[str, Any]):
    """A rich table of the hit rates by event type."""
    from rich.table import Table

    table = Table(title=f"Attribution ({' + '.join(result['families'])} ensemble)")
    for column in ("events", "type", "detected", "top-1", "top-3"):
        table.add_column(column, justify="left" if column == "type" else "right")
    rates = result["hit_rates"]
    rows = [*rates["by_type"].items(), ("single-sensor types", rates["single_sensor"]), ("all", rates["all"])]
    for name, s in rows:
        table.add_row(str(s["events"]), name, str(s["detected"]),
                      *("-" if s[k] is None else f"{s[k]:.3f}" for k in ("top1", "top3")))
    return table


def log_to_mlflow(result: Mapping[str, Any], tracking_uri: str | None = None, experiment: str = "raysys",
                  params: Mapping[str, Any] | None = None) -> str:
    """One MLflow run with the hit rates as metrics and the result as JSON; its id."""
    import mlflow

    from raysys.tracking import use_tracking

    use_tracking(tracking_uri, experiment)
    rates = result["hit_rates"]
    metrics = {f"{group}.{key}": value for group, s in [*rates["by_type"].items(), ("single_sensor",
                                                                                  rates["single_sensor"]),
                                                          ("all", rates["all"])]
               for key, value in s.items() if value is not None}
    with mlflow.start_run(run_name="benchmark-attribution") as run:
        mlflow.set_tag("raysys.benchmark", "attribution")
        mlflow.log_params(dict(params or {}))
        mlflow.log_metrics(metrics)
        mlflow.log_dict(dict(result), "attribution_benchmark.json")
    return run.info.run_id
