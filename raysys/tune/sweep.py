"""Running a sweep: the Tuner, its MLflow parent run, resume, and the outputs.

A sweep directory (``<storage_path>/<name>``) is the Tune experiment directory. Beside Tune's
own files it holds::

    raysys_sweep.json   the config, the dataset and the MLflow parent run (what --resume reads)
    train/trial_<id>/   each trial's Ray Train run (checkpoints) and raysys_trial.json
    leaderboard.csv     one row per trial, best first
    leaderboard.png     metric per trial and epochs per trial
    best.json           the best trial per family (the ensemble step reads this)
    best/<family>/      those trials' detectors (raysys.models.load_detector)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from rich.console import Console

from raysys.cluster import init_ray
from raysys.data.source import open_source, public_options
from raysys.interrupts import INTERRUPTED, STATUS_TAG, mlflow_status
from raysys.layout import LEADERBOARD_CSV, LEADERBOARD_PLOT, SWEEP_BEST, SWEEP_RECORD, SWEEP_TRAIN_DIR
from raysys.models import with_spellings
from raysys.tracking import get_experiment_id, resolve_tracking_uri
from raysys.train.ingest import check_data_cpus, check_training_data, evaluation_dataset, resolve_ingest
from raysys.tune.config import SweepConfig
from raysys.tune.export import export_best
from raysys.tune.leaderboard import (COMPLETED, ERROR, STOPPED, UNFINISHED, best_table, build_leaderboard,
                                     leaderboard_table, plot_leaderboard, total_trial_epochs)
from raysys.tune.scheduler import FamilyASHAScheduler
from raysys.tune.space import make_searcher
from raysys.tune.trial import TrialSettings, release_placement_groups, train_driver_fn

logger = logging.getLogger(__name__)
#: Logical memory (bytes) a trial's driver function reserves; it holds no CPU.
TRIAL_DRIVER_MEMORY = 128 * 1024**2
#: Seconds after a trial ends before its Train placement group is removed (if still there).
RELEASE_GRACE_S = 3.0
_RUN_STATUS = {COMPLETED: "FINISHED", STOPPED: "KILLED", ERROR: "FAILED", UNFINISHED: "KILLED"}


@dataclass
class SweepResult:
    """What a sweep produced.

    Args:
        sweep_dir: The sweep (Tune experiment) directory; pass it to ``--resume``.
        parent_run_id: The MLflow parent run; each trial is a child run of it.
        best: ``best.json``: family -> ``checkpoint`` (detector dir), ``run_id``, ``trial_id``,
            ``config``, ``metric``, ``metric_name`` (and ``trial_metric``, ``status``, ``epochs``).
        leaderboard: One row per trial, best first.
        config: The sweep's config.
        finished: False when trials were left pending or running (interrupted: resume it).
    """

    sweep_dir: Path
    parent_run_id: str
    best: dict[str, dict[str, Any]]
    leaderboard: pd.DataFrame = field(repr=False)
    config: SweepConfig = field(repr=False)
    finished: bool = True

    @property
    def total_trial_epochs(self) -> int:
        """Epochs trained over all trials."""
        return total_trial_epochs(self.leaderboard)


class ReleaseTrainResources(Callback):
    """Tune callback: removes an ended trial's Train placement groups ``grace_s`` after it ended.

    By then the trial's actor, and the Train controller it owned, are gone; a trial that Tune
    stopped early (ASHA) would otherwise keep its workers' CPUs until the sweep exits.

    Args:
        train_storage: Storage path of the trials' Train runs.
        grace_s: Seconds to wait after a trial ended.
    """

    def __init__(self, train_storage: str, grace_s: float = RELEASE_GRACE_S):
        self.train_storage = train_storage
        self.grace_s = grace_s
        self.ended: dict[str, float] = {}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.monotonic()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.monotonic()

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        for trial_id, ended in list(self.ended.items()):
            if now - ended >= self.grace_s:
                del self.ended[trial_id]
                if release_placement_groups(self.train_storage, trial_id):
                    logger.info("released the Train workers of stopped trial %s", trial_id)

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            release_placement_groups(self.train_storage, trial.trial_id)


def _trial_name(trial) -> str:
    return f"{trial.config.get('family', 'trial')}_{trial.trial_id}"


def _settings(record: dict[str, Any], config: SweepConfig, sweep_dir: Path,
              storage_options: dict[str, Any]) -> TrialSettings:
    return TrialSettings(
        data=record["data"], ingest=record.get("ingest", "auto"), storage_options=storage_options,
        train_storage=str(sweep_dir / SWEEP_TRAIN_DIR),
        train_params=with_spellings({}, max_epochs=config.max_epochs, patience=config.patience),
        workers_per_trial=config.workers_per_trial,
        cpus_per_worker=config.cpus_per_worker, gpus_per_worker=config.gpus_per_worker,
        max_failures=config.max_failures, tracking_uri=record["tracking_uri"], experiment=config.experiment,
        experiment_id=record["experiment_id"], parent_run_id=record["parent_run_id"])


def _trainable(settings: TrialSettings):
    from ray import tune

    # The trial only drives a Train run: it reserves no CPU (Tune's default is 1), so on a small
    # cluster the CPUs go to the Train workers (ScalingConfig); max_concurrent_trials bounds how many
    # runs compete for them. Tune needs some resource in a trial's bundle: a little memory.
    return tune.with_resources(tune.with_parameters(train_driver_fn, settings=settings),
                               {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY})


def _scheduler(config: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if config.scheduler == "fifo":
        return FIFOScheduler()
    # max_t one past the last epoch: a trial that reaches max_epochs ends by itself (its driver
    # function returns and records it) instead of being stopped by ASHA at its last report
    asha = FamilyASHAScheduler if config.scheduler == "asha_family" else ASHAScheduler
    return asha(time_attr="epoch", max_t=config.max_epochs + 1, grace_period=config.grace_period,
                reduction_factor=config.reduction_factor)


def read_sweep_record(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """The sweep's record (config, data, MLflow parent run) written when it started."""
    path = Path(sweep_dir) / SWEEP_RECORD
    if not path.exists():
        raise FileNotFoundError(f"cannot resume {str(sweep_dir)!r}: no {SWEEP_RECORD} there; "
                                "pass the sweep directory printed when the sweep started")
    return json.loads(path.read_text())


def label_free(config: SweepConfig, console: Console) -> SweepConfig:
    """The sweep on data whose validation split has no labels: PR AUC cannot rank trials, so each
    trial is ranked by its validation loss against its own family only (ASHA with per-family rungs;
    losses of different families are not comparable). The ensemble then takes every family's best."""
    if config.metric != "val_pr_auc":
        return config
    scheduler = "asha_family" if config.scheduler == "asha" else config.scheduler
    console.print(f"no labels in the validation split: trials are ranked by val_loss within each family "
                  f"(scheduler {scheduler})")
    return config.replace(metric="val_loss", scheduler=scheduler)


def _start(config: SweepConfig, data_dir: str | os.PathLike, client: MlflowClient, console: Console,
           ingest: str, storage_options: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Create the sweep directory, its MLflow parent run and its record (without secret storage options)."""
    data = str(data_dir) if "://" in str(data_dir) else str(Path(data_dir).resolve())
    check_training_data(data, ingest, storage_options)  # a bad dataset fails here, before any Ray work
    if not open_source(data, storage_options).labelled("val"):
        config = label_free(config, console)
    name = config.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    config = config.replace(name=name, storage_path=str(Path(config.storage_path).resolve()))
    sweep_dir = Path(config.storage_path) / name
    if sweep_dir.exists():
        raise FileExistsError(f"sweep {name!r} already exists under {sweep_dir.parent}; pass --resume {sweep_dir} "
                              "to continue it or choose another name")
    experiment_id = get_experiment_id(client.tracking_uri, config.experiment)
    parent = client.create_run(experiment_id, run_name=name, tags={
        "raysys.stage": "tune", "raysys.sweep_dir": str(sweep_dir), "raysys.families": ",".join(config.families)})
    run_id = parent.info.run_id
    for key, value in config.to_dict().items():
        if key not in ("space", "tracking_uri"):
            client.log_param(run_id, key, str(value)[:6000])
    client.log_param(run_id, "data", data)
    client.log_text(run_id, config.to_yaml(), "sweep.yaml")
    sweep_dir.mkdir(parents=True)
    record = {"config": config.to_dict(), "data": data, "ingest": ingest,
              "storage_options": public_options(storage_options), "tracking_uri": client.tracking_uri,
              "experiment_id": experiment_id, "parent_run_id": run_id}
    (sweep_dir / SWEEP_RECORD).write_text(json.dumps(record, indent=2))
    return sweep_dir, record


def check_stream_cpus(config: SweepConfig, data: str, ingest: str, storage_options: dict[str, Any]) -> None:
    """For a streamed sweep: every trial that may run at once holds its workers' CPUs, and Ray Data needs one
    beyond them all (``raysys.train.ingest.check_data_cpus``). Initialises Ray."""
    if resolve_ingest(ingest, open_source(data, storage_options)) != "stream":
        return
    init_ray()
    check_data_cpus(config.max_concurrent * config.workers_per_trial, config.cpus_per_worker or 1.0,
                    "lower max_concurrent, workers_per_trial or cpus_per_worker (--max-concurrent, --workers-per-trial, "
                    "--cpus-per-worker, or the sweep config: 2 trials of 1 worker on 2 CPUs stream with "
                    "cpus_per_worker 0.5), use a larger cluster, or --ingest memory")


def run_sweep(config: SweepConfig | None, data_dir: str | os.PathLike | None = None, resume: str | None = None,
              console: Console | None = None, ingest: str = "auto",
              storage_options: dict[str, Any] | None = None) -> SweepResult:
    """Run a sweep (or resume an interrupted one), then write the leaderboard and best trials.

    Args:
        config: What to sweep (ignored with ``resume``: the sweep's own config is used).
        data_dir: The data set (a prepared directory, split directories, or an object-store URI; ignored with
            ``resume``).
        ingest, storage_options: How trials read it (``raysys.train.ingest``; with ``resume``, the recorded
            ones, these storage options added: secrets are never recorded).
        resume: A sweep directory: continue it with ``Tuner.restore``; trials that finished are
            not run again, trials that were running resume from their Train checkpoints.
        console: Where tables are printed.

    Raises:
        ValueError, FileNotFoundError: bad dataset or sweep directory, before any trial starts.
        FileExistsError: the sweep's directory exists (resume it or rename the sweep).
    """
    from ray import tune

    console = console or Console()
    if resume:
        sweep_dir = Path(resume).resolve()
        record = read_sweep_record(sweep_dir)
        config = SweepConfig.from_dict(record["config"], str(sweep_dir / SWEEP_RECORD))
        check_stream_cpus(config, record["data"], record.get("ingest", "auto"),
                          {**record.get("storage_options", {}), **(storage_options or {})})
        client = MlflowClient(record["tracking_uri"])
        client.update_run(record["parent_run_id"], status="RUNNING")
    else:
        if config is None or data_dir is None:
            raise ValueError("a new sweep needs a config and a data directory")
        check_stream_cpus(config, str(data_dir), ingest, dict(storage_options or {}))  # before any record or run
        client = MlflowClient(resolve_tracking_uri(config.tracking_uri))
        sweep_dir, record = _start(config, data_dir, client, console, ingest, dict(storage_options or {}))
        config = SweepConfig.from_dict(record["config"])
    storage_options = {**record.get("storage_options", {}), **(storage_options or {})}
    console.print(f"sweep {config.name}: {sweep_dir} (MLflow parent run {record['parent_run_id']})")

    init_ray()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = _settings(record, config, sweep_dir, storage_options)
    trainable = _trainable(settings)
    callbacks = [ReleaseTrainResources(settings.train_storage)]
    if resume and (sweep_dir / "tuner.pkl").exists():
        tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:  # a new sweep (or one killed before Tune saved anything: start it afresh)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=config.metric, mode=config.mode, search_alg=make_searcher(config),
                scheduler=_scheduler(config), num_samples=config.num_samples,
                max_concurrent_trials=config.max_concurrent, time_budget_s=config.time_budget_s,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent), callbacks=callbacks))
    try:
        tuner.fit()
    except BaseException as exc:
        if not isinstance(exc, Exception):  # Ctrl-C or SIGTERM: resume with --resume
            client.set_tag(record["parent_run_id"], STATUS_TAG, INTERRUPTED)
        client.set_terminated(record["parent_run_id"], mlflow_status(exc))
        raise
    return finalize_sweep(sweep_dir, console, storage_options)


def finalize_sweep(sweep_dir: str | os.PathLike, console: Console | None = None,
                   storage_options: dict[str, Any] | None = None) -> SweepResult:
    """Build the leaderboard from the Tune experiment, export the best trial per family (on the data set, or a
    streamed one's sample), write ``leaderboard.csv``, ``leaderboard.png`` and ``best.json``, and log them to
    the parent run."""
    from ray.tune import ExperimentAnalysis

    console = console or Console()
    sweep_dir = Path(sweep_dir).resolve()
    record = read_sweep_record(sweep_dir)
    config = SweepConfig.from_dict(record["config"], str(sweep_dir / SWEEP_RECORD))
    client = MlflowClient(record["tracking_uri"])
    parent = record["parent_run_id"]
    trials = ExperimentAnalysis(str(sweep_dir)).trials
    leaderboard = build_leaderboard(trials, sweep_dir / SWEEP_TRAIN_DIR, config.metric, config.mode)
    finished = not (leaderboard["status"] == UNFINISHED).any() if len(leaderboard) else False

    for row in leaderboard.itertuples(index=False):
        if row.run_id:
            client.set_tag(row.run_id, "raysys.trial_status", row.status)
            if client.get_run(row.run_id).info.status != _RUN_STATUS[row.status]:
                client.set_terminated(row.run_id, _RUN_STATUS[row.status])
    # child runs of trials Tune never saved to its state (started just before a kill; the
    # resumed sweep ran the same config as a new trial)
    known = set(leaderboard["run_id"].dropna())
    for run in client.search_runs([record["experiment_id"]], f"tags.mlflow.parentRunId = '{parent}'"):
        if run.info.run_id not in known and run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "raysys.trial_status", "lost")
            client.set_terminated(run.info.run_id, "KILLED")
    dataset = evaluation_dataset(record["data"], record.get("ingest", "auto"),
                                 {**record.get("storage_options", {}), **(storage_options or {})})
    best = export_best(leaderboard, config.metric, config.mode, dataset, sweep_dir, config.families)

    leaderboard.to_csv(sweep_dir / LEADERBOARD_CSV, index=False)
    plot_leaderboard(leaderboard, config.metric, config.mode, sweep_dir / LEADERBOARD_PLOT, config.name)
    tmp = sweep_dir / (SWEEP_BEST + ".tmp")
    tmp.write_text(json.dumps(best, indent=2))
    tmp.replace(sweep_dir / SWEEP_BEST)

    now = int(time.time() * 1000)
    counts = leaderboard["status"].value_counts()
    metrics = [Metric("trial_epochs", total_trial_epochs(leaderboard), now, 0)]
    metrics += [Metric(f"trials_{status}", int(counts.get(status, 0)), now, 0)
                for status in (COMPLETED, STOPPED, ERROR, UNFINISHED)]
    metrics += [Metric(f"best_{family}_{entry['metric_name']}", entry["metric"], now, 0)
                for family, entry in best.items()]
    client.log_batch(parent, metrics=metrics)
    for family, entry in best.items():
        client.set_tag(parent, f"raysys.best.{family}.run_id", entry["run_id"] or "")
        if entry["run_id"]:
            client.set_tag(entry["run_id"], "raysys.best", "true")
            client.log_artifacts(entry["run_id"], entry["checkpoint"], "detector")
    for name in (LEADERBOARD_CSV, LEADERBOARD_PLOT, SWEEP_BEST):
        client.log_artifact(parent, str(sweep_dir / name))
    with tempfile.TemporaryDirectory() as tmp_dir:
        configs = {family: entry["config"] for family, entry in best.items()}
        (Path(tmp_dir) / "best_configs.json").write_text(json.dumps(configs, indent=2))
        client.log_artifact(parent, str(Path(tmp_dir) / "best_configs.json"))
    if not finished:
        client.set_tag(parent, STATUS_TAG, INTERRUPTED)
    client.set_terminated(parent, "FINISHED" if finished else "KILLED")

    console.print(leaderboard_table(leaderboard, config.metric, f"{config.name}: leaderboard"))
    console.print(best_table(best))
    console.print(f"{len(leaderboard)} trials, {total_trial_epochs(leaderboard)} trial-epochs; "
                  f"best per family: {sweep_dir / SWEEP_BEST}")
    if not finished:
        console.print(f"[yellow]sweep interrupted: resume it with  raysys tune --resume {sweep_dir}[/yellow]")
    return SweepResult(sweep_dir, parent, best, leaderboard, config, finished)
