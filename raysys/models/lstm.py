"""LSTM sequence autoencoder over sliding windows of consecutive rows."""

from __future__ import annotations

import torch
from torch import nn

from raysys.models.autoencoder import ReconstructionScore, row_mse
from raysys.models.base import SequenceDetector, store_params


class LSTMAutoEncoder(ReconstructionScore):
    """Encode a window into the last hidden state, decode it back step by step."""

    def __init__(self, n_features: int, hidden_size: int = 32, latent_dim: int = 16, num_layers: int = 1):
        super().__init__()
        self.encoder = nn.LSTM(n_features, hidden_size, num_layers, batch_first=True)
        self.to_latent = nn.Linear(hidden_size, latent_dim)
        self.decoder = nn.LSTM(latent_dim, hidden_size, num_layers, batch_first=True)
        self.output = nn.Linear(hidden_size, n_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        _, (h, _) = self.encoder(x)
        z = self.to_latent(h[-1])
        repeated = z.unsqueeze(1).expand(-1, x.shape[1], -1)
        out, _ = self.decoder(repeated)
        return (self.output(out),)

    def loss(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return row_mse(x, outputs[0]).mean()

    def score_terms(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # half the window's mean squared error, half the last step's: a row's score is that of the window
        # ending at it, weighted toward that row
        window, sensors = x.shape[1], x.shape[2]
        last = torch.zeros(window, 1, dtype=x.dtype, device=x.device)
        last[-1] = 1.0
        return (outputs[0] - x) ** 2 * (0.5 / (window * sensors) + 0.5 / sensors * last)


class LSTMDetector(SequenceDetector):
    """LSTM autoencoder detector; each row is scored by the window that ends at it.

    Args:
        window: Rows per window.
        stride: Step between training windows (scoring always uses stride 1).
        hidden_size: LSTM hidden size.
        latent_dim: Width of the window embedding.
        num_layers: Stacked LSTM layers.
        lr, weight_decay, batch_size, epochs, patience, grad_clip, scaler, contamination,
            validation_fraction, seed: Training parameters of :class:`BaseDeepDetector`.
    """

    family = "lstm"

    # the training parameters repeat in every family's signature: see BaseDeepDetector
    def __init__(self, window: int = 16, stride: int = 1, hidden_size: int = 32, latent_dim: int = 16,
                 num_layers: int = 1, *, lr: float = 1e-3, weight_decay: float = 1e-5, batch_size: int = 256,
                 epochs: int = 30, patience: int = 5, grad_clip: float = 1.0, scaler: str = "standard",
                 contamination: float = 0.01, validation_fraction: float = 0.1, seed: int = 0):
        store_params(self, locals())

    def build_module(self, n_features: int) -> nn.Module:
        return LSTMAutoEncoder(n_features, self.hidden_size, self.latent_dim, self.num_layers)
