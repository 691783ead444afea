"""Shared fixtures: one real local Ray cluster per test session, small generated datasets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(extra_env: dict[str, str] | None = None) -> int:
    """(Re)start Ray Serve with the HAProxy ingress on 127.0.0.1 at a free port, HAProxy's stats, metrics and
    fallback-proxy ports free too (other Serve instances may run on this machine); returns the HTTP port.
    Stops a Serve an earlier module left, which would keep its own port."""
    from ray import serve

    from raysys.serve.config import serve_env

    port = free_port()
    serve.shutdown()
    haproxy_ports = {name: str(free_port()) for name in (
        "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT")}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options={
        "runtime_env": {"env_vars": {**(extra_env or {}), **haproxy_ports, **serve_env("haproxy", True)}}})
    return port


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


@pytest.fixture(scope="session")
def assert_same_top_sensors():
    """A check that two ``top_sensors`` answers agree given ``contributions`` (rows x sensors) and the
    sensor names: the same sensors in the same order, except where contributions within ``atol`` of
    each other (or of 0) may swap, as float32 scoring of differently composed batches can make them."""
    import numpy as np

    def check(got, expected, contributions, sensors, atol=1e-6):
        assert len(got) == len(expected)
        index = {s: j for j, s in enumerate(sensors)}
        for row, a, b in zip(np.asarray(contributions), got, expected):
            a, b = [s for s in a if row[index[s]] > atol], [s for s in b if row[index[s]] > atol]
            np.testing.assert_allclose([row[index[s]] for s in a], [row[index[s]] for s in b], rtol=0, atol=atol)

    return check
