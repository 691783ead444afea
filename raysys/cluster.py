"""Connecting to Ray: a running cluster when one is named, else a local one started here.

Quiet unless verbose: Ray's own log records go to files in the Ray session's log directory, the
console keeps what raysys prints (in the driver and in Ray workers), Tune's progress table, and
errors. ``raysys --verbose`` (or ``RAYSYS_VERBOSE=1``) shows Ray's logs as Ray does by default.
"""

from __future__ import annotations

import logging
import os

from raysys.interrupts import sigterm_as_ctrl_c

#: Environment variable that, set to 1, keeps Ray's default console logging (``raysys --verbose`` sets it).
VERBOSE_ENV = "RAYSYS_VERBOSE"


def is_verbose() -> bool:
    """Whether Ray's own logs should reach the console (``$RAYSYS_VERBOSE`` set and not 0)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def train_log_level() -> str:
    """Level for ``ray.train.RunConfig(logging_config=ray.train.LoggingConfig(log_level=...))``: Ray Train's
    INFO lines (worker group started, checkpoint created, result reported) only when verbose."""
    return "INFO" if is_verbose() else "WARNING"


def ray_logs_to_files() -> None:
    """Ray ``worker_process_setup_hook``: in this worker process, records of the ``ray`` loggers below
    ERROR go to ``logs/raysys/ray-PID.log`` in the Ray session directory rather than to the worker's
    stderr, which Ray streams to the driver. ``print`` output and errors still reach the console.
    (Ray Train configures its ``ray.train`` logger itself, to files in ``logs/train``.)"""
    import ray

    session_dir = ray._private.worker._global_node.get_session_dir_path()  # as Ray Train's own log files do
    log_dir = os.path.join(session_dir, "logs", "raysys")
    os.makedirs(log_dir, exist_ok=True)
    ray_logger = logging.getLogger("ray")
    for handler in ray_logger.handlers:
        handler.setLevel(max(handler.level, logging.ERROR))
    to_file = logging.FileHandler(os.path.join(log_dir, f"ray-{os.getpid()}.log"))
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger.addHandler(to_file)


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool | None = None) -> None:
    """Connect to ``address`` (or ``$RAY_ADDRESS``, set by ``ray job submit``); otherwise start a
    local cluster owned by this process. A no-op when Ray is already initialised.

    Args:
        address: Ray cluster address; None for ``$RAY_ADDRESS``, else a local cluster.
        num_cpus: CPUs of a local cluster (default: all).
        verbose: show Ray's own logs on the console; None reads ``$RAYSYS_VERBOSE``.
    """
    import ray

    if ray.is_initialized():
        return
    if verbose is None:
        verbose = is_verbose()
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs = {"num_cpus": num_cpus, "include_dashboard": False} if address == "local" else {}
    if address == "local":
        # One node started here is never drained: Ray Train's preemption watcher actor has nothing to watch
        # (and its creation logs a core_worker.cc error about its restartable constructor arguments).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if not verbose:
        kwargs.update(logging_level=logging.WARNING,
                      runtime_env={"worker_process_setup_hook": f"{__name__}.{ray_logs_to_files.__name__}"})
    ray.init(address=address, **kwargs)
    sigterm_as_ctrl_c()  # after ray.init, whose own SIGTERM handler exits at once
