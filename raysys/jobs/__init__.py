"""Run raysys on a Ray cluster: submit jobs through Ray's Job Submission SDK.

Public names: :func:`submit_job`, :func:`load_runtime_env`, :func:`build_runtime_env`.
The ``raysys submit`` command lives in :mod:`raysys.jobs.cli`; the scripts it
usually submits are ``jobs/*.py`` at the repository root.
"""

from raysys.jobs.submit import build_runtime_env, load_runtime_env, submit_job

__all__ = ["build_runtime_env", "load_runtime_env", "submit_job"]
