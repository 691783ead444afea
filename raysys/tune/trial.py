"""One sweep trial: a Ray Tune function trainable that drives one Ray Train run.

Tune calls :func:`train_driver_fn` with the trial's sampled config. It builds the raysys
``TorchTrainer`` (``raysys.train.build_trainer``), named after the trial id, and calls ``fit()``;
``TuneReportCallback`` forwards every epoch's metrics (with the checkpoint path) to Tune, and
``MlflowEpochLogger`` logs them to the trial's MLflow child run.

Restarting a trial (``raysys tune --resume``) calls this function again with the same trial id:
the Train run of the same name resumes from its latest checkpoint, the same MLflow child run is
reused, and a trial whose Train run already finished only reports its final metrics again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.tune
import ray.util
from mlflow.tracking import MlflowClient
from ray import PlacementGroupID
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from raysys.layout import TRIAL_LAST_REPORT, TRIAL_PLACEMENT_GROUPS, TRIAL_RECORD, trial_run_name
from raysys.train import MlflowEpochLogger, TrainConfig, build_trainer, train_fn_per_worker
from raysys.tune.space import trial_params

logger = logging.getLogger(__name__)

#: The worker's ``done`` flag, renamed: ``done`` is a reserved Tune result key.
TRAIN_DONE = "train_done"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``).

    Args:
        data: The data set: an absolute path, or an object-store URI.
        ingest: How trials read it (``raysys.train.ingest``).
        storage_options: The object store's filesystem arguments (secrets included: in memory only).
        train_storage: Absolute storage path of the trials' Ray Train runs.
        train_params: Detector parameters every trial gets (``epochs`` and ``patience``, from the
            sweep's ``max_epochs`` and ``patience``), on top of its sampled ones.
        workers_per_trial: Ray Train workers per trial.
        cpus_per_worker: CPUs per Train worker.
        gpus_per_worker: GPUs per Train worker.
        max_failures: Worker-group restarts per Train run.
        tracking_uri: Absolute MLflow tracking URI.
        experiment: MLflow experiment name.
        experiment_id: MLflow experiment id.
        parent_run_id: The sweep's MLflow parent run.
    """

    data: str
    ingest: str
    storage_options: dict[str, Any]
    train_storage: str
    train_params: dict[str, Any]
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_failures: int
    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str


def read_record(train_storage: str | os.PathLike, trial_id: str) -> dict[str, Any] | None:
    path = Path(train_storage) / trial_run_name(trial_id) / TRIAL_RECORD
    return json.loads(path.read_text()) if path.exists() else None


def _write_record(train_storage: str, trial_id: str, record: dict[str, Any]) -> None:
    path = Path(train_storage) / trial_run_name(trial_id) / TRIAL_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_jsonable))
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _tune_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The worker's metrics as Tune gets them: ``done`` renamed to ``train_done`` (Tune reads
    ``done`` itself), NaN left out so schedulers never compare a NaN."""
    return {(TRAIN_DONE if k == "done" else k): v for k, v in metrics.items()
            if not (isinstance(v, float) and math.isnan(v))}


class _TrialReportCallback(TuneReportCallback):
    """``TuneReportCallback`` with :func:`_tune_metrics`, noting the last epoch it forwarded
    (with the driver call's ``token``) so the trial can tell whether Tune has seen the end."""

    def __init__(self, trial_dir: str, token: str):
        super().__init__()
        self.trial_dir = trial_dir
        self.token = token

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        super().after_report(run_context, [_tune_metrics(m) for m in metrics], checkpoint)
        path = Path(self.trial_dir) / TRIAL_LAST_REPORT
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"token": self.token, "epoch": metrics[0].get("epoch")}))
        tmp.replace(path)


def _child_run(client: MlflowClient, settings: TrialSettings, trial_id: str, family: str,
               params: dict[str, Any]) -> str:
    """Create the trial's MLflow child run (params, tags) under the sweep's parent run."""
    run = client.create_run(settings.experiment_id, run_name=trial_run_name(trial_id), tags={
        "mlflow.parentRunId": settings.parent_run_id, "raysys.stage": "tune-trial", "raysys.model": family,
        "raysys.trial_id": trial_id})
    client.log_param(run.info.run_id, "model", family)
    client.log_param(run.info.run_id, "trial_id", trial_id)
    for key, value in params.items():
        client.log_param(run.info.run_id, f"model.{key}", str(value)[:6000])
    return run.info.run_id


def trial_worker_fn(config: dict[str, Any]) -> None:
    """``raysys.train.train_fn_per_worker``, after rank 0 records its worker group's placement group.

    When Tune stops a trial (ASHA), it ends the trial's actor; the Train controller it owns dies
    with it, without removing the workers' placement group, which then holds their CPUs until the
    sweep's driver exits (Ray Train's own cleaner needs the dashboard's state API). The sweep
    removes the recorded groups of every trial that ended (``release_placement_groups``).
    """
    trial_dir = config.get("raysys_trial_dir")
    group = ray.util.get_current_placement_group()
    if trial_dir and group is not None and ray.train.get_context().get_world_rank() == 0:
        with open(Path(trial_dir) / TRIAL_PLACEMENT_GROUPS, "a") as out:
            out.write(group.id.hex() + "\n")
    train_fn_per_worker(config)


def release_placement_groups(train_storage: str | os.PathLike, trial_id: str) -> int:
    """Remove the trial's recorded Train placement groups that still exist; returns how many."""
    path = Path(train_storage) / trial_run_name(trial_id) / TRIAL_PLACEMENT_GROUPS
    if not path.exists():
        return 0
    removed = 0
    for line in dict.fromkeys(path.read_text().split()):
        group = PlacementGroup(PlacementGroupID(bytes.fromhex(line)))
        try:
            if placement_group_table(group).get("state", "REMOVED") != "REMOVED":
                remove_placement_group(group)
                removed += 1
        except Exception as exc:  # already gone, or GCS unavailable: nothing to release
            logger.debug("placement group %s of trial %s: %s", line, trial_id, exc)
    return removed


def build_trial_trainer(settings: TrialSettings, family: str, params: dict[str, Any], run_name: str,
                        callbacks: list) -> TorchTrainer:
    """The trial's TorchTrainer: ``raysys.train.build_trainer``'s run, with the sweep's resources
    per worker and :func:`trial_worker_fn` as the worker function."""
    cfg = TrainConfig(data=settings.data, ingest=settings.ingest, storage_options=settings.storage_options,
                      cpus_per_worker=settings.cpus_per_worker or 1.0, model=family,
                      params={**params, **settings.train_params},
                      num_workers=settings.workers_per_trial, use_gpu=settings.gpus_per_worker > 0,
                      storage_path=settings.train_storage, run_name=run_name,
                      max_failures=settings.max_failures, tracking_uri=settings.tracking_uri,
                      experiment=settings.experiment)
    trial_dir = str(Path(settings.train_storage) / run_name)
    resources = {"CPU": settings.cpus_per_worker, "GPU": settings.gpus_per_worker}
    return build_trainer(cfg, run_name, callbacks, {"detection_metric": True, "raysys_trial_dir": trial_dir},
                         train_fn=trial_worker_fn, resources_per_worker={k: v for k, v in resources.items() if v})


def train_driver_fn(config: dict[str, Any], settings: TrialSettings) -> None:
    """Tune trainable: run (or resume) the trial's Ray Train run, reporting every epoch to Tune."""
    family, params = trial_params(config)
    trial_id = ray.tune.get_context().get_trial_id()
    run_name = trial_run_name(trial_id)
    client = MlflowClient(settings.tracking_uri)
    record = read_record(settings.train_storage, trial_id)
    if record and record.get("status") == "completed":
        # finished before the sweep was interrupted: report the outcome again, train nothing
        ray.tune.report({**record["final"], TRAIN_DONE: True})
        return
    if record is None:
        record = {"trial_id": trial_id, "family": family, "params": params, "status": "running",
                  "run_id": _child_run(client, settings, trial_id, family, params)}
        _write_record(settings.train_storage, trial_id, record)
    run_id = record["run_id"]
    client.update_run(run_id, status="RUNNING")
    token = uuid.uuid4().hex
    trial_dir = str(Path(settings.train_storage) / run_name)
    trainer = build_trial_trainer(settings, family, params, run_name, [
        MlflowEpochLogger(settings.tracking_uri, run_id, settings.train_params["epochs"], f"{family} {trial_id}"),
        _TrialReportCallback(trial_dir, token)])
    try:
        result = trainer.fit()
    except Exception:
        # Also what a trial sees while Tune stops it (ASHA): the sweep sets the MLflow status from
        # Tune's verdict (finalize_sweep), not from here.
        _write_record(settings.train_storage, trial_id, {**record, "status": "error"})
        raise
    final = {**_tune_metrics(result.metrics or {}),
             "checkpoint_path": result.checkpoint.path if result.checkpoint else None}
    _write_record(settings.train_storage, trial_id, {**record, "status": "completed", "final": final})
    client.set_tag(run_id, "raysys.trial_status", "completed")
    client.set_terminated(run_id, "FINISHED")
    last = Path(trial_dir) / TRIAL_LAST_REPORT
    forwarded = json.loads(last.read_text()) if last.exists() else {}
    if forwarded.get("token") != token or forwarded.get("epoch") != final.get("epoch"):
        # the Train run had ended before this call (the sweep was killed before the trial could
        # record it): fit() restored it and trained nothing, so tell Tune how it ended
        ray.tune.report(final)
