"""1-D convolutional sequence autoencoder over sliding windows of consecutive rows."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from raysys.models.autoencoder import ReconstructionScore, row_mse
from raysys.models.base import SequenceDetector, store_params
from raysys.models.lstm import LSTMAutoEncoder

#: Each encoder layer halves the window (rounding up); the decoder's transposed convolutions double it back.
STRIDE = 2


def encoded_lengths(window: int, n_layers: int) -> list[int]:
    """Window length before and after each stride-2 encoder layer (odd kernel, ``kernel_size // 2`` padding)."""
    lengths = [window]
    for _ in range(n_layers):
        lengths.append(-(-lengths[-1] // STRIDE))
    return lengths


class ConvAutoEncoder(ReconstructionScore):
    """Conv1d encoder (stride 2 per layer) to a dense bottleneck, mirrored ConvTranspose1d decoder.

    Input and output are windows (batch, window, sensors), as for the LSTM; convolutions run over
    the time axis with the sensors as channels.
    """

    def __init__(self, n_features: int, window: int = 16, channels: Sequence[int] = (16, 32), kernel_size: int = 3,
                 latent_dim: int = 8, dropout: float = 0.0):
        super().__init__()
        widths = [n_features, *channels]
        lengths = encoded_lengths(window, len(channels))
        pad = kernel_size // 2
        encoder: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            encoder += [nn.Conv1d(a, b, kernel_size, stride=STRIDE, padding=pad), nn.ReLU(), nn.Dropout(dropout)]
        self.encoder = nn.Sequential(*encoder)
        self.code_shape = (widths[-1], lengths[-1])
        flat = widths[-1] * lengths[-1]
        self.to_latent = nn.Linear(flat, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU())
        decoder: list[nn.Module] = []
        for i in range(len(channels), 0, -1):  # layer i maps length lengths[i] back to lengths[i - 1]
            length = (lengths[i] - 1) * STRIDE - 2 * pad + kernel_size
            decoder.append(nn.ConvTranspose1d(widths[i], widths[i - 1], kernel_size, stride=STRIDE, padding=pad,
                                              output_padding=lengths[i - 1] - length))
            if i > 1:
                decoder += [nn.ReLU(), nn.Dropout(dropout)]
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        h = self.encoder(x.transpose(1, 2))
        z = self.to_latent(h.flatten(1))
        out = self.decoder(self.from_latent(z).view(-1, *self.code_shape))
        return (out.transpose(1, 2),)

    def loss(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return row_mse(x, outputs[0]).mean()

    # the LSTM's window score, weighted toward the last step: a row's score is that of the window ending at it
    score_terms = LSTMAutoEncoder.score_terms


class ConvDetector(SequenceDetector):
    """1-D convolutional autoencoder detector; each row is scored by the window that ends at it.

    Args:
        window: Rows per window.
        stride: Step between training windows (scoring always uses stride 1).
        channels: Output channels of the encoder's Conv1d layers, each of stride 2 (the decoder
            mirrors them with ConvTranspose1d).
        kernel_size: Convolution kernel length in rows (odd, so padding keeps windows centred).
        latent_dim: Width of the window embedding (a dense layer after the convolutions).
        dropout: Dropout between hidden layers.
        lr, weight_decay, batch_size, epochs, patience, grad_clip, scaler, contamination,
            validation_fraction, seed: Training parameters of :class:`BaseDeepDetector`.
    """

    family = "conv"

    # the training parameters repeat in every family's signature: see BaseDeepDetector
    def __init__(self, window: int = 16, stride: int = 1, channels: Sequence[int] = (16, 32), kernel_size: int = 3,
                 latent_dim: int = 8, dropout: float = 0.0, *, lr: float = 1e-3, weight_decay: float = 1e-5,
                 batch_size: int = 256, epochs: int = 30, patience: int = 5, grad_clip: float = 1.0,
                 scaler: str = "standard", contamination: float = 0.01, validation_fraction: float = 0.1,
                 seed: int = 0):
        store_params(self, locals())

    def build_module(self, n_features: int) -> nn.Module:
        return ConvAutoEncoder(n_features, self.window, tuple(self.channels), self.kernel_size, self.latent_dim,
                               self.dropout)
