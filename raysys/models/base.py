"""The estimator contract shared by the three deep detectors (PyOD / scikit-learn style).

``__init__`` only stores parameters; ``fit(X)`` validates and returns ``self``; fitted
state ends in ``_``; ``decision_function`` returns anomaly scores (higher is more
anomalous) and ``predict`` flags rows above ``threshold_``.
"""

from __future__ import annotations

import inspect
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from raysys.data.preprocessing import fit_scaler
from raysys.models._training import EarlyStopping, eval_loss, make_optimizer, score_batches, train_epoch

#: Where a fitted detector sits inside a training checkpoint and a training run's MLflow artifacts.
DETECTOR_DIR = "detector"
CONFIG_FILE = "detector.json"
WEIGHTS_FILE = "model.pt"
SCALER_FILE = "scaler.joblib"


class BaseDeepDetector(ABC):
    """Common fit / score / save logic; subclasses say how to build the network.

    Args:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Samples per training batch.
        epochs: Maximum training epochs.
        patience: Epochs without validation improvement before early stopping.
        grad_clip: Max gradient norm (0 disables clipping).
        scaler: ``"standard"`` or ``"minmax"``, fitted on the training rows.
        contamination: Share of training rows above ``threshold_`` after ``fit``.
        validation_fraction: Tail of the training rows held out for early stopping.
        seed: Random seed for weights and batching.
    """

    family: str = ""

    def __init__(self, lr: float = 1e-3, weight_decay: float = 1e-5, batch_size: int = 256, epochs: int = 30,
                 patience: int = 5, grad_clip: float = 1.0, scaler: str = "standard", contamination: float = 0.01,
                 validation_fraction: float = 0.1, seed: int = 0):
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.patience = patience
        self.grad_clip = grad_clip
        self.scaler = scaler
        self.contamination = contamination
        self.validation_fraction = validation_fraction
        self.seed = seed

    # -- what subclasses provide -------------------------------------------------
    @abstractmethod
    def build_module(self, n_features: int) -> nn.Module:
        """The untrained network for ``n_features`` sensors."""

    def to_samples(self, Z: np.ndarray) -> np.ndarray:
        """Scaled rows to network inputs for scoring (rows for dense models, windows for sequences)."""
        return Z

    def training_samples(self, Z: np.ndarray) -> np.ndarray:
        """Scaled rows (or labels, shape (n, 1)) to training inputs; sequence models may stride."""
        return self.to_samples(Z)

    def rows_from_scores(self, scores: np.ndarray, n_rows: int) -> np.ndarray:
        """Per-sample scores back to one score per row."""
        return scores

    def min_rows(self) -> int:
        return 1

    def _finish_fit(self, samples: torch.Tensor) -> None:
        """Extra fitted state computed from normal training samples (e.g. latent statistics)."""

    # -- parameters --------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        names = [p for cls in type(self).__mro__ if cls is not object and "__init__" in vars(cls)
                 for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
        return {name: getattr(self, name) for name in dict.fromkeys(names)}

    # -- fitting -----------------------------------------------------------------
    def _validate(self, X: np.ndarray, fitted: bool) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (rows, sensors), got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinite values")
        if fitted and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} sensors, expected {self.n_features_in_} as in fit")
        if len(X) < self.min_rows():
            raise ValueError(f"X needs at least {self.min_rows()} rows, got {len(X)}")
        return X

    def normal_samples(self, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        """Scaled training samples that hold no known anomaly (``y == 1``)."""
        samples = self.training_samples(self.scaler_.transform(X).astype(np.float32))
        if y is None:
            return samples
        y = np.asarray(y).reshape(-1, 1)
        if len(y) != len(X):
            raise ValueError(f"y has {len(y)} labels for {len(X)} rows of X")
        flagged = self.training_samples(y).reshape(len(samples), -1).max(axis=1)
        return samples[flagged == 0]

    def init_fit(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Fit the scaler and build the network; returns the scaled normal training samples.

        ``y``, if given, marks known anomalies (1), which are left out: training is unsupervised.
        """
        X = self._validate(X, fitted=False)
        torch.manual_seed(self.seed)
        self.n_features_in_ = X.shape[1]
        normal = X if y is None else X[np.asarray(y) == 0]
        self.scaler_ = fit_scaler(self.scaler, normal)
        self.module_ = self.build_module(self.n_features_in_)
        return self.normal_samples(X, y)

    def finish_fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "BaseDeepDetector":
        """Compute training scores, the contamination threshold and extra state from normal rows."""
        X = self._validate(X, fitted=True)
        self.module_.eval()
        self._finish_fit(torch.from_numpy(self.normal_samples(X, y)))
        scores = self.decision_function(X)
        self.decision_scores_ = scores if y is None else scores[np.asarray(y) == 0]
        self.threshold_ = float(np.quantile(self.decision_scores_, 1.0 - self.contamination))
        return self

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "BaseDeepDetector":
        """Train in-process, with early stopping on a held-out tail of the samples.

        Args:
            X: Raw sensor values, shape (rows, sensors), in time order.
            y: Optional 0/1 labels; rows (or windows) holding a 1 are left out of training.
        """
        samples = torch.from_numpy(self.init_fit(X, y))
        n_val = max(1, int(len(samples) * self.validation_fraction))
        gen = torch.Generator().manual_seed(self.seed)
        train = DataLoader(TensorDataset(samples[:-n_val]), batch_size=self.batch_size, shuffle=True, generator=gen)
        val = DataLoader(TensorDataset(samples[-n_val:]), batch_size=self.batch_size)
        device = torch.device("cpu")
        optimizer, scheduler = make_optimizer(self.module_, self.lr, self.weight_decay)
        stopper = EarlyStopping(self.patience)
        best_state = None
        self.history_: list[dict[str, float]] = []
        for epoch in range(self.epochs):
            tl, tn = train_epoch(self.module_, train, optimizer, self.grad_clip, device)
            vl, vn = eval_loss(self.module_, val, device)
            scheduler.step(vl / vn)
            self.history_.append({"epoch": epoch + 1, "train_loss": tl / tn, "val_loss": vl / vn})
            if stopper.step(vl / vn):
                best_state = {k: v.clone() for k, v in self.module_.state_dict().items()}
            if stopper.should_stop:
                break
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        return self.finish_fit(X, y)

    # -- scoring -----------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit first")

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row (reconstruction error): higher is more anomalous."""
        self._check_fitted()
        X = self._validate(X, fitted=True)
        samples = torch.from_numpy(self.to_samples(self.scaler_.transform(X).astype(np.float32)))
        return self.rows_from_scores(score_batches(self.module_, samples).numpy(), len(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """1 for rows scored above ``threshold_``, else 0."""
        self._check_fitted()
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    # -- persistence -------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved."""

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted detector to a directory (config JSON, weights, scaler)."""
        self._check_fitted()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        config = {"family": self.family, "params": self.get_params(), "n_features_in": self.n_features_in_,
                  "threshold": getattr(self, "threshold_", None)}
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        torch.save({"module": self.module_.state_dict(), "extra": self._extra_state()}, out / WEIGHTS_FILE)
        joblib.dump(self.scaler_, out / SCALER_FILE)
        return out


def restore(detector: BaseDeepDetector, path: str | os.PathLike) -> BaseDeepDetector:
    """Fill an unfitted ``detector`` with the fitted state saved in ``path``."""
    root = Path(path)
    config = json.loads((root / CONFIG_FILE).read_text())
    detector.n_features_in_ = config["n_features_in"]
    detector.module_ = detector.build_module(detector.n_features_in_)
    state = torch.load(root / WEIGHTS_FILE, map_location="cpu", weights_only=False)
    detector.module_.load_state_dict(state["module"])
    detector.module_.eval()
    detector._load_extra_state(state["extra"])
    detector.scaler_ = joblib.load(root / SCALER_FILE)
    if config.get("threshold") is not None:
        detector.threshold_ = float(config["threshold"])
    return detector
