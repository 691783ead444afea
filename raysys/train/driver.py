"""The driver of a training run: builds the TorchTrainer, tracks it in MLflow, evaluates it."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback
from rich.console import Console

from raysys.cluster import train_log_level
from raysys.evaluation import flat_metrics, metrics_table
from raysys.interrupts import INTERRUPTED, STATUS_TAG, mlflow_status
from raysys.layout import DATASET_METADATA, DETECTOR_DIR, RUN_RECORD, SPLITS, TRAIN_STATE, checkpoints
from raysys.models import load_detector
from raysys.models.base import load_weights
from raysys.tracking import get_experiment_id, resolve_tracking_uri
from raysys.train.config import TrainConfig
from raysys.train.evaluate import Evaluation, evaluate_detector, write_evaluation
from raysys.train.ingest import TrainingData, check_data_cpus, open_training_data
from raysys.train.worker import train_fn_per_worker

logger = logging.getLogger(__name__)
#: How often Ray Train's controller polls its workers (Ray's default: 2 s). A worker's report waits for
#: the controller to collect the previous one, so the default caps a run at one epoch per 2 s; raysys's
#: epochs are often shorter (docs/benchmarks.md). Set the variable yourself to override it.
HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 0.1
EPOCH_METRICS = ("train_loss", "val_loss", "lr", "val_pr_auc")


class MlflowEpochLogger(UserCallback):
    """Logs each reported epoch to an MLflow run and prints a progress line."""

    def __init__(self, tracking_uri: str, run_id: str, max_epochs: int, label: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.max_epochs = max_epochs
        self.label = label

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0]
        now = int(time.time() * 1000)
        MlflowClient(self.tracking_uri).log_batch(self.run_id, metrics=[
            Metric(key, float(m[key]), now, int(m["epoch"])) for key in EPOCH_METRICS if key in m])
        shown = "  ".join(f"{k}={m[k]:.4g}" for k in EPOCH_METRICS if k in m)
        print(f"[{self.label}] epoch {m['epoch']}/{self.max_epochs}  {shown}", flush=True)


def build_trainer(cfg: TrainConfig, run_name: str, callbacks: list[UserCallback],
                  extra_loop_config: dict[str, Any] | None = None, *,
                  train_fn: Callable[[dict[str, Any]], None] = train_fn_per_worker,
                  resources_per_worker: dict[str, float] | None = None,
                  data: TrainingData | None = None) -> TorchTrainer:
    """The Ray Train ``TorchTrainer`` for ``cfg``; reusing ``run_name`` resumes that run.

    ``train_fn`` (a wrapper of :func:`train_fn_per_worker`) and ``resources_per_worker``
    (default: ``cfg.cpus_per_worker``, plus 1 GPU with ``use_gpu``) let a sweep trial adapt it. ``data``: the run's
    data when the caller has opened it already (default, a sweep trial's: :func:`open_run_data`, without loading
    it here or checking its files again: the sweep checked them once before its trials).
    """
    data = data or open_run_data(cfg, load=False, check=False)
    if resources_per_worker is None:
        resources_per_worker = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    if data.ingest == "stream":
        check_data_cpus(cfg.num_workers, resources_per_worker.get("CPU", 1.0))
    loop_config = {"model": cfg.model, "params": cfg.params, **data.loop_config, **(extra_loop_config or {})}
    os.environ.setdefault(HEALTH_CHECK_ENV, str(HEALTH_CHECK_INTERVAL_S))  # Ray Train passes it to its actors
    return TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        datasets=data.datasets or None,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources_per_worker),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(Path(cfg.storage_path).resolve()),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level=train_log_level()),
        ),
    )


def open_run_data(cfg: TrainConfig, load: bool = True, check: bool = True) -> TrainingData:
    """``cfg``'s data (``raysys.train.ingest.open_training_data``); ``load=False`` leaves an in-memory data set
    on disk (the workers load it), ``check=False`` skips the footer checks a caller has done."""
    return open_training_data(cfg.data, cfg.model, cfg.params, cfg.ingest, cfg.storage_options, load=load,
                              check=check)


@dataclass
class TrainResult:
    """What a finished training run produced.

    Args:
        run_name: The Ray Train run name (pass it to ``--resume``).
        run_id: The MLflow run id.
        run_dir: The run's directory under the storage path.
        detector_dir: The fitted detector (``raysys.models.load_detector``).
        evaluation: Threshold and test metrics.
        epochs: Epochs trained in total.
    """

    run_name: str
    run_id: str
    run_dir: Path
    detector_dir: Path
    evaluation: Evaluation
    epochs: int


def _start_or_resume(cfg: TrainConfig, resume: str | None, client: MlflowClient) -> tuple[TrainConfig, str, str]:
    """Create the MLflow run and the run record, or read them back to resume."""
    storage = Path(cfg.storage_path).resolve()
    if resume:
        record_path = storage / resume / RUN_RECORD
        if not record_path.exists():
            raise FileNotFoundError(f"cannot resume {resume!r}: no {RUN_RECORD} under {storage / resume}")
        record = json.loads(record_path.read_text())
        saved = TrainConfig(**{**record["config"], "storage_path": str(storage), "tracking_uri": cfg.tracking_uri,
                               # secrets were not recorded: this invocation's options (or the environment) give them
                               "storage_options": {**record["config"].get("storage_options", {}),
                                                   **cfg.storage_options}})
        client.update_run(record["mlflow_run_id"], status=RunStatus.to_string(RunStatus.RUNNING))
        return saved, resume, record["mlflow_run_id"]
    run_name = cfg.run_name or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (storage / run_name).exists():
        raise FileExistsError(f"run {run_name!r} already exists under {storage}; pass --resume {run_name} "
                              "to continue it or choose another --run-name")
    experiment_id = get_experiment_id(client.tracking_uri, cfg.experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags={"raysys.stage": "train",
                                                                     "raysys.model": cfg.model})
    params = {**{k: v for k, v in cfg.to_dict().items() if k not in ("params", "tracking_uri")},
              **{f"model.{k}": v for k, v in cfg.params.items()}}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    (storage / run_name).mkdir(parents=True, exist_ok=True)
    (storage / run_name / RUN_RECORD).write_text(json.dumps(
        {"config": cfg.to_dict(), "mlflow_run_id": run.info.run_id}, indent=2))
    return cfg, run_name, run.info.run_id


def latest_checkpoint_on_disk(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint under ``run_dir`` whose training state loads, and that state.

    A run killed mid-way leaves checkpoint directories its workers persisted but the Ray Train
    controller had not registered yet (it polls the workers every few seconds); Ray restores only
    registered ones, so without this a run killed early would silently start again from epoch 1.
    A directory cut short by the kill does not load and is passed over.
    """
    for _, ckpt_dir in checkpoints(run_dir):
        try:
            return ckpt_dir, load_weights(ckpt_dir / TRAIN_STATE)
        except Exception:  # missing or truncated by the kill
            continue
    return None


def _log_missing_epochs(client: MlflowClient, run_id: str, history: list[dict[str, float]]) -> None:
    """Log the epochs of a checkpoint's history that never reached MLflow before the run was killed."""
    logged = {m.step for m in client.get_metric_history(run_id, "train_loss")}
    missing = [Metric(key, float(h[key]), int(h.get("time", time.time()) * 1000), int(h["epoch"]))
               for h in history if int(h["epoch"]) not in logged for key in EPOCH_METRICS if key in h]
    if missing:
        client.log_batch(run_id, metrics=missing)


def epoch_history(client: MlflowClient, run_id: str) -> list[dict[str, float]]:
    """Per-epoch train and validation loss as logged to MLflow (one entry per epoch)."""
    per_epoch: dict[int, dict[str, float]] = {}
    for key in ("train_loss", "val_loss"):
        for m in client.get_metric_history(run_id, key):
            per_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [per_epoch[e] for e in sorted(per_epoch) if len(per_epoch[e]) == 3]


def train(cfg: TrainConfig, resume: str | None = None, diagnostics_dir: str | None = None,
          console: Console | None = None) -> TrainResult:
    """Run (or resume) a distributed training run, then evaluate and log everything to MLflow."""
    console = console or Console()
    client = MlflowClient(resolve_tracking_uri(cfg.tracking_uri))
    cfg, run_name, run_id = _start_or_resume(cfg, resume, client)
    extra: dict[str, Any] = {"diagnostics_dir": diagnostics_dir} if diagnostics_dir else {}
    on_disk = latest_checkpoint_on_disk(Path(cfg.storage_path).resolve() / run_name) if resume else None
    try:
        # inside the try: data that fails to open (or a store gone since the CLI's check) ends the MLflow run FAILED
        data = open_run_data(cfg)
        dataset = data.dataset
        if data.ingest == "stream":
            console.print(f"[{run_name}] streaming {cfg.data} into the workers; evaluating on a sample of "
                          f"{', '.join(f'{n} {k}' for k, n in dataset.metadata['sample'].items() if k in SPLITS)} rows")
        if on_disk:
            extra["resume_from"] = str(on_disk[0])
            _log_missing_epochs(client, run_id, on_disk[1].get("history", []))
        trainer = build_trainer(cfg, run_name, [MlflowEpochLogger(client.tracking_uri, run_id, cfg.detector().epochs,
                                                                  run_name)], extra or None, data=data)
        result = trainer.fit()
        # a run killed after its last checkpoint reports nothing more when resumed
        checkpoint_dir = Path(result.checkpoint.path) if result.checkpoint else on_disk[0]
        detector_dir = checkpoint_dir / DETECTOR_DIR
        detector = load_detector(detector_dir)
        evaluation = evaluate_detector(detector, dataset, cfg.threshold_method, cfg.percentile, cfg.target_far)
        # the calibrated threshold becomes the detector's own: a loaded detector flags what its metrics counted
        detector.set_threshold(evaluation.threshold, evaluation.threshold_method).save(detector_dir)
        history = epoch_history(client, run_id)
        client.log_batch(run_id, metrics=[Metric(f"test_{k}", v, int(time.time() * 1000), 0)
                                          for k, v in flat_metrics({**evaluation.metrics,
                                                                    **evaluation.extra_scores}).items()])
        with tempfile.TemporaryDirectory() as tmp:
            write_evaluation(evaluation, dataset, history, tmp, cfg.model)
            client.log_artifacts(run_id, tmp)
        client.log_artifacts(run_id, str(detector_dir), DETECTOR_DIR)
        client.log_dict(run_id, dataset.metadata, DATASET_METADATA)
        client.set_terminated(run_id, "FINISHED")
    except BaseException as exc:
        if not isinstance(exc, Exception):  # Ctrl-C or SIGTERM: the checkpoints stay, resume with --resume
            client.set_tag(run_id, STATUS_TAG, INTERRUPTED)
        client.set_terminated(run_id, mlflow_status(exc))
        raise
    console.print(metrics_table(evaluation.metrics, f"{run_name}: test metrics"))
    return TrainResult(run_name, run_id, Path(result.path), detector_dir, evaluation,
                       int((result.metrics or on_disk[1])["epoch"]))
