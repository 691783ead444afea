"""Submit a job to a Ray cluster through Ray's Job Submission SDK and follow it.

This is what ``raysys submit`` runs: the same as ``ray job submit`` (submit an
entrypoint with a ``runtime_env``, stream its logs, wait for it to finish), but
callable from Python and with the job's exit status as the return value::

    from raysys.jobs import submit_job

    code = submit_job(
        "http://127.0.0.1:8265",
        "python jobs/train.py --data /mnt/shared/data --model ae --num-workers 2",
        runtime_env={"working_dir": ".", "env_vars": {"MLFLOW_TRACKING_URI": "http://..."}},
    )
    assert code == 0
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

logger = logging.getLogger(__name__)

#: Exit code of a job that was stopped (``ray job stop``) before it finished.
EXIT_STOPPED = 130
#: Exit code when ``timeout_s`` passes before the job reaches a terminal state.
EXIT_TIMEOUT = 124
#: Exit code of a job that failed without a driver exit code (e.g. runtime_env setup).
EXIT_FAILED = 1

#: Paths never uploaded with a ``working_dir`` (Ray also honours ``.gitignore``).
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".venv",
    "**/__pycache__",
    "*.egg-info",
    "mlruns",
    "mlartifacts",
    "ray_results",
    "runs",
    "*.db",
)


def load_runtime_env(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``runtime_env`` YAML file (the format of ``ray job submit --runtime-env``).

    Args:
        path: YAML file whose top level is a mapping, e.g. ``jobs/runtime_env.yaml``.

    Returns:
        The runtime environment as a dict (empty for an empty file).

    Raises:
        ValueError: if the file's top level is not a mapping.
    """
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"runtime_env file {os.fspath(path)!r} must hold a mapping, got {type(data).__name__}"
        )
    return data


def build_runtime_env(
    runtime_env: Mapping[str, Any] | None = None,
    *,
    working_dir: str | os.PathLike[str] | None = None,
    env_vars: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Merge command-line overrides into a ``runtime_env``, like ``ray job submit`` does.

    Args:
        runtime_env: Base runtime environment (e.g. from :func:`load_runtime_env`).
        working_dir: Overrides ``runtime_env["working_dir"]``; a local directory is
            zipped and uploaded by the SDK. When a local ``working_dir`` is set and
            ``excludes`` is not, :data:`DEFAULT_EXCLUDES` is used.
        env_vars: Added to (and overriding) ``runtime_env["env_vars"]``.

    Returns:
        The merged runtime environment, or ``None`` when it is empty.

    Raises:
        ValueError: if a local ``working_dir`` does not exist.
    """
    merged: dict[str, Any] = dict(runtime_env or {})
    if working_dir is not None:
        merged["working_dir"] = os.fspath(working_dir)
    local_dir = merged.get("working_dir")
    if isinstance(local_dir, str) and "://" not in local_dir:
        if not Path(local_dir).is_dir():
            raise ValueError(f"working_dir {local_dir!r} is not a directory")
        merged.setdefault("excludes", list(DEFAULT_EXCLUDES))
    if env_vars:
        merged["env_vars"] = {**merged.get("env_vars", {}), **env_vars}
    return merged or None


def exit_code_for(status: str, driver_exit_code: int | None = None) -> int:
    """Map a terminal job status to a process exit code.

    ``SUCCEEDED`` is 0; ``FAILED`` is the driver's own exit code when Ray reports a
    non-zero one (so ``argparse`` errors give 2), else 1; ``STOPPED`` is 130.

    Raises:
        ValueError: if ``status`` is not a terminal status.
    """
    status = str(status)
    if status == "SUCCEEDED":
        return 0
    if status == "FAILED":
        return driver_exit_code if driver_exit_code else EXIT_FAILED
    if status == "STOPPED":
        return EXIT_STOPPED
    raise ValueError(f"job status {status!r} is not terminal (SUCCEEDED, FAILED or STOPPED)")


def wait_for_job(
    client: Any,
    job_id: str,
    *,
    timeout_s: float | None = None,
    poll_interval_s: float = 1.0,
) -> str | None:
    """Poll ``client.get_job_status`` until the job is terminal.

    Returns:
        The terminal status as a string, or ``None`` if ``timeout_s`` passed first.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id))
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(poll_interval_s)


async def _stream_logs(client: Any, job_id: str, out: TextIO, timeout_s: float | None) -> None:
    async def pump() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    await asyncio.wait_for(pump(), timeout_s)


def follow_job(
    client: Any,
    job_id: str,
    *,
    out: TextIO | None = None,
    timeout_s: float | None = None,
    poll_interval_s: float = 1.0,
) -> int:
    """Stream a submitted job's logs to ``out`` until it finishes; return its exit code.

    Logs are streamed with ``tail_job_logs`` (a websocket). If streaming is not
    possible (e.g. a proxy in between drops websockets), the job is polled instead and
    its whole log is printed once it is done.
    """
    out = out if out is not None else sys.stdout
    start = time.monotonic()
    streamed = False
    try:
        asyncio.run(_stream_logs(client, job_id, out, timeout_s))
        streamed = True
    except TimeoutError:
        logger.error("Job %s did not finish within %ss; it keeps running.", job_id, timeout_s)
        return EXIT_TIMEOUT
    except Exception as exc:  # noqa: BLE001 - fall back to polling, and say why
        logger.warning("Streaming logs of %s failed (%s); polling instead.", job_id, exc)
    remaining = None if timeout_s is None else max(0.0, timeout_s - (time.monotonic() - start))
    status = wait_for_job(client, job_id, timeout_s=remaining, poll_interval_s=poll_interval_s)
    if status is None:
        logger.error("Job %s did not finish within %ss; it keeps running.", job_id, timeout_s)
        return EXIT_TIMEOUT
    if not streamed:
        out.write(client.get_job_logs(job_id))
        out.flush()
    info = client.get_job_info(job_id)
    code = exit_code_for(status, getattr(info, "driver_exit_code", None))
    message = getattr(info, "message", None) or ""
    logger.info("Job %s finished %s (exit code %d). %s", job_id, status, code, message)
    return code


def submit_job(
    address: str,
    entrypoint: str,
    runtime_env: dict[str, Any] | None = None,
    follow: bool = True,
    *,
    submission_id: str | None = None,
    metadata: dict[str, str] | None = None,
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
    timeout_s: float | None = None,
    poll_interval_s: float = 1.0,
    out: TextIO | None = None,
    client: Any = None,
) -> int:
    """Submit ``entrypoint`` as a Ray job and (by default) follow it to the end.

    Args:
        address: Ray dashboard address, e.g. ``http://127.0.0.1:8265``.
        entrypoint: Shell command run on the cluster, e.g.
            ``python jobs/train.py --data DIR --model ae``.
        runtime_env: Ray ``runtime_env`` (``working_dir``, ``pip``, ``env_vars``...).
        follow: Stream the job's logs and wait for it; when false, return 0 as
            soon as the job is accepted.
        submission_id: Job id to use instead of a generated one.
        metadata: Key/value labels stored with the job.
        entrypoint_num_cpus: CPUs reserved for the driver (default 0).
        entrypoint_num_gpus: GPUs reserved for the driver (default 0).
        timeout_s: Stop waiting after this many seconds (the job keeps running) and
            return :data:`EXIT_TIMEOUT`.
        poll_interval_s: Seconds between status polls.
        out: Where logs go (default ``sys.stdout``).
        client: A ``JobSubmissionClient`` to use instead of one for ``address``.

    Returns:
        The job's exit code: 0 if it SUCCEEDED, the driver's exit code (or 1) if it
        FAILED, 130 if it was STOPPED, 124 on timeout; 0 when ``follow`` is false.
    """
    if not entrypoint.strip():
        raise ValueError("entrypoint is empty: give the command to run, e.g. 'python jobs/train.py'")
    if client is None:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(address)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        submission_id=submission_id,
        metadata=metadata,
        entrypoint_num_cpus=entrypoint_num_cpus,
        entrypoint_num_gpus=entrypoint_num_gpus,
    )
    logger.info("Submitted job %s to %s: %s", job_id, address, entrypoint)
    if not follow:
        print(
            f"Job '{job_id}' submitted. Follow it with: ray job logs --address {address} -f {job_id}",
            file=out if out is not None else sys.stdout,
        )
        return 0
    return follow_job(client, job_id, out=out, timeout_s=timeout_s, poll_interval_s=poll_interval_s)
