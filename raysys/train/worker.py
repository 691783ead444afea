"""``train_fn_per_worker``: what each Ray Train worker runs."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from sklearn.metrics import average_precision_score
from torch.utils.data import DataLoader, TensorDataset

from raysys.data import SensorDataset, load_dataset
from raysys.models import DETECTOR_DIR, BaseDeepDetector, build_detector
from raysys.models._training import EarlyStopping, core_module, eval_loss, make_optimizer, train_epoch

STATE_FILE = "train_state.pt"


def _global_sums(*values: float) -> list[float]:
    """Sum per-worker numbers across the worker group (identity on one worker)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _weights_checksum(module: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum().cpu() for p in module.parameters()))


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Train one detector data-parallel; every epoch reports metrics and (rank 0) a checkpoint.

    Config keys: ``data``, ``model``, ``params``, ``max_epochs``, ``patience``, optional
    ``detection_metric`` (also report validation PR AUC), ``diagnostics_dir`` (each rank
    writes which samples it trained on and a checksum of its final weights) and ``resume_from``
    (a checkpoint directory to continue from when Ray Train has none registered, or an older one).
    """
    data_dir = config["data"]
    family = config["model"]
    params = dict(config.get("params", {}))
    max_epochs = int(config["max_epochs"])
    patience = int(config.get("patience", 5))
    detection_metric = bool(config.get("detection_metric", False))
    diagnostics_dir = config.get("diagnostics_dir")

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    dataset = load_dataset(data_dir)
    detector = build_detector(family, **params)
    X_train, y_train = dataset.features("train"), dataset.labels("train")
    train_samples = torch.from_numpy(detector.init_fit(X_train, y_train))
    val_samples = torch.from_numpy(detector.normal_samples(dataset.features("val"), dataset.labels("val")))

    model = ray.train.torch.prepare_model(detector.module_)
    device = ray.train.torch.get_device()
    generator = torch.Generator().manual_seed(detector.seed)
    train_loader = ray.train.torch.prepare_data_loader(
        DataLoader(TensorDataset(train_samples), batch_size=detector.batch_size, shuffle=True, generator=generator))
    val_loader = ray.train.torch.prepare_data_loader(DataLoader(TensorDataset(val_samples), batch_size=4096))
    optimizer, scheduler = make_optimizer(model, detector.lr, detector.weight_decay)
    stopper = EarlyStopping(patience)
    start_epoch = 0
    best_state = None

    history: list[dict[str, float]] = []
    state = latest_state(ray.train.get_checkpoint(), config.get("resume_from"), device)
    if state is not None:
        core_module(model).load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stopper = EarlyStopping(patience, best=state["best_val_loss"], bad_epochs=state["bad_epochs"])
        best_state = state["best_module"]
        start_epoch = state["epoch"]
        history = list(state.get("history", []))
        if stopper.should_stop or start_epoch >= max_epochs:
            return  # the run had already ended (early stop or last epoch) before it was killed

    core = core_module(model)
    sampler = getattr(train_loader, "sampler", None)
    shard_indices: list[int] = []
    final_checksum = float("nan")
    for epoch in range(start_epoch, max_epochs):
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.set_epoch(epoch)
            if epoch == start_epoch:
                shard_indices = sorted(int(i) for i in sampler)
        train_sum, train_n, val_sum, val_n = _global_sums(
            *train_epoch(model, train_loader, optimizer, detector.grad_clip, device),
            *eval_loss(model, val_loader, device))
        val_loss = val_sum / val_n
        scheduler.step(val_loss)
        if stopper.step(val_loss):
            best_state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
        done = stopper.should_stop or epoch + 1 == max_epochs
        metrics = {"epoch": epoch + 1, "train_loss": train_sum / train_n, "val_loss": val_loss,
                   "best_val_loss": stopper.best, "lr": optimizer.param_groups[0]["lr"], "done": done}
        if detection_metric and rank == 0:
            metrics["val_pr_auc"] = _val_pr_auc(detector, dataset)
        history.append({"time": time.time(), **{k: metrics[k] for k in ("epoch", "train_loss", "val_loss", "lr",
                                                                         "val_pr_auc") if k in metrics}})
        if done:
            final_checksum = _weights_checksum(core)
        report_checkpoint(metrics, rank, epoch, done, {
            "module": core.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "best_module": best_state, "best_val_loss": stopper.best, "bad_epochs": stopper.bad_epochs,
            "epoch": epoch + 1, "history": history}, detector, X_train, y_train)
        if done:
            break

    if diagnostics_dir:
        out = Path(diagnostics_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.json").write_text(json.dumps({
            "rank": rank, "world_size": world_size, "indices": shard_indices,
            "weights_checksum": final_checksum}))


def latest_state(checkpoint: ray.train.Checkpoint | None, resume_from: str | None,
                 device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The newest training state: Ray Train's latest registered checkpoint or ``resume_from``.

    Ray Train V2 restores a run only from the checkpoints its controller has registered
    (``checkpoint_manager_snapshot.json``), which lags the checkpoint directories the workers
    have already persisted; ``resume_from`` is the newest complete one of those, which the
    driver finds on disk when resuming a run that was killed.
    """
    states = []
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            states.append(torch.load(Path(ckpt_dir) / STATE_FILE, map_location=device, weights_only=False))
    if resume_from:
        states.append(torch.load(Path(resume_from) / STATE_FILE, map_location=device, weights_only=False))
    return max(states, key=lambda s: s["epoch"], default=None)


def _val_pr_auc(detector: BaseDeepDetector, dataset: SensorDataset) -> float:
    """PR AUC of the detector's current weights on the labelled validation split."""
    labels = dataset.labels("val")
    scores = detector.decision_function(dataset.features("val"))
    return float(average_precision_score(labels, scores)) if labels.any() else float("nan")


def report_checkpoint(metrics: dict[str, Any], rank: int, epoch: int, done: bool, state: dict[str, Any],
                      detector: BaseDeepDetector, X_train: np.ndarray, y_train: np.ndarray) -> None:
    """Report the epoch's metrics; rank 0 attaches the checkpoint.

    The last checkpoint also holds the fitted detector (best weights) under ``detector/``.
    """
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / STATE_FILE)
        if done:
            if state["best_module"] is not None:
                detector.module_.load_state_dict(state["best_module"])
            detector.finish_fit(X_train, y_train).save(Path(tmp) / DETECTOR_DIR)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"epoch-{epoch + 1:04d}")
