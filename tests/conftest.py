"""Shared fixtures: one real local Ray cluster per test session, small generated datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster with 2 CPUs, started once for the whole session."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False,
             log_to_driver=True, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parents[1])}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A small generated water-treatment dataset (3,000 rows)."""
    from raysys.data import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("data") / "small", rows=3000, seed=7)


@pytest.fixture(scope="session")
def default_dataset(tmp_path_factory) -> Path:
    """The default generated dataset (``raysys generate`` with no options)."""
    from raysys.data import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("data") / "default")


@pytest.fixture()
def mlflow_uri(tmp_path) -> str:
    """A fresh local MLflow store (SQLite backend, artifacts beside it)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
