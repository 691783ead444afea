"""``raysys submit``: submit a job to a Ray cluster, stream its logs, return its status.

Wired into the main CLI by ``raysys.cli`` with :func:`add_parsers`::

    raysys submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml \\
        --working-dir . -- python jobs/train.py --data /mnt/shared/data --model ae
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from typing import Any

from raysys.jobs.submit import build_runtime_env, load_runtime_env, submit_job

logger = logging.getLogger(__name__)

#: Used when neither ``--address`` nor ``RAY_API_SERVER_ADDRESS`` / ``RAY_ADDRESS`` is set.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``submit`` subcommand to ``subparsers`` (from ``add_subparsers()``)."""
    parser = subparsers.add_parser(
        "submit",
        help="submit a job to a Ray cluster and follow its logs",
        description=(
            "Submit ENTRYPOINT (everything after '--') through Ray's Job Submission SDK, "
            "stream its logs and exit with the job's status: 0 if it SUCCEEDED, the "
            "driver's exit code (or 1) if it FAILED, 130 if it was STOPPED."
        ),
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS")
        or os.environ.get("RAY_ADDRESS", DEFAULT_ADDRESS),
        help="Ray dashboard address (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS or %(default)s)",
    )
    parser.add_argument(
        "--runtime-env",
        metavar="FILE.yaml",
        help="runtime_env YAML file, e.g. jobs/runtime_env.yaml",
    )
    parser.add_argument(
        "--working-dir",
        metavar="DIR",
        help="local directory (or remote URI) to upload as the job's working_dir",
    )
    parser.add_argument(
        "--env",
        metavar="KEY=VALUE",
        type=_env_pair,
        action="append",
        default=[],
        help="environment variable for the job, e.g. MLFLOW_TRACKING_URI=http://mlflow:5000 "
        "(repeatable; overrides the runtime_env file)",
    )
    parser.add_argument("--submission-id", help="job id to use instead of a generated one")
    parser.add_argument(
        "--entrypoint-num-cpus", type=float, help="CPUs reserved for the driver (default 0)"
    )
    parser.add_argument(
        "--entrypoint-num-gpus", type=float, help="GPUs reserved for the driver (default 0)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop waiting after SECONDS (the job keeps running) and exit 124",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return as soon as the job is accepted instead of following it",
    )
    parser.add_argument(
        "entrypoint",
        nargs=argparse.REMAINDER,
        help="command to run on the cluster, after '--', e.g. -- python jobs/train.py --model ae",
    )
    parser.set_defaults(func=run)
    return parser


def entrypoint_from_args(words: list[str]) -> str:
    """Join the words after ``--`` into one shell command (one word is taken as is)."""
    if words and words[0] == "--":
        words = words[1:]
    if len(words) == 1:
        return words[0]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Handler of ``raysys submit``; returns the process exit code."""
    entrypoint = entrypoint_from_args(list(args.entrypoint))
    if not entrypoint.strip():
        raise SystemExit("raysys submit: give the command to run after '--'")
    base = load_runtime_env(args.runtime_env) if args.runtime_env else None
    runtime_env = build_runtime_env(base, working_dir=args.working_dir, env_vars=dict(args.env))
    try:
        return submit_job(
            args.address,
            entrypoint,
            runtime_env,
            follow=not args.no_wait,
            submission_id=args.submission_id,
            entrypoint_num_cpus=args.entrypoint_num_cpus,
            entrypoint_num_gpus=args.entrypoint_num_gpus,
            timeout_s=args.timeout,
        )
    except KeyboardInterrupt:
        logger.warning("Stopped following; the job keeps running (stop it with `ray job stop`).")
        return 130
