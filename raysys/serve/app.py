"""The Ray Serve application: one deployment, ``AnomalyDetector``, with a FastAPI ingress.

Routes (see ``docs/serving.md``):

- ``POST /v1/predict``: score readings (records or columnar form, :mod:`raysys.serve.schemas`);
- ``GET /v1/model``: name, version, members, feature schema, threshold, score smoothing, ``history`` and
  gate metrics;
- ``GET /healthz`` (liveness) and ``GET /readyz`` (the model is loaded and scores).

Readings beyond the training range are answered, flagged (fail closed: ``reason`` and ``sensors`` per
prediction, from :class:`raysys.ensemble.runtime.EnsembleRuntime`), and counted in
``ray_raysys_readings_flagged_total{reason}``. A body is read in chunks and refused (413) once it passes
``max_body_bytes``, whatever its transfer encoding, and bounded in time by ``body_timeout_s`` (408).

Requests are coalesced by ``@serve.batch``; the batch size and wait, and the largest request, come from
the deployment's ``user_config`` (:class:`raysys.serve.config.UserConfig`), applied by ``reconfigure``
(a ``user_config`` change in a Serve config / serveConfigV2 reaches running replicas without a restart).
Autoscaling is the deployment's ``autoscaling_config``.

Run it from a Serve config file / KubeRay serveConfigV2 with::

    import_path: raysys.serve.app:app_builder
    args: {model_uri: "models:/raysys-detector@champion", tracking_uri: "http://mlflow:5000"}
"""

import asyncio
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.metrics import Counter, Histogram

from raysys import __version__
from raysys.ensemble.runtime import NON_FINITE_SCORE, OUT_OF_RANGE, rows_of
from raysys.serve._internal.model import ModelSource, ServedModel, pin_model
from raysys.serve.config import DEPLOYMENT_NAME, AppArgs, UserConfig, active_serve_settings, describe_errors
from raysys.serve.schemas import (
    ParsedRequest,
    PredictRequest,
    PredictResponse,
    RequestError,
    parse_alarm_state,
    parse_json,
    parse_predict_request,
    predict_response,
    read_body,
    to_strict_json,
)

logger = logging.getLogger("ray.serve")


class JSONBytesResponse(JSONResponse):
    """A strict JSON response (never a NaN or Infinity token: :func:`raysys.serve.schemas.to_strict_json`
    refuses them), encoded by pydantic-core (an order of magnitude faster than ``json.dumps`` for
    hundreds of predictions)."""

    def render(self, content: Any) -> bytes:
        return to_strict_json(content)


api = FastAPI(
    default_response_class=JSONBytesResponse,
    title="raysys anomaly detector",
    version=__version__,
    description="Anomaly scores for industrial sensor readings from the champion ensemble.",
)

#: ``@serve.batch`` needs start values; ``reconfigure`` replaces them from ``user_config`` before any request.
_START = UserConfig()
#: The fail-closed reasons counted by ``raysys_readings_flagged`` (the runtime's ``reason`` values).
FLAG_REASONS = (OUT_OF_RANGE, NON_FINITE_SCORE)
_ROW_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


# Serve pickles this class when the decorators run: whatever its methods call must be imported or
# defined above it (a helper defined further down is a NameError in the replica).
@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class AnomalyDetector:
    """One replica: the ensemble's onnxruntime sessions, loaded once, behind the HTTP API.

    Args:
        source: The pinned model (``ModelSource.to_dict()``, from :func:`app_builder`).
        tracking_uri: MLflow tracking URI for ``runs:/`` and ``models:/`` sources.
        intra_op_threads: onnxruntime threads per call (``None``: its default); :class:`AppArgs` holds the
            default.
    """

    def __init__(self, source: dict[str, Any], tracking_uri: str | None, intra_op_threads: int | None):
        started = time.perf_counter()
        self._model = ServedModel.load(ModelSource(**source), tracking_uri, intra_op_threads)
        self._settings = _START
        # A real score proves the sessions work before the replica takes traffic (and warms them up).
        self._probe = np.zeros((1, len(self._model.sensors)), dtype=np.float64)
        self._model.runtime.score(self._probe)
        self._readings = Counter("raysys_readings_scored", "Readings scored.", tag_keys=("model_version",))
        self._anomalies = Counter("raysys_anomalies_flagged", "Readings scored above the threshold.",
                                  tag_keys=("model_version",))
        self._flagged = Counter("raysys_readings_flagged",
                                "Readings flagged whatever their score: out_of_range (a sensor far outside the "
                                "training range) or non_finite_score (a member scored NaN/inf).",
                                tag_keys=("model_version", "reason"))
        self._rejected = Counter("raysys_requests_rejected",
                                 "Requests answered before scoring: 4xx, or 503 when the body never arrived.",
                                 tag_keys=("status",))
        self._rows = Histogram("raysys_request_rows", "Readings per predict request.", boundaries=_ROW_BUCKETS)
        self._tags = {"model_version": self._model.source.version}
        self._replica = serve.get_replica_context().replica_id.unique_id
        runtime = self._model.runtime
        logger.info("Loaded %s version %s from %s in %.2fs (%d sensors, members %s, smoothing %d, history %d).",
                    self._model.name, self._model.source.version, self._model.source.uri,
                    time.perf_counter() - started, len(self._model.sensors), runtime.members, runtime.smoothing,
                    runtime.history)

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply ``user_config`` (batch size and wait, request limit) to this running replica."""
        settings = UserConfig.parse(user_config)
        self._score_batch.set_max_batch_size(settings.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._settings = settings

    def check_health(self) -> None:
        """Serve's periodic health check: the sessions still score (raising marks the replica unhealthy)."""
        result = self._model.runtime.score(self._probe)
        if not np.isfinite(result["score"]).all():
            raise RuntimeError(f"health probe scored {result['score']!r}")

    @serve.batch(max_batch_size=_START.max_batch_size, batch_wait_timeout_s=_START.batch_wait_timeout_s)
    async def _score_batch(self, requests: list[ParsedRequest]) -> list[dict[str, Any]]:
        # onnxruntime releases the GIL: the event loop parses the next requests while this batch runs.
        # One request asking to explain explains the batch: contributions never change a score.
        explain = any(r.explain for r in requests)
        return await asyncio.to_thread(self._model.score_many, [r.rows for r in requests], explain)

    # -- routes --------------------------------------------------------------------
    @api.post("/v1/predict", response_model=PredictResponse,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictRequest.model_json_schema()}}}},
              responses={400: {"description": "Body is not JSON"},
                         408: {"description": "The body did not arrive in full within body_timeout_s"},
                         413: {"description": "Body over max_body_bytes, or more than max_request_rows readings"},
                         422: {"description": "Unknown or missing sensor, wrong type, NaN/inf, empty batch"},
                         503: {"description": "The request body never arrived (retry)"}})
    async def predict(self, request: Request) -> JSONBytesResponse:
        """Score one or many readings: ensemble score, member scores, ``is_anomaly`` and its fail-closed
        ``reason`` and ``sensors``, its alarm event state ``alarm``, threshold, model version, and the
        ``alarm_state`` to send with the next readings of the stream; with ``"explain": true``, each
        reading's per-sensor ``contributions`` and ``top_sensors``."""
        settings, model = self._settings, self._model
        try:
            body = await read_body(request.stream(), request.headers.get("content-length"), settings.max_body_bytes,
                                   settings.body_timeout_s)
            parsed = parse_predict_request(parse_json(body), model.sensors, settings.max_request_rows)
            state = parse_alarm_state(parsed.alarm_state, model.runtime.alarm_logic)
        except RequestError as exc:
            self._rejected.inc(tags={"status": str(exc.status)})
            return JSONBytesResponse(exc.body(), status_code=exc.status, headers=exc.headers())
        result = rows_of(await self._score_batch(parsed), slice(parsed.n_history, None))
        result = model.with_alarms(result, state)  # per request: a stream's state is the client's
        self._readings.inc(parsed.n_readings, tags=self._tags)
        flagged = int(np.count_nonzero(result["is_anomaly"]))
        if flagged:
            self._anomalies.inc(flagged, tags=self._tags)
            for reason in FLAG_REASONS:
                count = int(np.count_nonzero(result["reason"] == reason))
                if count:
                    self._flagged.inc(count, tags={**self._tags, "reason": reason})
        self._rows.observe(parsed.n_readings)
        return JSONBytesResponse(predict_response(parsed, result, model.ref, model.threshold, model.sensors))

    @api.get("/v1/model")
    async def model(self) -> dict[str, Any]:
        """The loaded model: name, version, members, feature schema, threshold, smoothing, history, gate metrics,
        serving limits."""
        return {**self._model.card(), "serving": {**self._settings.model_dump(), "replica": self._replica,
                                                  **active_serve_settings()}}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the replica answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONBytesResponse:
        """Readiness: the model is loaded and scores a probe row."""
        try:
            self.check_health()
        except Exception as exc:  # report, never crash: Serve's own check_health replaces the replica
            return JSONBytesResponse({"status": "not ready", "detail": str(exc)}, status_code=503)
        return JSONBytesResponse({"status": "ready", **self._model.ref})


def build_app(args: dict[str, Any]) -> tuple[Application, ModelSource]:
    """The application for ``args`` (:class:`raysys.serve.config.AppArgs`) and the model version it serves:
    a fleet (``fleet.json`` directory, or a registered fleet) gets the fleet endpoint (:mod:`raysys.fleet.serve`).

    Raises:
        ValueError: naming each invalid arg.
    """
    try:
        parsed = AppArgs.model_validate(args)
    except ValidationError as exc:
        raise ValueError(f"invalid raysys serve args: {describe_errors(exc)}") from None
    tracking_uri = parsed.tracking_uri
    if parsed.model_uri.startswith(("models:/", "runs:/")):
        from raysys.tracking import resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(tracking_uri)  # absolute, so replicas (other processes) agree
    from raysys.fleet.source import fleet_source

    fleet = fleet_source(parsed.model_uri, tracking_uri)
    if fleet is not None:  # a fleet directory or a registered fleet: the multiplexed fleet endpoint
        from raysys.fleet.serve import build_fleet_app

        return build_fleet_app(fleet, parsed, tracking_uri), ModelSource(
            parsed.model_uri, fleet.requested, fleet.name, fleet.version, fleet.alias, fleet.manifest.run_id)
    source = pin_model(parsed.model_uri, tracking_uri)
    threads = parsed.intra_op_threads or None
    app = AnomalyDetector.options(**parsed.deployment_options()).bind(source.to_dict(), tracking_uri, threads)
    return app, source


def app_builder(args: dict[str, Any]) -> Application:
    """Build the application from ``args`` (:class:`raysys.serve.config.AppArgs`).

    Used by ``serve run`` / ``serve deploy`` / KubeRay (``import_path: raysys.serve.app:app_builder``)
    and by :func:`raysys.serve.deploy`. A ``models:/NAME@ALIAS`` URI is resolved to its version here,
    so every replica, including those autoscaling adds later, serves that version until the next deploy.

    Raises:
        ValueError: naming each invalid arg.
    """
    return build_app(args)[0]
