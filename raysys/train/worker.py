"""``train_fn_per_worker``: what each Ray Train worker runs."""

from __future__ import annotations

import copy
import json
import resource
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from sklearn.metrics import average_precision_score
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from raysys.data import SensorDataset, load_dataset
from raysys.data.preprocessing import scaler_from_dict
from raysys.layout import DETECTOR_DIR, TRAIN_STATE, checkpoint_name
from raysys.models import BaseDeepDetector, build_detector
from raysys.models._training import (EVAL_BATCH_SIZE, LoopState, core_module, is_finished, make_optimizer,
                                     run_epochs, split_validation, worker_batch_size)
from raysys.models.base import load_weights
from raysys.train.ingest import HOLDOUT, TRAIN, ShardLoader


def _all_reduce(values: list[float]) -> list[float]:
    """Sum per-worker numbers across the worker group (identity on one worker)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _weights_checksum(module: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum().cpu() for p in module.parameters()))


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Train one detector data-parallel; every epoch reports metrics and (rank 0) a checkpoint.

    Config keys: ``model``, ``params`` (the detector's parameters: ``epochs``,
    ``patience`` and ``batch_size``, the global batch, come from there), optional
    ``detection_metric`` (also report validation PR AUC, when the validation split has labels), ``diagnostics_dir`` (each rank
    writes which samples it trained on and a checksum of its final weights) and ``resume_from``
    (a checkpoint directory to continue from when Ray Train has none registered, or an older one), and
    the data's (``raysys.train.ingest.TrainingData.loop_config``): ``ingest`` ``memory`` with ``data`` (a prepared
    directory every worker loads), or ``stream`` with ``scaler`` and ``sample`` (the bounded sample, an object
    ref), the samples then coming from the trainer's ``train`` and ``holdout`` dataset shards.
    """
    detector = build_detector(config["model"], **config.get("params", {}))
    diagnostics_dir = config.get("diagnostics_dir")

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    streamed = config.get("ingest") == "stream"
    # streamed: the bounded sample (evaluation, final statistics); in memory: the whole data set
    dataset = ray.get(config["sample"]) if streamed else load_dataset(config["data"])
    detection_metric = bool(config.get("detection_metric", False)) and dataset.labelled("val")
    X_train, y_train = dataset.features("train"), dataset.known_labels("train")
    device = ray.train.torch.get_device()
    batch_size = worker_batch_size(detector.batch_size, world_size)
    if streamed:
        detector.init_module(len(dataset.sensors), scaler_from_dict(config["scaler"], "the streamed scaler"))
        train_loader = ShardLoader(ray.train.get_dataset_shard(TRAIN), batch_size, shuffle=True,
                                   seed=detector.seed + rank, record=bool(diagnostics_dir))
        val_loader = ShardLoader(ray.train.get_dataset_shard(HOLDOUT), EVAL_BATCH_SIZE, shuffle=False, seed=0)
    else:
        train_samples, val_samples = split_validation(torch.from_numpy(detector.init_fit(X_train, y_train)),
                                                      detector.validation_fraction)
        generator = torch.Generator().manual_seed(detector.seed)
        train_loader = ray.train.torch.prepare_data_loader(DataLoader(
            TensorDataset(train_samples), batch_size=batch_size, shuffle=True, generator=generator),
            move_to_device=device.type != "cpu")
        val_loader = ray.train.torch.prepare_data_loader(DataLoader(TensorDataset(val_samples),
                                                                    batch_size=EVAL_BATCH_SIZE),
                                                         move_to_device=device.type != "cpu")
    model = ray.train.torch.prepare_model(detector.module_)
    optimizer, scheduler = make_optimizer(model, detector.lr, detector.weight_decay)

    state = LoopState()
    saved = latest_state(ray.train.get_checkpoint(), config.get("resume_from"))
    if saved is not None:
        core_module(model).load_state_dict(saved["module"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = LoopState.from_dict(saved)
        if is_finished(state, detector.epochs, detector.patience):
            return  # the run had already ended (early stop or last epoch) before it was killed

    # Each epoch's report (and rank 0's checkpoint) runs in the background while the next epoch
    # trains: ray.train.report waits for the controller to collect the previous report and for a
    # cross-rank barrier, and torch.save takes milliseconds, all of it time the epoch loop would
    # otherwise stand still for. One report at a time, in epoch order, from a snapshot of the state
    # (the weights change under the next epoch); the last one is made here, after all the others.
    reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raysys-report")
    pending: list[Future] = []

    def wait_for_report() -> None:
        if pending:
            pending.pop().result()  # raises what the report raised

    def on_epoch(metrics: dict[str, float], done: bool, loop: LoopState) -> None:
        if detection_metric and rank == 0:
            metrics["val_pr_auc"] = loop.history[-1]["val_pr_auc"] = _val_pr_auc(detector, dataset)
        loop.history[-1]["time"] = time.time()
        wait_for_report()
        args = ({**metrics, "done": done}, rank, done, _snapshot({
            "module": core_module(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), **loop.to_dict(),
            # a streamed run's scaler came from the whole split: an export of this checkpoint must not refit it
            **({"scaler": config["scaler"]} if streamed else {})}), detector, X_train, y_train)
        if done:
            report_checkpoint(*args)
        else:
            pending.append(reporter.submit(report_checkpoint, *args))

    sampler = getattr(train_loader, "sampler", None)
    shard_indices = sorted(int(i) for i in sampler) if isinstance(sampler, DistributedSampler) else []
    started = time.perf_counter()
    try:
        state = run_epochs(model, train_loader, val_loader, optimizer, scheduler, epochs=detector.epochs,
                           patience=detector.patience, grad_clip=detector.grad_clip, device=device, state=state,
                           all_reduce=_all_reduce, on_epoch=on_epoch)
        wait_for_report()
    finally:
        reporter.shutdown(wait=False)
    train_seconds = time.perf_counter() - started

    if diagnostics_dir:
        out = Path(diagnostics_dir)
        out.mkdir(parents=True, exist_ok=True)
        stream = ({"samples": train_loader.first_pass, "max_batch": train_loader.max_batch,
                   "batch_size": batch_size, "times": train_loader.times,
                   "wait_seconds": {"train": train_loader.wait_seconds, "holdout": val_loader.wait_seconds}}
                  if streamed else None)
        (out / f"rank{rank}.json").write_text(json.dumps({
            "rank": rank, "world_size": world_size, "indices": shard_indices, "stream": stream,
            "weights_checksum": _weights_checksum(core_module(model)),
            # what bench/bench_ingest.py compares: this worker's epochs, samples per epoch, loop time, peak memory
            "epochs": len(state.history),
            "samples_per_epoch": train_loader.first_pass if streamed else len(shard_indices),
            "train_seconds": train_seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a checkpoint's training state that training on does not change: tensors cloned,
    containers copied; the best weights are shared (``run_epochs`` replaces them, never edits them)."""
    return {k: v if k == "best_module" else _copy_tree(v) for k, v in state.items()}


def _copy_tree(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):  # copy.copy keeps the type and a state_dict's ``_metadata``
        out = copy.copy(obj)
        for key, value in obj.items():
            out[key] = _copy_tree(value)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_tree(v) for v in obj)
    return obj


def latest_state(checkpoint: ray.train.Checkpoint | None, resume_from: str | None) -> dict[str, Any] | None:
    """The newest training state: Ray Train's latest registered checkpoint or ``resume_from``.

    Ray Train V2 restores a run only from the checkpoints its controller has registered
    (``checkpoint_manager_snapshot.json``), which lags the checkpoint directories the workers
    have already persisted; ``resume_from`` is the newest complete one of those, which the
    driver finds on disk when resuming a run that was killed.
    """
    states = []
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            states.append(load_weights(Path(ckpt_dir) / TRAIN_STATE))
    if resume_from:
        states.append(load_weights(Path(resume_from) / TRAIN_STATE))
    return max(states, key=lambda s: s["epoch"], default=None)


def _val_pr_auc(detector: BaseDeepDetector, dataset: SensorDataset) -> float:
    """PR AUC of the detector's current weights on the labelled validation split."""
    labels = dataset.labels("val")
    scores = detector.decision_function(dataset.features("val"))
    return float(average_precision_score(labels, scores)) if labels.any() else float("nan")


def report_checkpoint(metrics: dict[str, Any], rank: int, done: bool, state: dict[str, Any],
                      detector: BaseDeepDetector, X_train: np.ndarray, y_train: np.ndarray) -> None:
    """Report the epoch's metrics; rank 0 attaches the checkpoint.

    The last checkpoint also holds the fitted detector (best weights) under ``detector/``.
    """
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / TRAIN_STATE)
        if done:
            # a copy: the training module (shared with DDP) keeps its last weights, as on every other rank
            copy.deepcopy(detector).finish_fit(X_train, y_train, state["best_module"]).save(Path(tmp) / DETECTOR_DIR)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoint_name(int(metrics["epoch"])))
