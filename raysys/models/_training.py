"""The one epoch loop of every raysys detector, for in-process ``fit`` and the Ray Train worker.

:func:`run_epochs` trains, validates, steps the learning-rate schedule, stops early and keeps the
best weights. It takes plain ``DataLoader`` objects (``BaseDeepDetector.fit``) or Ray-prepared ones
(``raysys.train.train_fn_per_worker``, which also passes an all-reduce of the epoch's loss sums
and an ``on_epoch`` hook that reports to Ray Train with a checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

#: Samples per batch when only the loss or the score is computed (no gradients).
EVAL_BATCH_SIZE = 4096


def split_validation(samples: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) samples: the last ``fraction`` of ``samples`` (at least one) is held
    out for early stopping, in time order so the validation samples follow the training ones."""
    if len(samples) < 2:
        raise ValueError(f"need at least 2 training samples to hold some out for validation, got {len(samples)}")
    n_val = min(len(samples) - 1, max(1, int(len(samples) * fraction)))
    return samples[:-n_val], samples[-n_val:]


def worker_batch_size(batch_size: int, world_size: int) -> int:
    """Each data-parallel worker's share of the global ``batch_size`` (Ray's ``batch_size // world_size``)."""
    if batch_size < world_size:
        raise ValueError(f"batch_size ({batch_size}) must be >= the number of workers ({world_size}): it is the "
                         "global batch, split across workers")
    return batch_size // world_size


def core_module(model: nn.Module) -> nn.Module:
    """The user module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _batches(loader: DataLoader, device: torch.device):
    for batch in loader:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        yield x.to(device, non_blocking=True)


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                grad_clip: float, device: torch.device) -> tuple[float, int]:
    """One pass over ``loader``; returns (sum of per-sample loss, number of samples)."""
    model.train()
    core = core_module(model)
    total, count = 0.0, 0
    for x in _batches(loader, device):
        optimizer.zero_grad(set_to_none=True)
        loss = core.loss(x, model(x))
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += float(loss.detach()) * len(x)
        count += len(x)
    return total, count


@torch.no_grad()
def eval_loss(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, int]:
    """Loss over ``loader`` in eval mode; returns (sum of per-sample loss, number of samples)."""
    model.eval()
    core = core_module(model)
    total, count = 0.0, 0
    for x in _batches(loader, device):
        total += float(core.loss(x, model(x))) * len(x)
        count += len(x)
    return total, count


@torch.no_grad()
def score_batches(module: nn.Module, samples: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                  head: str = "score") -> torch.Tensor:
    """Per-sample anomaly scores of ``samples`` in eval mode, batch by batch (``head="score_terms"``: their
    per-input-value terms, see :class:`raysys.models.autoencoder.ReconstructionScore`)."""
    module.eval()
    device = next(module.parameters()).device
    return torch.cat([getattr(module, head)(x, module(x)).cpu()
                      for x in samples.split(batch_size) for x in [x.to(device)]])


class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement of the validation loss."""

    def __init__(self, patience: int, min_delta: float = 0.0, best: float = float("inf"), bad_epochs: int = 0):
        self.patience = patience
        self.min_delta = min_delta
        self.best = best
        self.bad_epochs = bad_epochs

    def step(self, value: float) -> bool:
        """Record ``value``; returns True when it is a new best."""
        if value < self.best - self.min_delta:
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def make_optimizer(model: nn.Module, lr: float, weight_decay: float
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau]:
    """AdamW with a ReduceLROnPlateau schedule on the validation loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
    return optimizer, scheduler



@dataclass
class LoopState:
    """Where an epoch loop stands: what a checkpoint saves and a resumed run continues from.

    Args:
        epoch: Epochs done.
        best_val_loss: Lowest validation loss so far.
        bad_epochs: Epochs since it was reached.
        best_module: The weights (``state_dict``, on the CPU) of that epoch.
        history: One entry per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``lr``, ...
    """

    epoch: int = 0
    best_val_loss: float = math.inf
    bad_epochs: int = 0
    best_module: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # no deep copy of the weights

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "LoopState":
        return cls(**{k: state[k] for k in ("epoch", "best_val_loss", "bad_epochs", "best_module", "history")})


#: Called after every epoch with its metrics (``epoch``, ``train_loss``, ``val_loss``, ``best_val_loss``,
#: ``lr``), whether it was the last one, and the loop's state.
EpochHook = Callable[[dict[str, float], bool, LoopState], None]


def run_epochs(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
               optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau, *,
               epochs: int, patience: int, grad_clip: float, device: torch.device,
               state: LoopState | None = None, all_reduce: Callable[[list[float]], list[float]] | None = None,
               on_epoch: EpochHook | None = None) -> LoopState:
    """Train ``model`` for up to ``epochs`` epochs with early stopping on the validation loss.

    Args:
        model: The network (or its DDP wrapper); its module defines ``loss(x, outputs)``.
        train_loader, val_loader: Batches of training and validation samples.
        optimizer, scheduler: From :func:`make_optimizer`; the scheduler steps on the validation loss.
        epochs: Last epoch (counted from 1 over a resumed run).
        patience: Epochs without improvement before stopping.
        grad_clip: Max gradient norm (0: no clipping).
        device: Where batches go.
        state: Where a resumed run stands (default: a fresh start).
        all_reduce: Sums the epoch's ``[train loss sum, train samples, val loss sum, val samples]``
            across data-parallel workers, so every worker sees the same losses and stops together.
        on_epoch: Called after every epoch (reporting, checkpointing).

    Returns:
        The final state; ``state.best_module`` holds the best epoch's weights.
    """
    state = state or LoopState()
    stopper = EarlyStopping(patience, best=state.best_val_loss, bad_epochs=state.bad_epochs)
    core = core_module(model)
    sampler = getattr(train_loader, "sampler", None)
    for epoch in range(state.epoch, epochs):
        if stopper.should_stop:
            break
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        sums = [*train_epoch(model, train_loader, optimizer, grad_clip, device), *eval_loss(model, val_loader, device)]
        train_sum, train_n, val_sum, val_n = all_reduce(sums) if all_reduce else sums
        val_loss = val_sum / val_n
        scheduler.step(val_loss)
        if stopper.step(val_loss):
            state.best_module = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
        state.epoch, state.best_val_loss, state.bad_epochs = epoch + 1, stopper.best, stopper.bad_epochs
        metrics = {"epoch": epoch + 1, "train_loss": train_sum / train_n, "val_loss": val_loss,
                   "best_val_loss": stopper.best, "lr": optimizer.param_groups[0]["lr"]}
        state.history.append(dict(metrics))
        done = stopper.should_stop or epoch + 1 == epochs
        if on_epoch is not None:
            on_epoch(metrics, done, state)
        if done:
            break
    return state


def is_finished(state: LoopState, epochs: int, patience: int) -> bool:
    """Whether a run in ``state`` had already ended (early stop or last epoch)."""
    return state.epoch >= epochs or state.bad_epochs >= patience
