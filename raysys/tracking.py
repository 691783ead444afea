"""MLflow plumbing shared by every stage: where the store is, experiments, runs."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

DEFAULT_STORE = Path("mlruns")
DEFAULT_EXPERIMENT = "raysys"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded default: SQLite under ./mlruns.

    The embedded default is an absolute path so Ray workers (other processes) resolve it alike.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a local SQLite store; None lets a tracking server decide."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return None


def get_experiment_id(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """The id of experiment ``name``, created if missing."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(tracking_uri))
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def use_tracking(uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point the ``mlflow`` fluent API at the store and experiment; returns the tracking URI."""
    uri = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(experiment_id=get_experiment_id(uri, experiment))
    return uri
