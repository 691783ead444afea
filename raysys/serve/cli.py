"""``raysys serve``: the champion ensemble as an autoscaling HTTP endpoint on Ray Serve.

Wired into the main CLI by ``raysys.cli`` with :func:`add_parsers`::

    raysys serve --model models:/raysys-detector@champion --config serve.yaml --port 8000

Running it again with a new model (or after the alias moved) is a rolling update that fails no
in-flight request. SIGTERM (what Kubernetes sends on every rollout) stops it like Ctrl-C: the application
drains and is deleted, the local Ray cluster it started is stopped, and it exits 0. Settings come from
``--config`` (YAML), then flags; ``--print-config`` writes the
result as a Serve config / KubeRay ``serveConfigV2`` document instead of deploying.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import get_args

import yaml

from raysys.serve.config import Ingress, ServeConfig, load_serve_config, to_serve_config_v2

logger = logging.getLogger(__name__)

#: Longest wait, after Ctrl-C, for the application to drain and be deleted.
STOP_TIMEOUT_S = 90.0

#: The settings a flag not given keeps: its help names them, and they live only in ``raysys.serve.config``.
_DEFAULTS = ServeConfig()

#: Flag destination to the dotted ServeConfig field it overrides.
_OVERRIDES = {
    "model": "model_uri",
    "mlflow_uri": "tracking_uri",
    "host": "host",
    "port": "port",
    "ingress": "ingress",
    "throughput_optimized": "throughput_optimized",
    "retry_on": "retry_on",
    "min_replicas": "autoscaling_config.min_replicas",
    "max_replicas": "autoscaling_config.max_replicas",
    "target_ongoing_requests": "autoscaling_config.target_ongoing_requests",
    "upscale_delay_s": "autoscaling_config.upscale_delay_s",
    "downscale_delay_s": "autoscaling_config.downscale_delay_s",
    "max_batch_size": "user_config.max_batch_size",
    "batch_wait_timeout_s": "user_config.batch_wait_timeout_s",
    "max_request_rows": "user_config.max_request_rows",
    "num_cpus": "deployment.num_cpus",
    "max_ongoing_requests": "deployment.max_ongoing_requests",
    "max_models_per_replica": "max_models_per_replica",
}


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` of ``--config`` with the flags given applied on top."""
    overrides = {field: getattr(args, dest, None) for dest, field in _OVERRIDES.items()}
    if getattr(args, "num_replicas", None) is not None:  # a fixed replica count switches autoscaling off
        overrides["num_replicas"] = args.num_replicas
    config = load_serve_config(args.config, **overrides)
    if getattr(args, "num_replicas", None) is not None:
        config.autoscaling_config = None
    return config


def _bounded(fn, timeout_s: float) -> bool:
    """Run ``fn`` in a daemon thread for at most ``timeout_s``; False if it did not finish (e.g. the local
    Ray processes, which share this process group, were stopped by the same signal)."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(timeout_s)


def _stop(config: ServeConfig, stop_ray: bool) -> None:
    """Delete the application once its in-flight requests are answered, then stop the local Ray cluster
    this process started (``stop_ray``)."""
    import ray

    from raysys.serve.deploy import shutdown

    # Behind HAProxy a stopping replica first leaves its rotation (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S,
    # 30 s by default), then finishes its in-flight requests.
    print(f"raysys serve: stopping the {config.app_name!r} application once in-flight requests are answered "
          f"(up to {STOP_TIMEOUT_S:g} s)", flush=True)

    def stop() -> None:
        shutdown(config.app_name)
        if stop_ray:
            ray.shutdown()

    if not _bounded(stop, timeout_s=STOP_TIMEOUT_S):
        logger.warning("Ray did not answer within %gs; exiting without deleting the %r application",
                       STOP_TIMEOUT_S, config.app_name)


def handler(args: argparse.Namespace) -> int:
    """Handler of ``raysys serve``; returns the process exit code (0 also after Ctrl-C or SIGTERM, 1 when
    Serve's port is held by another process)."""
    from raysys.serve.deploy import PortInUseError, block_until_interrupted, deploy

    config = config_from_args(args)
    if args.print_config:
        config.app_args()  # fail on a missing model like a deploy would
        yaml.safe_dump(to_serve_config_v2(config), sys.stdout, sort_keys=False)
        return 0
    config.app_args()  # a missing or bad model fails before Ray starts
    address = args.address or os.environ.get("RAY_ADDRESS")
    # A local cluster started here lives only as long as this process: keep serving until stopped.
    blocking = args.blocking if args.blocking is not None else not address
    from raysys.cluster import init_ray

    init_ray(address)
    # After ray.init, whose core worker installs a handler that dumps a stack and dies on SIGTERM: from here
    # SIGTERM is Ctrl-C (KeyboardInterrupt while deploying; block_until_interrupted's own handler after).
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        try:
            url = deploy(config=config)
        except PortInUseError as exc:
            print(f"raysys serve: error: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"raysys serve: {config.model_uri} at {url} (POST {url}/v1/predict, GET {url}/v1/model)", flush=True)
        if not blocking:
            return 0
        print("raysys serve: serving until Ctrl-C / SIGTERM", flush=True)
        block_until_interrupted()
    except KeyboardInterrupt:
        print("raysys serve: interrupted", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _stop(config, stop_ray=not address)
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``subparsers`` (from ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "serve", help="serve the ensemble over HTTP with Ray Serve (autoscaling, dynamic batching)",
        description="Deploy the ensemble as the Ray Serve application 'raysys' (deployment AnomalyDetector): "
                    "POST /v1/predict, GET /v1/model, /healthz, /readyz. A fleet (a `raysys fleet train` directory "
                    "or models:/raysys-fleet@champion) gets the fleet endpoint: POST /v1/assets/ASSET/predict "
                    "(docs/fleet.md). Flags override --config.")
    _scale, _batch, _replica = _DEFAULTS.autoscaling_config, _DEFAULTS.user_config, _DEFAULTS.deployment
    p.add_argument("--model", metavar="URI",
                   help="ensemble directory, runs:/RUN_ID/PATH or models:/NAME@ALIAS, "
                        "e.g. models:/raysys-detector@champion, or a fleet: models:/raysys-fleet@champion "
                        "(required here or in --config)")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="serve settings: raysys's flat form or a Serve config / serveConfigV2 document")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    http = p.add_argument_group("HTTP (fixed when Serve first starts on the cluster)")
    http.add_argument("--host", help=f"ingress host (default {_DEFAULTS.host}; 0.0.0.0 for every interface)")
    http.add_argument("--port", type=int, help=f"ingress port (default {_DEFAULTS.port})")
    http.add_argument("--ingress", choices=get_args(Ingress),
                      help="haproxy: Ray Serve's HAProxy ingress, straight to the replicas; proxy: Serve's Python "
                           f"proxy actor (default {_DEFAULTS.ingress})")
    http.add_argument("--throughput-optimized", action=argparse.BooleanOptionalAction, default=None,
                      help="Ray Serve's throughput-optimized request path (default "
                           f"{'on' if _DEFAULTS.throughput_optimized else 'off'}; replica logs then go to "
                           "Serve's log files only)")
    http.add_argument("--retry-on", metavar="KEYWORDS",
                      help="HAProxy's retry-on: when the ingress retries a request on another replica, space-separated "
                           f"HAProxy keywords, 'none' for never (default {_DEFAULTS.retry_on!r})")
    scale = p.add_argument_group("autoscaling (the deployment's autoscaling_config)")
    scale.add_argument("--min-replicas", type=int,
                       help=f"replicas kept with no traffic (default {_scale.min_replicas})")
    scale.add_argument("--max-replicas", type=int, help=f"upper bound on replicas (default {_scale.max_replicas})")
    scale.add_argument("--target-ongoing-requests", type=float,
                       help="in-flight requests per replica the autoscaler aims for "
                            f"(default {_scale.target_ongoing_requests:g})")
    scale.add_argument("--upscale-delay-s", type=float, help=f"default {_scale.upscale_delay_s:g}")
    scale.add_argument("--downscale-delay-s", type=float, help=f"default {_scale.downscale_delay_s:g}")
    scale.add_argument("--num-replicas", type=int, help="a fixed replica count instead of autoscaling")
    batch = p.add_argument_group("batching and limits (the deployment's user_config)")
    batch.add_argument("--max-batch-size", type=int,
                       help=f"requests per model call (default {_batch.max_batch_size})")
    batch.add_argument("--batch-wait-timeout-s", type=float,
                       help=f"longest wait for a batch to fill (default {_batch.batch_wait_timeout_s:g})")
    batch.add_argument("--max-request-rows", type=int,
                       help=f"most readings per request, else 413 (default {_batch.max_request_rows})")
    rep = p.add_argument_group("replicas")
    rep.add_argument("--num-cpus", type=float, help=f"CPUs reserved per replica (default {_replica.num_cpus:g})")
    rep.add_argument("--max-ongoing-requests", type=int,
                     help=f"requests per replica at once (default {_replica.max_ongoing_requests})")
    rep.add_argument("--max-models-per-replica", type=int,
                     help=f"a fleet's asset models each replica keeps loaded, least recently used evicted "
                          f"(default {_DEFAULTS.max_models_per_replica})")
    p.add_argument("--blocking", action=argparse.BooleanOptionalAction, default=None,
                   help="keep running until Ctrl-C, then delete the app (default: only when this process "
                        "started a local Ray cluster, which would otherwise end with it)")
    p.add_argument("--print-config", action="store_true",
                   help="print the settings as a Serve config (serveConfigV2) YAML document and exit")
    p.set_defaults(func=handler)
    return p
