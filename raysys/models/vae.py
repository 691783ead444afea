"""Variational autoencoder: reconstruction error, plus distances in latent space."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from raysys.models._training import score_batches
from raysys.models.autoencoder import ReconstructionScore, mlp, row_mse, squared_error_terms
from raysys.models.base import DenseDetector, store_params


class VariationalAutoEncoder(ReconstructionScore):
    """Gaussian VAE; loss = reconstruction MSE + ``beta`` * KL divergence to N(0, I)."""

    def __init__(self, n_features: int, hidden_dims: Sequence[int] = (64, 32), latent_dim: int = 8,
                 dropout: float = 0.1, beta: float = 1.0):
        super().__init__()
        self.beta = beta
        self.encoder = mlp([n_features, *hidden_dims], dropout, last_activation=True)
        self.mu = nn.Linear(hidden_dims[-1], latent_dim)
        self.logvar = nn.Linear(hidden_dims[-1], latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), n_features], dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h).clamp(-10.0, 10.0)
        # reparameterisation trick while training; the mean at inference so scores are deterministic
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar

    def loss(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        recon, mu, logvar = outputs
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
        return row_mse(x, recon).mean() + self.beta * kl / x.shape[1]

    def score_terms(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return squared_error_terms(x, outputs[0])


class LatentOf(nn.Module):
    """The VAE's latent mean as a scoring head (used for latent distances)."""

    def __init__(self, vae: VariationalAutoEncoder):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.vae(x)[1],)

    def score(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return outputs[0]


class VAEDetector(DenseDetector):
    """VAE detector with reconstruction, latent Euclidean and latent Mahalanobis scores.

    Args:
        hidden_dims: Widths of the encoder's hidden layers.
        latent_dim: Width of the latent space.
        dropout: Dropout between hidden layers.
        beta: Weight of the KL term.
        lags: Previous rows stacked with each row (0: each row alone); see :class:`DenseDetector`.
        lr, weight_decay, batch_size, epochs, patience, grad_clip, scaler, contamination,
            validation_fraction, seed: Training parameters of :class:`BaseDeepDetector`.
    """

    family = "vae"

    # the training parameters repeat in every family's signature: see BaseDeepDetector
    def __init__(self, hidden_dims: Sequence[int] = (64, 32), latent_dim: int = 8, dropout: float = 0.1,
                 beta: float = 1.0, lags: int = 0, *, lr: float = 1e-3, weight_decay: float = 1e-5,
                 batch_size: int = 256, epochs: int = 30, patience: int = 5, grad_clip: float = 1.0,
                 scaler: str = "standard", contamination: float = 0.01, validation_fraction: float = 0.1,
                 seed: int = 0):
        store_params(self, locals())

    def build_module(self, n_features: int) -> nn.Module:
        return VariationalAutoEncoder(self.input_width(n_features), tuple(self.hidden_dims), self.latent_dim,
                                      self.dropout, self.beta)

    def _latent(self, samples: torch.Tensor) -> np.ndarray:
        return score_batches(LatentOf(self.module_), samples).numpy().astype(np.float64)

    def _finish_fit(self, samples: torch.Tensor) -> None:
        latent = self._latent(samples)
        cov = LedoitWolf().fit(latent)  # shrinkage keeps the precision matrix well conditioned
        self.latent_mean_ = cov.location_
        self.latent_precision_ = cov.precision_

    def latent_scores(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Euclidean and Mahalanobis distance of each row's latent mean to the training latents."""
        self._check_fitted()
        X = self._validate(X, fitted=True)
        samples = self.to_samples(self.scaler_.transform(X).astype(np.float32))
        diff = self._latent(torch.from_numpy(samples)) - self.latent_mean_
        return {"euclidean": np.linalg.norm(diff, axis=1),
                "mahalanobis": np.sqrt(np.einsum("ij,jk,ik->i", diff, self.latent_precision_, diff))}

    def _extra_state(self) -> dict[str, Any]:
        return {"latent_mean": self.latent_mean_.tolist(), "latent_precision": self.latent_precision_.tolist()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.latent_mean_ = np.asarray(state["latent_mean"])
        self.latent_precision_ = np.asarray(state["latent_precision"])
