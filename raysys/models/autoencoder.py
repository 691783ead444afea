"""Dense autoencoder: reconstruction error of each row is its anomaly score."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from raysys.models.base import DenseDetector, store_params


def mlp(dims: Sequence[int], dropout: float, last_activation: bool = False) -> nn.Sequential:
    """Linear layers with ReLU and dropout between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or last_activation:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def row_mse(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample over every axis but the first."""
    return ((recon - x) ** 2).flatten(1).mean(dim=1)


def squared_error_terms(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """:func:`row_mse`'s terms, shaped like ``x``: each value's squared error over the values per sample."""
    return (recon - x) ** 2 / x[0].numel()


class ReconstructionScore(nn.Module):
    """A network whose anomaly score is the sum of per-input-value terms (``score_terms``, shaped like the
    input): what lets raysys split a score over the sensors (docs/attribution.md)."""

    def score_terms(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.score_terms(x, outputs).flatten(1).sum(dim=1)


class DenseAutoEncoder(ReconstructionScore):
    """Encoder ``n_features -> hidden_dims -> latent_dim`` and its mirror image."""

    def __init__(self, n_features: int, hidden_dims: Sequence[int] = (64, 32), latent_dim: int = 8,
                 dropout: float = 0.1):
        super().__init__()
        self.encoder = mlp([n_features, *hidden_dims, latent_dim], dropout)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), n_features], dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.decoder(self.encoder(x)),)

    def loss(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return row_mse(x, outputs[0]).mean()

    def score_terms(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return squared_error_terms(x, outputs[0])


class AutoEncoderDetector(DenseDetector):
    """Dense autoencoder detector.

    Args:
        hidden_dims: Widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: Width of the bottleneck.
        dropout: Dropout between hidden layers.
        lags: Previous rows stacked with each row (0: each row alone); see :class:`DenseDetector`.
        lr, weight_decay, batch_size, epochs, patience, grad_clip, scaler, contamination,
            validation_fraction, seed: Training parameters of :class:`BaseDeepDetector`.
    """

    family = "ae"

    # the training parameters repeat in every family's signature: see BaseDeepDetector
    def __init__(self, hidden_dims: Sequence[int] = (64, 32), latent_dim: int = 8, dropout: float = 0.1,
                 lags: int = 0, *,
                 lr: float = 1e-3, weight_decay: float = 1e-5, batch_size: int = 256, epochs: int = 30,
                 patience: int = 5, grad_clip: float = 1.0, scaler: str = "standard", contamination: float = 0.01,
                 validation_fraction: float = 0.1, seed: int = 0):
        store_params(self, locals())

    def build_module(self, n_features: int) -> nn.Module:
        return DenseAutoEncoder(self.input_width(n_features), tuple(self.hidden_dims), self.latent_dim, self.dropout)
