"""The fleet endpoint: one Serve application answering for every asset of a fleet.

Two deployments (docs/fleet.md#serving):

- ``FleetIngress`` (FastAPI, behind Serve's HTTP ingress): reads and bounds the body, answers 404 for an
  asset the fleet does not serve, and forwards the request through a deployment handle with
  ``multiplexed_model_id=<asset>``;
- ``FleetScorer``: loads an asset's ensemble on its first request with ``@serve.multiplexed`` (at most
  ``max_models_per_replica`` per replica; the least recently used is evicted), validates the readings
  against that asset's sensors and scores them, coalescing concurrent requests with ``@serve.batch``
  (one onnxruntime call per asset in a batch, each request scored alone, as the single model does).

Why the extra hop: Ray 2.60's HAProxy ingress routes a request to any replica of the ingress deployment
(least connections) and only reads ``serve_multiplexed_model_id`` inside that replica; model-aware
routing (prefer a replica that holds the model) happens in a deployment handle. So the ingress stays
model-free and the handle routes. Routes::

    POST /v1/assets/{asset_id}/predict     (or POST /v1/predict with header serve_multiplexed_model_id)
    GET  /v1/assets/{asset_id}             the asset's entry (status, threshold, metrics)
    GET  /v1/model                         the fleet: name, version, asset counts, config
    GET  /healthz, /readyz
"""

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter

from raysys import __version__
from raysys.ensemble.runtime import load_runtime, rows_of
from raysys.serve._internal.model import ModelSource, ServedModel
from raysys.serve.app import JSONBytesResponse
from raysys.serve.config import UserConfig, active_serve_settings
from raysys.serve.schemas import (RequestError, parse_alarm_state, parse_json, parse_predict_request,
                                  predict_response, read_body, to_strict_json)

logger = logging.getLogger("ray.serve")

INGRESS_NAME = "FleetIngress"
SCORER_NAME = "FleetScorer"
#: Serve's request header naming the multiplexed model (here: the asset), as ``serve.get_multiplexed_model_id``
#: reads it.
MODEL_ID_HEADER = "serve_multiplexed_model_id"

fleet_api = FastAPI(default_response_class=JSONBytesResponse, title="raysys fleet anomaly detector",
                    version=__version__, description="Anomaly scores per asset, from each asset's own ensemble.")
_START = UserConfig()


def _error(exc: RequestError) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    return exc.status, exc.body(), exc.headers()


@serve.deployment(name=SCORER_NAME)
class FleetScorer:
    """Scores readings with an asset's ensemble, loaded on demand and cached per replica.

    Args:
        asset_uris: Served asset id -> its ensemble (directory or ``runs:/`` URI).
        fleet: ``{"name", "version"}`` of the fleet, reported with every answer.
        tracking_uri: MLflow tracking URI for ``runs:/`` ensembles.
        intra_op_threads: onnxruntime threads per call.
        max_models_per_replica: Assets kept loaded per replica (``@serve.multiplexed``'s cap).
    """

    def __init__(self, asset_uris: dict[str, str], fleet: dict[str, str], tracking_uri: str | None,
                 intra_op_threads: int | None, max_models_per_replica: int):
        self._uris, self._fleet = asset_uris, fleet
        self._tracking_uri, self._threads = tracking_uri, intra_op_threads
        self._settings = _START
        self._loads = Counter("raysys_fleet_asset_loads", "Asset ensembles loaded into a scorer replica.")
        self._load_counts: dict[str, int] = {}

        async def load(asset_id: str) -> ServedModel:
            return await asyncio.to_thread(self._load, asset_id)

        # Wired at init so the cap is a setting (Ray's docs: multiplexing may be set up dynamically).
        self.get_model = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(load)

    def _load(self, asset_id: str) -> ServedModel:
        started = time.perf_counter()
        uri = self._uris[asset_id]
        source = ModelSource(uri, uri, f"{self._fleet['name']}/{asset_id}", self._fleet["version"])
        model = ServedModel(load_runtime(uri, self._tracking_uri, self._threads), source)
        self._loads.inc()
        self._load_counts[asset_id] = self._load_counts.get(asset_id, 0) + 1
        logger.info("Loaded asset %s from %s in %.3fs", asset_id, uri, time.perf_counter() - started)
        return model

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply ``user_config`` (batch size and wait, request rows) to this running replica."""
        settings = UserConfig.parse(user_config)
        self._score_batch.set_max_batch_size(settings.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._settings = settings

    @serve.batch(max_batch_size=_START.max_batch_size, batch_wait_timeout_s=_START.batch_wait_timeout_s)
    async def _score_batch(self, items: list[tuple[ServedModel, Any]]) -> list[dict[str, Any]]:
        """Score a batch: one ``score_many`` per asset in it, each request its own series."""
        results: list[dict[str, Any] | None] = [None] * len(items)
        by_model: dict[int, list[int]] = {}
        for i, (model, _) in enumerate(items):
            by_model.setdefault(id(model), []).append(i)
        for indices in by_model.values():
            model = items[indices[0]][0]
            parts = [items[i][1] for i in indices]
            explain = any(p.explain for p in parts)
            scored = await asyncio.to_thread(model.score_many, [p.rows for p in parts], explain)
            for i, result in zip(indices, scored):
                results[i] = result
        return results

    async def predict(self, asset_id: str, body: bytes) -> tuple[int, bytes, dict[str, str] | None]:
        """``(status, JSON body, headers)`` for one request's ``body`` (bytes in and out: the hop from the
        ingress pickles no parsed document)."""
        status, answer, headers = await self._answer(asset_id, body)
        return status, to_strict_json(answer), headers

    async def _answer(self, asset_id: str, body: bytes) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        if asset_id not in self._uris:
            return 404, {"detail": f"unknown asset {asset_id!r}"}, None
        try:
            model = await self.get_model(asset_id)
        except Exception as exc:  # a missing or corrupt artifact: this asset fails, the replica goes on
            logger.exception("asset %s: loading its model failed", asset_id)
            return 503, {"detail": f"asset {asset_id!r}: its model could not be loaded: {type(exc).__name__}: "
                                   f"{exc}"}, {"Retry-After": "5"}
        try:
            parsed = parse_predict_request(parse_json(body), model.sensors, self._settings.max_request_rows)
            state = parse_alarm_state(parsed.alarm_state, model.runtime.alarm_logic)
        except RequestError as exc:
            return _error(exc)
        result = rows_of(await self._score_batch((model, parsed)), slice(parsed.n_history, None))
        result = model.with_alarms(result, state)
        body = predict_response(parsed, result, model.ref, model.threshold, model.sensors)
        return 200, {"asset_id": asset_id, **body}, None

    def loaded(self) -> dict[str, Any]:
        """This replica's id, the assets it holds now (least recently used first) and how many times it
        loaded each (a count above 1: evicted and loaded again)."""
        wrapper = getattr(getattr(self.get_model, "__wrapped__", None), "__serve_multiplex_wrapper", None)
        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "held": list(getattr(wrapper, "models", {}) or {}), "loads": dict(self._load_counts)}


@serve.deployment(name=INGRESS_NAME)
@serve.ingress(fleet_api)
class FleetIngress:
    """The fleet's HTTP API: checks the asset and the body, then hands the request to a scorer replica
    chosen by the handle's multiplexed routing.

    Args:
        scorer: Handle to :class:`FleetScorer`.
        card: The fleet's card (:meth:`raysys.fleet.source.FleetSource.card`).
        served: Served asset ids.
        not_served: Asset id -> why it is listed but not served.
        entries: Asset id -> its manifest entry (``GET /v1/assets/{asset_id}``).
    """

    def __init__(self, scorer: DeploymentHandle, card: dict[str, Any], served: list[str],
                 not_served: dict[str, str], entries: dict[str, dict[str, Any]]):
        self._scorer, self._card = scorer, card
        self._served, self._not_served, self._entries = frozenset(served), not_served, entries
        self._settings = _START
        self._rejected = Counter("raysys_fleet_requests_rejected", "Fleet requests answered before scoring.",
                                 tag_keys=("status",))

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply ``user_config`` (body size and time limits) to this running replica."""
        self._settings = UserConfig.parse(user_config)

    def _unknown(self, asset_id: str) -> JSONBytesResponse:
        why = self._not_served.get(asset_id)
        detail = (f"asset {asset_id!r} has no served model: {why}" if why else
                  f"unknown asset {asset_id!r}: fleet {self._card['name']} version {self._card['version']} has no "
                  "such asset")
        self._rejected.inc(tags={"status": "404"})
        return JSONBytesResponse({"detail": detail, "asset_id": asset_id}, status_code=404)

    async def _predict(self, asset_id: str, request: Request) -> JSONBytesResponse:
        if asset_id not in self._served:
            return self._unknown(asset_id)
        try:
            body = await read_body(request.stream(), request.headers.get("content-length"),
                                   self._settings.max_body_bytes, self._settings.body_timeout_s)
        except RequestError as exc:
            self._rejected.inc(tags={"status": str(exc.status)})
            return JSONBytesResponse(exc.body(), status_code=exc.status, headers=exc.headers())
        status, answer, headers = await self._scorer.options(multiplexed_model_id=asset_id).predict.remote(
            asset_id, body)
        if status != 200:
            self._rejected.inc(tags={"status": str(status)})
        return Response(answer, status_code=status, headers=headers, media_type="application/json")

    @fleet_api.post("/v1/assets/{asset_id}/predict")
    async def predict_asset(self, asset_id: str, request: Request) -> JSONBytesResponse:
        """Score readings with asset ``asset_id``'s ensemble (the body is the single model's
        ``POST /v1/predict`` body); 404 when the fleet does not serve that asset."""
        header = request.headers.get(MODEL_ID_HEADER) or request.headers.get(MODEL_ID_HEADER.replace("_", "-"))
        if header and header != asset_id:
            return JSONBytesResponse({"detail": f"the path names asset {asset_id!r} but header {MODEL_ID_HEADER} "
                                                f"names {header!r}"}, status_code=400)
        return await self._predict(asset_id, request)

    @fleet_api.post("/v1/predict")
    async def predict(self, request: Request) -> JSONBytesResponse:
        """Score readings for the asset named by Serve's ``serve_multiplexed_model_id`` header."""
        asset_id = serve.get_multiplexed_model_id() or request.headers.get(MODEL_ID_HEADER.replace("_", "-"), "")
        if not asset_id:
            return JSONBytesResponse({"detail": f"name the asset: POST /v1/assets/{{asset_id}}/predict, or the "
                                                f"{MODEL_ID_HEADER} header"}, status_code=400)
        return await self._predict(asset_id, request)

    @fleet_api.get("/v1/assets/{asset_id}")
    async def asset(self, asset_id: str) -> JSONBytesResponse:
        """Asset ``asset_id``'s manifest entry: status, reason, threshold, metrics, data range."""
        if asset_id not in self._entries:
            return self._unknown(asset_id)
        return JSONBytesResponse({"asset_id": asset_id, "served": asset_id in self._served, **self._entries[asset_id]})

    @fleet_api.get("/v1/model")
    async def model(self) -> dict[str, Any]:
        """The fleet: name, version, asset counts, config, serving settings, and the replica of the scorer
        that answered with the assets it holds."""
        scorer = await self._scorer.loaded.remote()
        return {**self._card, "serving": {**self._settings.model_dump(), **active_serve_settings()},
                "scorer": scorer}

    @fleet_api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @fleet_api.get("/readyz")
    async def readyz(self) -> dict[str, Any]:
        """Ready once a scorer replica answers."""
        await self._scorer.loaded.remote()
        return {"status": "ready", "name": self._card["name"], "version": self._card["version"]}


def build_fleet_app(source: Any, args: Any, tracking_uri: str | None) -> Any:
    """The fleet application for pinned fleet ``source`` (:class:`raysys.fleet.source.FleetSource`) with the
    serve settings ``args`` (:class:`raysys.serve.config.AppArgs`): the scorer takes the deployment, autoscaling
    and batching settings; the ingress the same resources, one replica per scorer minimum."""
    options = args.deployment_options()
    card = source.card()
    fleet = {"name": card["name"], "version": card["version"]}
    scorer = FleetScorer.options(**options).bind(source.asset_uris(), fleet, tracking_uri,
                                                  args.intra_op_threads or None, args.max_models_per_replica)
    ingress_options = {k: v for k, v in options.items() if k in ("ray_actor_options", "user_config",
                                                                  "autoscaling_config", "num_replicas",
                                                                  "max_ongoing_requests")}
    entries = {a: e.model_dump(exclude={"model_uri"}) for a, e in source.manifest.assets.items()}
    return FleetIngress.options(**ingress_options).bind(scorer, card, source.manifest.servable(),
                                                        source.not_served(), entries)
