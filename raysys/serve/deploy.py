"""Deploy the detector on Ray Serve from Python (what ``raysys serve`` and the pipeline call).

A second :func:`deploy` of the same application is a rolling update: with a new model (or an alias
that now points to a new version) Serve starts replicas of the new version beside the old ones
(``max_surge_percent``), moves traffic once they are ready and lets the old ones finish their
in-flight requests. A change of ``user_config`` alone reconfigures running replicas in place.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from raysys.serve.config import SERVE_ENV_VARS, ServeConfig, serve_env

logger = logging.getLogger(__name__)


class PortInUseError(OSError):
    """Serve's HTTP port is held by another process, so its ingress could not start."""


def port_holder(port: int) -> str:
    """Who listens on TCP ``port`` on this machine: ``pid 123 (haproxy: /usr/bin/haproxy -f ...)``, or why
    that is unknown (psutil sees other users' processes only as root)."""
    import psutil

    try:
        found = [c for c in psutil.net_connections(kind="inet") if c.laddr and c.laddr.port == port and c.pid]
    except (psutil.AccessDenied, OSError) as exc:
        return f"a process psutil cannot name ({exc})"
    found.sort(key=lambda c: c.status != psutil.CONN_LISTEN)
    if not found:
        return "a process this user cannot see"
    pid = found[0].pid
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())[:200] or process.name()
        return f"pid {pid} ({process.name()}: {command})"
    except psutil.Error:
        return f"pid {pid}"


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` naming the holder if ``host:port`` cannot be bound on this machine
    (what Serve's ingress binds when it starts; a port in TIME_WAIT is free, as for HAProxy)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUseError(errno.EADDRINUSE, f"Serve's HTTP port {host}:{port} is already in use by "
                                                   f"{port_holder(port)}; stop it or choose another --port") from None


def _serve_running() -> bool:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return True
    except ValueError:
        return False


def _head_is_here() -> bool:
    """Whether this machine is the Ray cluster's head node (where Serve's ingress starts first)."""
    import ray

    here = ray.util.get_node_ip_address()
    return any(n["Alive"] and "node:__internal_head__" in n.get("Resources", {}) and n["NodeManagerAddress"] == here
               for n in ray.nodes())


def base_url(host: str, port: int, route_prefix: str = "/") -> str:
    """The URL clients on this machine use (a wildcard host is reached through 127.0.0.1)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    """The JSON body of ``GET url``."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_ready(url: str, timeout_s: float = 60.0, expect_version: str | None = None) -> dict[str, Any]:
    """Poll ``url``/readyz until it answers 200 (with ``expect_version``, if given); returns its body.

    Raises:
        TimeoutError: naming the last answer seen.
    """
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            body = get_json(f"{url}/readyz")
            if expect_version is None or body.get("version") == expect_version:
                return body
            last = f"version {body.get('version')!r}, waiting for {expect_version!r}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url}/readyz not ready after {timeout_s:g}s: {last}")


def deploy(model_uri: str | None = None, config: ServeConfig | None = None, host: str | None = None,
           port: int | None = None, tracking_uri: str | None = None, timeout_s: float = 120.0) -> str:
    """Deploy (or update) the ``raysys`` Serve application; returns its base URL once it answers.

    Connects to Ray first if needed (``$RAY_ADDRESS``, else a local cluster owned by this process).

    Args:
        model_uri: Ensemble directory, ``runs:/`` or ``models:/NAME@ALIAS`` (overrides ``config``).
        config: Everything else (defaults: :class:`ServeConfig`).
        host: HTTP host of Serve's ingress (overrides ``config``).
        port: HTTP port of Serve's ingress (overrides ``config``).
        tracking_uri: MLflow tracking URI (overrides ``config``).
        timeout_s: Longest wait for the application to answer ``/readyz``.

    Serve's HTTP host, port and ingress are fixed when Serve starts on the cluster; a later deploy with
    other values keeps the running ones (Serve logs a warning; so does this function for the ingress).

    Raises:
        PortInUseError: Serve is not running yet and another process on this (head) machine holds ``port``.
    """
    from ray import serve

    from raysys.cluster import init_ray
    from raysys.serve.app import build_app

    config = (config or ServeConfig()).model_copy(deep=True)
    updates = {"model_uri": model_uri, "host": host, "port": port, "tracking_uri": tracking_uri}
    config = ServeConfig.model_validate({**config.model_dump(), **{k: v for k, v in updates.items() if v is not None}})
    args = config.app_args()
    init_ray()
    if not _serve_running() and _head_is_here():
        check_port_free(config.host, config.port)  # not HAProxy's "Address already in use" inside a Ray traceback
    # The controller's env reaches the HAProxy manager, proxies and replicas it starts; ignored if Serve already runs.
    env = serve_env(config.ingress, config.throughput_optimized, config.retry_on)
    serve.start(http_options={"host": config.host, "port": config.port},
                controller_options={"runtime_env": {"env_vars": env}})
    app, source = build_app(args)
    version = source.version
    started = time.monotonic()
    serve.run(app, name=config.app_name, route_prefix=config.route_prefix, blocking=False)
    url = base_url(config.host, config.port, config.route_prefix)
    wait_ready(url, max(1.0, timeout_s - (time.monotonic() - started)), expect_version=version)
    serving = get_json(f"{url}/v1/model")["serving"]
    for key, variable in SERVE_ENV_VARS.items():
        if serving[key] != getattr(config, key):
            logger.warning("Asked for %s=%s, but Serve on this cluster already runs with %s=%s (set when Serve "
                           "starts: %s on the cluster, or `serve shutdown` and deploy again)", key,
                           getattr(config, key), key, serving[key], variable)
    logger.info("Serving %s (version %s) at %s through the %s ingress", config.model_uri, version, url,
                serving["ingress"])
    return url


def block_until_interrupted() -> None:
    """Return when this process gets SIGINT (Ctrl-C) or SIGTERM; call from the main thread."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def shutdown(app_name: str | None = None, stop_serve: bool = True) -> None:
    """Delete the application ``app_name`` (default ``raysys``); with ``stop_serve``, stop Serve too
    when no other application is left. A no-op if Ray or Serve is not running."""
    import ray
    from ray import serve

    from raysys.serve.config import APP_NAME

    if not ray.is_initialized():
        return
    try:
        applications = serve.status().applications
    except Exception:  # Serve not started on this cluster
        return
    name = app_name or APP_NAME
    if name in applications:
        serve.delete(name)
    if stop_serve and not (set(applications) - {name}):
        serve.shutdown()
