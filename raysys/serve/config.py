"""Typed settings of the served detector: deployment, autoscaling, batching, HTTP.

One :class:`ServeConfig` holds everything ``raysys serve`` needs. It is read from a YAML file
(:func:`load_serve_config`), overridden by flags, and turned into the ``args`` of
``raysys.serve.app:app_builder`` plus the options of its one deployment, ``AnomalyDetector``.
:func:`to_serve_config_v2` renders the same settings as a Ray Serve config file / KubeRay
``serveConfigV2`` application, so a local run and a RayService run the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: Serve application name, deployment name and import path that other components rely on.
APP_NAME = "raysys"
DEPLOYMENT_NAME = "AnomalyDetector"
IMPORT_PATH = "raysys.serve.app:app_builder"
#: Ray Serve's switch for its HAProxy ingress (HAProxy on port 8000 of each node, forwarding straight to
#: replicas' own HTTP servers); read by the Serve controller, proxies and replicas when they start.
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
#: Ray Serve's switch for its low-overhead request path (user code on the replica's own event loop,
#: buffered request logs, replica logs to files only, gRPC between deployments).
THROUGHPUT_ENV = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
#: Ray Serve's HAProxy retry policy: the ``retry-on`` of every backend (Serve pairs it with ``option
#: redispatch 1``, so a retry goes to another replica). Serve's default is ``conn-failure`` only.
RETRY_ON_ENV = "RAY_SERVE_HAPROXY_RETRY_ON"
#: raysys's: also retry a request whose replica closed the connection without answering (it died mid-request),
#: answered garbage, or answered 503 (its body was lost, or Serve's backpressure). Safe because ``POST
#: /v1/predict`` is idempotent; HAProxy replays only requests that fit in its buffer (``tune.bufsize``, 16 KiB).
DEFAULT_RETRY_ON = "conn-failure empty-response junk-response response-timeout 503"
#: The ``retry-on`` keywords HAProxy (2.8+) accepts.
_RETRY_ON_KEYWORDS = {"none", "conn-failure", "empty-response", "junk-response", "response-timeout", "0rtt-rejected",
                      "all-retryable-errors", "401", "403", "404", "408", "425", "429", "500", "501", "502", "503",
                      "504"}
#: ServeConfig field fixed when Serve starts -> the environment variable that carries it.
SERVE_ENV_VARS = {"ingress": HAPROXY_ENV, "throughput_optimized": THROUGHPUT_ENV, "retry_on": RETRY_ON_ENV}
Ingress = Literal["haproxy", "proxy"]
#: Serve deployment option (a ``ray.serve.schema.DeploymentSchema`` field; dots go into nested options) ->
#: the :class:`DeploymentSettings` field it holds. ``user_config``, ``autoscaling_config`` and
#: ``num_replicas`` are :class:`AppArgs` fields of the same names.
_DEPLOYMENT_OPTIONS = {
    "ray_actor_options.num_cpus": "num_cpus",
    "max_ongoing_requests": "max_ongoing_requests",
    "max_queued_requests": "max_queued_requests",
    "max_surge_percent": "max_surge_percent",
    "graceful_shutdown_timeout_s": "graceful_shutdown_timeout_s",
    "health_check_period_s": "health_check_period_s",
    "logging_config.enable_access_log": "access_log",
}
_APP_OPTIONS = ("autoscaling_config", "user_config", "num_replicas")

logger = logging.getLogger(__name__)


def describe_errors(exc: ValidationError) -> str:
    """Each problem of ``exc`` on one line: the field's dotted path, what is wrong and the value given."""
    problems = []
    for e in exc.errors():
        value = repr(e.get("input"))
        value = value if len(value) <= 120 else value[:117] + "..."
        problems.append(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']} (got {value})")
    return "; ".join(problems)


def serve_env(ingress: Ingress, throughput_optimized: bool, retry_on: str = DEFAULT_RETRY_ON) -> dict[str, str]:
    """Environment of Serve's controller (inherited by its HAProxy manager, proxies and replicas) for these
    settings."""
    return {HAPROXY_ENV: "1" if ingress == "haproxy" else "0", THROUGHPUT_ENV: "1" if throughput_optimized else "0",
            RETRY_ON_ENV: retry_on}


def active_serve_settings() -> dict[str, Any]:
    """``ingress``, ``throughput_optimized`` and ``retry_on`` as this process's Serve runs with them (its
    environment; ``conn-failure`` is Serve's own default)."""
    return {"ingress": "haproxy" if os.environ.get(HAPROXY_ENV) == "1" else "proxy",
            "throughput_optimized": os.environ.get(THROUGHPUT_ENV) == "1",
            "retry_on": os.environ.get(RETRY_ON_ENV, "conn-failure")}


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class UserConfig(_Settings):
    """The deployment's ``user_config``: applied to running replicas by ``reconfigure`` without a restart.

    Args:
        max_batch_size: Most requests ``@serve.batch`` coalesces into one model call
            (``set_max_batch_size``). A request may hold many readings; this counts requests.
        batch_wait_timeout_s: Longest a request waits for others to fill its batch
            (``set_batch_wait_timeout_s``). 0 scores whatever is queued at once.
        max_request_rows: Most readings one request may hold; larger requests get 413.
        max_body_bytes: Most bytes of request body a replica reads, whatever the transfer encoding: a larger
            ``Content-Length`` gets 413 at once, a chunked body 413 as soon as it passes the limit, before any
            parsing. The default fits ``max_request_rows`` readings (with history) of about 50 sensors at
            full float64 precision; raise it with either.
        body_timeout_s: Longest a replica waits for a request's whole body: then 408 (503 with ``Retry-After``
            when not one byte arrived, which is how a request Serve handed over without its body looks).
    """

    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_timeout_s: float = Field(default=0.001, ge=0.0, le=10.0)
    max_request_rows: int = Field(default=4096, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    body_timeout_s: float = Field(default=10.0, gt=0.0, le=600.0)

    @classmethod
    def parse(cls, user_config: dict[str, Any] | None) -> "UserConfig":
        """The settings of a deployment's ``user_config`` (None: the defaults), as ``reconfigure`` gets it.

        Raises:
            ValueError: naming the ``user_config`` and each bad field.
        """
        try:
            return cls.model_validate(user_config or {})
        except ValidationError as exc:
            raise ValueError(f"invalid user_config {user_config!r}: {exc}") from None


class AutoscalingSettings(_Settings):
    """The deployment's ``autoscaling_config`` (see ``ray.serve.config.AutoscalingConfig``).

    Args:
        min_replicas: Replicas kept running with no traffic. The default, 2, is what survives a replica's
            death without a failed request (``docs/reliability.md``).
        max_replicas: Upper bound on replicas.
        target_ongoing_requests: Requests in flight per replica the autoscaler aims for.
        upscale_delay_s: Load must stay above target this long before replicas are added.
        downscale_delay_s: Load must stay below target this long before replicas are removed.
        look_back_period_s: Window over which ongoing requests are averaged (keep it above the
            metrics push interval, 10 s unless ``RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S`` is set).
        initial_replicas: Replicas at first deploy (``None``: ``min_replicas``).
    """

    min_replicas: int = Field(default=2, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    target_ongoing_requests: float = Field(default=8.0, gt=0)
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=60.0, ge=0)
    look_back_period_s: float = Field(default=30.0, gt=0)
    initial_replicas: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSettings":
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.initial_replicas is not None and not (
                self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError(f"initial_replicas ({self.initial_replicas}) must lie between min_replicas "
                             f"({self.min_replicas}) and max_replicas ({self.max_replicas})")
        return self


class DeploymentSettings(_Settings):
    """Per-replica resources and Serve deployment options that need a replica restart to change.

    Args:
        num_cpus: CPUs each replica reserves (``ray_actor_options``); fractions let autoscaling
            place several replicas on a small node.
        max_ongoing_requests: Requests a replica accepts at once; keep it >= ``max_batch_size``
            so batches can fill.
        max_queued_requests: Requests queued per caller before 503 (-1: unbounded).
        max_surge_percent: Extra replicas allowed during a rolling update; above 0, old replicas
            keep serving until their replacements are ready (zero-downtime model switch).
        graceful_shutdown_timeout_s: How long a stopping replica may drain in-flight requests.
        health_check_period_s: How often Serve calls the replica's ``check_health``.
        access_log: Log one line per request in the replica logs (Serve's ``enable_access_log``).
    """

    num_cpus: float = Field(default=0.5, ge=0)
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_queued_requests: int = Field(default=-1)
    max_surge_percent: int = Field(default=100, ge=0, le=100)
    graceful_shutdown_timeout_s: float = Field(default=20.0, ge=0)
    health_check_period_s: float = Field(default=10.0, gt=0)
    access_log: bool = True

    @field_validator("max_queued_requests")
    @classmethod
    def _queued(cls, value: int) -> int:
        if value < 1 and value != -1:
            raise ValueError(f"max_queued_requests must be -1 (no limit) or >= 1, got {value}")
        return value


class AppArgs(_Settings):
    """The ``args`` of ``raysys.serve.app:app_builder`` (a serveConfigV2 application's ``args``).

    Args:
        model_uri: The ensemble to serve: a local ensemble directory, ``runs:/RUN_ID/PATH`` or
            ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``. An alias is resolved to its
            version when the application is built, so every replica serves the same version.
        tracking_uri: MLflow tracking URI for ``runs:/`` and ``models:/`` (``None``:
            ``$MLFLOW_TRACKING_URI`` or ./mlruns).
        deployment: Replica resources and deployment options.
        autoscaling_config: Autoscaling of the deployment; ``None`` runs ``num_replicas`` fixed replicas.
        num_replicas: Replica count when ``autoscaling_config`` is ``None``.
        user_config: Batching and request limits, changeable on running replicas.
        intra_op_threads: onnxruntime threads per call in a replica (0: onnxruntime's default, all cores).
        max_models_per_replica: For a fleet (docs/fleet.md#serving): assets' ensembles each scorer replica
            keeps loaded; past it the least recently used is evicted (``@serve.multiplexed``).
    """

    model_uri: str
    tracking_uri: str | None = None
    intra_op_threads: int = Field(default=1, ge=0)
    max_models_per_replica: int = Field(default=16, ge=1)
    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings)
    autoscaling_config: AutoscalingSettings | None = Field(default_factory=AutoscalingSettings)
    num_replicas: int = Field(default=1, ge=1)
    user_config: UserConfig = Field(default_factory=UserConfig)

    @field_validator("model_uri")
    @classmethod
    def _model_uri(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("model_uri must name an ensemble directory, runs:/ or models:/ URI, got ''")
        return value.strip()

    @model_validator(mode="after")
    def _batch_fits(self) -> "AppArgs":
        if self.deployment.max_ongoing_requests < self.user_config.max_batch_size:
            raise ValueError(
                f"deployment.max_ongoing_requests ({self.deployment.max_ongoing_requests}) must be >= "
                f"user_config.max_batch_size ({self.user_config.max_batch_size}), or batches never fill")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AnomalyDetector.options(...)`` (also the deployment's serveConfigV2 entry)."""
        options: dict[str, Any] = {}
        for option, name in _DEPLOYMENT_OPTIONS.items():
            *parents, leaf = option.split(".")
            node = options
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = getattr(self.deployment, name)
        options["user_config"] = self.user_config.model_dump()
        if self.autoscaling_config is None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        return options


class ServeConfig(AppArgs):
    """Everything ``raysys serve`` needs: the application's args plus where Serve listens.

    Args:
        model_uri: See :class:`AppArgs`.
        host: HTTP host of Serve's ingress (``0.0.0.0`` to listen on every interface).
        port: HTTP port of Serve's ingress.
        ingress: What answers on ``host:port``: ``haproxy``, Ray Serve's HAProxy ingress (HAProxy forwards
            each request straight to a replica's own HTTP server; Ray's high-throughput mode), or
            ``proxy``, Serve's Python proxy actor (the request reaches the replica as a Ray call).
            Like host and port, fixed when Serve starts on the cluster; on a cluster whose Serve was
            started elsewhere (KubeRay) it is the cluster's ``RAY_SERVE_ENABLE_HA_PROXY`` setting.
        throughput_optimized: Ray Serve's throughput-optimized request path (``RAY_SERVE_THROUGHPUT_OPTIMIZED``):
            about 30% less replica CPU per request here; replica logs then go to Serve's log files only.
            Fixed when Serve starts, like ``ingress``.
        retry_on: HAProxy's ``retry-on`` for every backend (``RAY_SERVE_HAPROXY_RETRY_ON``; with ``option
            redispatch 1`` a retry goes to another replica): space-separated HAProxy keywords, ``none`` for
            no retries. Fixed when Serve starts, like ``ingress``; ignored by the ``proxy`` ingress.
        app_name: Serve application name.
        route_prefix: Route prefix of the application.
    """

    model_uri: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    ingress: Ingress = "haproxy"
    throughput_optimized: bool = True
    retry_on: str = DEFAULT_RETRY_ON
    app_name: str = APP_NAME
    route_prefix: str = "/"

    @field_validator("model_uri")
    @classmethod
    def _model_uri(cls, value: str) -> str:  # may be given later by --model
        return value.strip()

    @field_validator("retry_on")
    @classmethod
    def _retry_on(cls, value: str) -> str:
        words = value.split()
        unknown = [w for w in words if w not in _RETRY_ON_KEYWORDS]
        if not words or unknown:
            raise ValueError(f"retry_on must be HAProxy retry-on keywords from {sorted(_RETRY_ON_KEYWORDS)}, "
                             f"got {value!r}")
        return " ".join(words)

    @field_validator("route_prefix")
    @classmethod
    def _route_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {value!r}")
        return value

    def app_args(self) -> dict[str, Any]:
        """The ``args`` dict for ``app_builder`` (JSON-serialisable)."""
        if not self.model_uri:
            raise ValueError("no model to serve: give --model (or model_uri in the config file)")
        return AppArgs.model_validate(self.model_dump(include=set(AppArgs.model_fields))).model_dump()


def _options_set(model: BaseModel, prefix: str = "") -> set[str]:
    """Dotted names of the fields set in ``model`` and in its nested models."""
    names = set()
    for name in model.model_fields_set:
        value = getattr(model, name)
        names |= _options_set(value, f"{prefix}{name}.") if isinstance(value, BaseModel) else {prefix + name}
    return names


def _option(model: BaseModel, dotted: str) -> tuple[bool, Any]:
    """``(True, value)`` if the dotted field is set in ``model`` (and its nested models), else ``(False, None)``."""
    node: Any = model
    for part in dotted.split("."):
        if not isinstance(node, BaseModel) or part not in node.model_fields_set:
            return False, None
        node = getattr(node, part)
    return True, node


def _from_serve_config_v2(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """Pull the raysys application out of a Serve config file / serveConfigV2 document.

    The document's structure is validated by Ray's own ``ServeDeploySchema`` (what ``serve deploy`` and
    KubeRay accept); the raysys application's ``args`` and its ``AnomalyDetector`` options become
    :class:`ServeConfig` fields, validated by :func:`load_serve_config`.
    """
    from ray.serve.schema import ServeDeploySchema

    try:
        schema = ServeDeploySchema.model_validate(doc)
    except ValidationError as exc:
        raise ValueError(f"{source}: not a valid Serve config: {describe_errors(exc)}") from None
    apps = schema.applications
    app = next((a for a in apps if a.import_path == IMPORT_PATH), None) or next(
        (a for a in apps if a.name == APP_NAME), None)
    if app is None:
        raise ValueError(f"{source}: no application with import_path {IMPORT_PATH!r} among {len(apps)} applications")
    out: dict[str, Any] = dict(app.args)
    out["app_name"] = app.name if "name" in app.model_fields_set else APP_NAME
    out["route_prefix"] = app.route_prefix if "route_prefix" in app.model_fields_set else "/"
    out.update({k: getattr(schema.http_options, k) for k in ("host", "port")
                if k in schema.http_options.model_fields_set})
    for dep in app.deployments:
        if dep.name != DEPLOYMENT_NAME:
            continue
        deployment = dict(out.get("deployment") or {})
        for option, name in _DEPLOYMENT_OPTIONS.items():
            given, value = _option(dep, option)
            if given:
                deployment[name] = value
        out["deployment"] = deployment
        for key in _APP_OPTIONS:
            if key in dep.model_fields_set:
                value = getattr(dep, key)
                out[key] = value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value
        if "num_replicas" in dep.model_fields_set and "autoscaling_config" not in dep.model_fields_set:
            out["autoscaling_config"] = None  # a fixed replica count, as Serve reads it
        ignored = sorted(_options_set(dep) - {"name", *_DEPLOYMENT_OPTIONS, *_APP_OPTIONS})
        if ignored:
            logger.warning("%s: raysys serve does not apply %s of deployment %s (it applies %s)", source,
                           ", ".join(ignored), DEPLOYMENT_NAME, ", ".join([*_DEPLOYMENT_OPTIONS, *_APP_OPTIONS]))
    return out


def load_serve_config(path: str | os.PathLike | None = None, **overrides: Any) -> ServeConfig:
    """Read a :class:`ServeConfig` from YAML, then apply ``overrides`` (``None`` values are skipped).

    The file is either the flat form (``model_uri``, ``host``, ``port``, ``deployment``,
    ``autoscaling_config``, ``user_config``) or a Ray Serve config / serveConfigV2 document whose
    application imports ``raysys.serve.app:app_builder``. Nested overrides use dotted keys, e.g.
    ``{"autoscaling_config.max_replicas": 8}``.

    Raises:
        ValueError: naming the file and each bad field.
    """
    data: dict[str, Any] = {}
    source = str(path) if path else "serve config"
    if path:
        text = Path(path).read_text()
        doc = yaml.safe_load(text) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{source}: expected a mapping at the top level, got {type(doc).__name__}")
        data = _from_serve_config_v2(doc, source) if "applications" in doc else doc
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):  # None (e.g. autoscaling switched off) or missing
                child = {}
                node[part] = child
            node = child
        node[leaf] = value
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{source}: {describe_errors(exc)}") from None


def to_serve_config_v2(config: ServeConfig) -> dict[str, Any]:
    """The same settings as a Ray Serve config document (``serve deploy`` / KubeRay ``serveConfigV2``),
    checked against Ray's ``ServeDeploySchema``."""
    from ray.serve.schema import ServeDeploySchema

    args = config.app_args()
    options = AppArgs.model_validate(args).deployment_options()
    document = {
        "http_options": {"host": config.host, "port": config.port},
        "applications": [{
            "name": config.app_name,
            "route_prefix": config.route_prefix,
            "import_path": IMPORT_PATH,
            "args": {k: args[k] for k in ("model_uri", "tracking_uri", "intra_op_threads", "max_models_per_replica")
                     if k in args},
            "deployments": [{"name": DEPLOYMENT_NAME, **options}],
        }],
    }
    try:
        ServeDeploySchema.model_validate(document)
    except ValidationError as exc:  # a setting raysys accepts but this Ray version does not
        raise ValueError(f"Ray Serve rejects these settings: {describe_errors(exc)}") from None
    return document
