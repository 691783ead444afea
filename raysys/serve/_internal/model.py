"""The model a replica serves: which version (pinned when the app is built), loading, batched scoring."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raysys.ensemble.alarms import AlarmState
from raysys.ensemble.runtime import EnsembleRuntime, load_runtime, resolve_ensemble_dir
from raysys.layout import ENSEMBLE_SPEC, EVALUATION_DIR, GATE_REPORT, METRICS_FILE

logger = logging.getLogger(__name__)

_MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")
_RUNS = re.compile(r"^runs:/(?P<run>[^/]+)(/.*)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a served model comes from.

    Args:
        requested: The URI or directory as given (``models:/raysys-detector@champion``).
        uri: What replicas load: an alias resolved to ``models:/NAME/VERSION``, an absolute directory.
        name: Registered model name (``None`` for a directory or a run).
        version: Registry version, run id, or ``local-<digest of ensemble.json>``.
        alias: The alias that was resolved, if any.
        run_id: The MLflow run that logged the model, if known.
        gates: The quality-gate report the model passed (``gate_report.json``), if found.
        test_metrics: The ensemble's test metrics from that run (or the build's ``metrics.json``).
    """

    requested: str
    uri: str
    name: str | None
    version: str
    alias: str | None = None
    run_id: str | None = None
    gates: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_models_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of ``models:/NAME@ALIAS`` (version None) or ``models:/NAME/VERSION``
    (alias None).

    Raises:
        ValueError: any other URI, naming it.
    """
    alias, version = _MODELS_ALIAS.match(model_uri), _MODELS_VERSION.match(model_uri)
    if alias:
        return alias["name"], alias["alias"], None
    if version:
        return version["name"], None, version["version"]
    raise ValueError(f"expected models:/NAME@ALIAS or models:/NAME/VERSION, got {model_uri!r}")


def _local_version(directory: Path) -> str:
    return "local-" + hashlib.sha256((resolve_ensemble_dir(directory) / ENSEMBLE_SPEC).read_bytes()).hexdigest()[:12]


def _local_evaluation(directory: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Gate report and test metrics that ``raysys ensemble`` writes beside the ensemble (``../evaluation``)."""
    evaluation = resolve_ensemble_dir(directory).parent / EVALUATION_DIR
    gates = metrics = None
    if (evaluation / GATE_REPORT).exists():
        gates = json.loads((evaluation / GATE_REPORT).read_text())
    if (evaluation / METRICS_FILE).exists():
        metrics = json.loads((evaluation / METRICS_FILE).read_text()).get("test", {}).get("ensemble")
    return gates, metrics


def _run_evaluation(client: Any, run_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Gate report (artifact ``gate_report.json``) and ``test_*`` metrics of the run that logged the model."""
    gates = metrics = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            gates = json.loads(Path(client.download_artifacts(run_id, GATE_REPORT, tmp)).read_text())
    except Exception as exc:  # an older or hand-logged model: report without gates
        logger.warning("No gate report for run %s: %s", run_id, exc)
    try:
        metrics = {k[len("test_"):]: v for k, v in client.get_run(run_id).data.metrics.items()
                   if k.startswith("test_")} or None
    except Exception as exc:
        logger.warning("No metrics for run %s: %s", run_id, exc)
    return gates, metrics


def pin_model(model_uri: str, tracking_uri: str | None = None) -> ModelSource:
    """Resolve ``model_uri`` to the exact version to serve, so all replicas (also those added later
    by autoscaling) serve one version until the next deploy, even if the alias moves meanwhile.
    Also looks up the gate report and test metrics the model was registered with."""
    path = Path(model_uri).expanduser()
    if path.exists():
        path = path.resolve()
        gates, metrics = _local_evaluation(path)
        return ModelSource(model_uri, str(path), None, _local_version(path), gates=gates, test_metrics=metrics)
    alias, version_match, run_match = (p.match(model_uri) for p in (_MODELS_ALIAS, _MODELS_VERSION, _RUNS))
    if not (alias or version_match or run_match):
        raise ValueError(f"model_uri must be an ensemble directory, runs:/RUN_ID/PATH, models:/NAME@ALIAS or "
                         f"models:/NAME/VERSION, got {model_uri!r}")
    from mlflow.tracking import MlflowClient

    from raysys.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    if run_match:
        gates, metrics = _run_evaluation(client, run_match["run"])
        return ModelSource(model_uri, model_uri, None, run_match["run"], run_id=run_match["run"], gates=gates,
                           test_metrics=metrics)
    name, alias_name, number = parse_models_uri(model_uri)
    version = client.get_model_version_by_alias(name, alias_name) if alias_name else client.get_model_version(name,
                                                                                                            number)
    gates, metrics = _run_evaluation(client, version.run_id) if version.run_id else (None, None)
    return ModelSource(model_uri, f"models:/{name}/{version.version}", name, str(version.version), alias_name,
                       version.run_id, gates, metrics)


class ServedModel:
    """An :class:`EnsembleRuntime` (onnxruntime sessions, loaded once) plus what the API reports about it.

    Args:
        runtime: The loaded ensemble.
        source: Where it came from (:func:`pin_model`).
    """

    def __init__(self, runtime: EnsembleRuntime, source: ModelSource):
        self.runtime = runtime
        self.source = source
        self.sensors = runtime.sensors
        self.threshold = runtime.threshold
        self.name = source.name or str(runtime.spec.get("name") or "raysys-ensemble")
        self.ref = {"name": self.name, "version": source.version}

    @classmethod
    def load(cls, source: ModelSource, tracking_uri: str | None, intra_op_threads: int | None) -> "ServedModel":
        """Load ``source`` (``intra_op_threads``: onnxruntime threads per call, ``None`` its default)."""
        return cls(load_runtime(source.uri, tracking_uri, intra_op_threads), source)

    def card(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers: name, version, members, feature schema, threshold, score smoothing,
        history (rows a streaming client sends before new readings), alarm logic, the asked false-alarm rate
        (``far_asked``, when the threshold was set for one), gate metrics."""
        spec = self.runtime.spec
        members = [{k: m[k] for k in ("name", "family", "window", "weight", "center", "scale") if k in m}
                   for m in spec["members"]]
        return {
            **self.ref,
            "ensemble": spec.get("name"),
            "source": {k: v for k, v in self.source.to_dict().items() if k not in ("gates", "test_metrics")},
            "sensors": self.sensors,
            "threshold": self.threshold,
            "smoothing": self.runtime.smoothing,
            "history": self.runtime.history,
            "alarm": self.runtime.alarm_logic.to_spec(),
            "far_asked": spec.get("target_far"),
            "members": members,
            "gates": self.source.gates,
            "test_metrics": self.source.test_metrics,
            "threshold_method": spec.get("threshold_method"),
            "created_at": spec.get("created_at"),
        }

    def with_alarms(self, result: dict[str, Any], state: AlarmState | None) -> dict[str, Any]:
        """One request's ``result`` (its readings only) with ``alarm`` per reading, continuing from the
        ``state`` the client sent back (None: afresh, ``alarm_restarted``), and the token of the state after it."""
        alarm, after = self.runtime.alarms(result, state)
        return {**result, "alarm": alarm, "alarm_state": after.to_token(self.runtime.alarm_logic),
                "alarm_restarted": state is None}

    def score_many(self, parts: list[np.ndarray], explain: bool = False) -> list[dict[str, Any]]:
        """Score several requests' rows in one onnxruntime call per member file.

        Each part (a request's ``history`` rows, then its readings) is its own series: this is
        :meth:`EnsembleRuntime.score_many`, so each result equals ``runtime.score(part, explain=explain)`` alone.
        """
        return self.runtime.score_many(parts, explain)
