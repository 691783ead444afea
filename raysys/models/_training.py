"""The epoch loop shared by local ``fit`` and the Ray Train worker function."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader


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
def score_batches(module: nn.Module, samples: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Per-sample anomaly scores of ``samples`` in eval mode, batch by batch."""
    module.eval()
    device = next(module.parameters()).device
    return torch.cat([module.score(x, module(x)).cpu()
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


EpochCallback = Callable[[int, dict[str, float]], None]
