"""Log an ensemble to MLflow, and register it (moving the ``champion`` alias) only if its gates pass.

Every call logs one run (``ensemble``) with the test metrics of the ensemble and of each member alone,
recall per anomaly type, latency, the gate report and the plots. Only when every gate passes is the
ensemble logged as a pyfunc model (artifact ``model``; the ensemble directory is inside it at
``artifacts/ensemble``), registered as a new version of ``name`` and given the alias ``champion``.
The version that held ``champion`` before gets the alias ``previous``, and stays loadable.
:func:`register_directory` registers an ensemble that needs no gate report (``raysys recalibrate``'s)
the same way.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import onnxruntime
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from raysys.ensemble.gates import GateReport
from raysys.ensemble.runtime import MEMBER_COLUMN
from raysys.layout import ENSEMBLE_MODEL_ARTIFACT, EVALUATION_DIR, GATE_REPORT
from raysys.evaluation import flat_metrics
from raysys.tracking import DEFAULT_EXPERIMENT, use_tracking

if TYPE_CHECKING:  # building needs torch; registering does not
    from raysys.ensemble.build import EnsembleBuild

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "raysys-detector"
CHAMPION = "champion"
PREVIOUS = "previous"
MODEL_ARTIFACT = "model"
#: The pyfunc wrapper, logged as a model from code.
PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")


@dataclass
class Registration:
    """What :func:`register_ensemble` logged.

    Args:
        run_id: The MLflow run holding metrics, plots and the gate report.
        name: Registered model name.
        version: The new model version, or None when a gate failed (nothing registered).
        model_uri: ``models:/NAME/VERSION``, or None when nothing was registered.
    """

    run_id: str
    name: str
    version: str | None
    model_uri: str | None


def signature(spec: dict[str, Any]) -> ModelSignature:
    """Sensor columns in (doubles; other columns are ignored), scores and flags out."""
    outputs = [ColSpec("double", "score"), ColSpec("boolean", "is_anomaly")]
    outputs += [ColSpec("double", MEMBER_COLUMN.format(name=m["name"])) for m in spec["members"]]
    return ModelSignature(Schema([ColSpec("double", s) for s in spec["sensors"]]), Schema(outputs))


def pip_requirements() -> list[str]:
    """What the pyfunc wrapper imports besides raysys itself (pinned to this environment)."""
    return [f"mlflow=={mlflow.__version__}", f"onnxruntime=={onnxruntime.__version__}",
            f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


def run_metrics(build: EnsembleBuild) -> dict[str, float]:
    """Flat MLflow metrics: ``test_<metric>`` for the ensemble, ``<member>_test_<metric>``, latency, parity."""
    metrics = flat_metrics(build.ensemble_metrics, "test_")
    for name, member in build.member_metrics.items():
        metrics.update(flat_metrics(member, f"{name}_test_"))
    metrics.update(flat_metrics(build.latency_ms, "latency_ms_"))
    metrics.update(flat_metrics({Path(file).stem: info["parity_max_rel_error"]
                                 for file, info in build.spec["files"].items()}, "parity_"))
    return metrics


def promote_version(client: MlflowClient, name: str, version: str) -> None:
    """Point ``champion`` at ``version``; the version it left keeps the alias ``previous``."""
    try:
        old = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        old = None
    if old is not None and old != version:
        client.set_registered_model_alias(name, PREVIOUS, old)
    client.set_registered_model_alias(name, CHAMPION, version)


def log_model(directory: str | os.PathLike, spec: dict[str, Any], example: pd.DataFrame, name: str) -> str:
    """In the active run, log the ensemble ``directory`` as the pyfunc model and register it as a new
    version of ``name``; returns the version (aliases untouched: see :func:`promote_version`)."""
    with tempfile.TemporaryDirectory() as tmp:
        # MLflow keeps an artifact directory's own name: stage it as artifacts/ensemble
        staged = shutil.copytree(directory, Path(tmp) / ENSEMBLE_MODEL_ARTIFACT)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT, python_model=str(PYFUNC_CODE), artifacts={ENSEMBLE_MODEL_ARTIFACT: str(staged)},
            signature=signature(spec), input_example=example, pip_requirements=pip_requirements(),
            registered_model_name=name)
    return str(info.registered_model_version)


def register_ensemble(build: EnsembleBuild, report: GateReport, name: str = DEFAULT_MODEL_NAME,
                      tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                      evaluation_dir: str | os.PathLike | None = None, parent_run_id: str | None = None
                      ) -> Registration:
    """Log ``build``'s run; if ``report`` passed, register the ensemble as ``name`` and make it ``champion``.

    Args:
        build: The built and evaluated ensemble.
        report: Its quality gates; a failure logs the run and registers nothing.
        name: Registered model name.
        tracking_uri: MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI`` or ./mlruns).
        experiment: MLflow experiment of the run.
        evaluation_dir: Folder of metrics and plots to log with the run (from ``write_evaluation``).
        parent_run_id: Log the run as a child of this (active) run, e.g. the pipeline's.
    """
    uri = use_tracking(tracking_uri, experiment)
    with mlflow.start_run(run_name="ensemble", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.set_tags({"raysys.stage": "ensemble", "raysys.gates": "passed" if report.passed else "failed"})
        mlflow.log_params({"members": ",".join(m["name"] for m in build.spec["members"]),
                           "weights": json.dumps({m["name"]: m["weight"] for m in build.spec["members"]}),
                           "threshold": build.spec["threshold"], "threshold_method": build.spec["threshold_method"],
                           "target_far": build.spec["target_far"], "registered_model_name": name})
        mlflow.log_metrics(run_metrics(build))
        mlflow.log_dict(report.to_dict(), GATE_REPORT)
        mlflow.log_dict(build.spec, "ensemble.json")
        if evaluation_dir is not None:
            mlflow.log_artifacts(str(evaluation_dir), EVALUATION_DIR)
        if not report.passed:
            logger.warning("ensemble not registered:\n%s", report.summary())
            return Registration(run.info.run_id, name, None, None)
        version = log_model(build.directory, build.spec, pd.DataFrame(build.example), name)
    client = MlflowClient(uri)
    client.set_model_version_tag(name, version, "raysys.gates", "passed")
    metrics = build.ensemble_metrics
    if metrics.get("labelled"):
        client.set_model_version_tag(name, version, "test_f1", f"{metrics['f1']:.4f}")
    if metrics.get("heldout_false_alarm_rate") is not None:
        client.set_model_version_tag(name, version, "heldout_false_alarm_rate",
                                     f"{metrics['heldout_false_alarm_rate']:.4f}")
    promote_version(client, name, version)
    return Registration(run.info.run_id, name, version, f"models:/{name}/{version}")


def register_directory(directory: str | os.PathLike, spec: dict[str, Any], example: pd.DataFrame,
                       name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None,
                       experiment: str = DEFAULT_EXPERIMENT, run_name: str = "recalibrate",
                       params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
                       tags: dict[str, str] | None = None) -> Registration:
    """Register an ensemble directory that needs no gate report (e.g. a recalibrated one) as champion.

    One run (``run_name``, tag ``raysys.stage=<run_name>``) logs ``params``, ``metrics``, the
    ``ensemble.json`` and the pyfunc model; the new version gets ``tags`` and the alias ``champion``,
    and the version it left keeps ``previous``, as :func:`register_ensemble` does.
    """
    uri = use_tracking(tracking_uri, experiment)
    with mlflow.start_run(run_name=run_name, nested=True) as run:
        mlflow.set_tags({"raysys.stage": run_name})
        mlflow.log_params({**(params or {}), "registered_model_name": name})
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_dict(spec, "ensemble.json")
        version = log_model(directory, spec, example, name)
    client = MlflowClient(uri)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, value)
    promote_version(client, name, version)
    return Registration(run.info.run_id, name, version, f"models:/{name}/{version}")
