"""The estimator contract shared by the three deep detectors (PyOD / scikit-learn style).

``__init__`` only stores parameters; ``fit(X)`` validates and returns ``self``; fitted
state ends in ``_``; ``decision_function`` returns anomaly scores (higher is more
anomalous) and ``predict`` flags rows above ``threshold_``.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from raysys.data.preprocessing import (fit_scaler, scaler_from_dict, scaler_to_dict, sliding_windows,
                                       window_scores_to_rows)
from raysys.evaluation.calibration import tail_threshold
from raysys.layout import DETECTOR_CONFIG, DETECTOR_SCALER, DETECTOR_WEIGHTS
from raysys.models._training import EVAL_BATCH_SIZE, make_optimizer, run_epochs, score_batches, split_validation
from raysys.models.params import check_params, check_rows
from raysys.models.pca import lagged

#: ``threshold_method_`` after ``fit``: ``tail_threshold`` of the scores of the held-out normal rows
#: (``contamination`` as the false-alarm rate asked for on rows the model was not fitted on), never
#: below the training quantile (see ``BaseDeepDetector.finish_fit``).
HOLDOUT_FAR = "holdout_far"
#: ``threshold_method_`` after ``fit`` when fewer than 2 held-out normal rows remain: the
#: ``1 - contamination`` quantile of the training scores (optimistic: the model has seen those rows).
TRAIN_QUANTILE = "train_quantile"


def store_params(estimator: BaseEstimator, values: dict[str, Any]) -> None:
    """Store every ``__init__`` parameter of ``estimator`` from ``values`` (its ``locals()``), unchanged."""
    for name in inspect.signature(type(estimator).__init__).parameters:
        if name != "self":
            setattr(estimator, name, values[name])


class BaseDeepDetector(BaseEstimator, ABC):
    """Common fit / score / save logic; subclasses say how to build the network.

    Subclasses name every parameter in their ``__init__`` (scikit-learn's ``get_params``,
    ``set_params`` and ``clone`` read the signature), so the training parameters below are
    repeated, keyword-only and with the same defaults, in each family's signature. That
    repetition is deliberate: scikit-learn forbids ``**kwargs`` in an estimator's ``__init__``.

    Training parameters (the one source of each knob: ``raysys train --max-epochs`` and
    ``--patience`` and the sweep's ``max_epochs`` / ``patience`` set ``epochs`` and ``patience``):

    Args:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Samples per optimizer step, in total: under Ray Train each of ``n`` workers
            takes ``batch_size // n`` per step (the global batch is split across workers).
        epochs: Maximum training epochs.
        patience: Epochs without validation improvement before early stopping.
        grad_clip: Max gradient norm (0 disables clipping).
        scaler: ``"standard"``, ``"minmax"`` or ``"robust"`` (median / interquartile range, for
            "normal" data that carries outliers or drift), fitted on the normal training rows.
        contamination: The false-alarm rate ``threshold_`` is set for after ``fit``, on normal
            data the model has not seen: the share of the held-out normal rows (see
            ``validation_fraction``) expected above it. See :meth:`finish_fit`.
        validation_fraction: Tail of the training samples held out for early stopping, in
            ``fit`` and under Ray Train alike (the dataset's validation split stays unseen by
            training, for threshold calibration); ``fit`` also sets ``threshold_`` on it.
        seed: Random seed for weights and batching.
    """

    family: ClassVar[str] = ""

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

    # -- fitting -----------------------------------------------------------------
    def _validate(self, X: np.ndarray, fitted: bool) -> np.ndarray:
        return check_rows(X, np.float32, self.n_features_in_ if fitted else None, self.min_rows())

    def drop_anomalous(self, samples: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        """The training ``samples`` (made from rows labelled ``y`` by :meth:`training_samples`) that hold no
        known anomaly (``y == 1``)."""
        if y is None:
            return samples
        y = np.asarray(y).reshape(-1, 1)
        flagged = self.training_samples(y).reshape(len(samples), -1).max(axis=1)
        return samples[flagged == 0]

    def normal_samples(self, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        """Scaled training samples that hold no known anomaly (``y == 1``)."""
        if y is not None and len(y) != len(X):
            raise ValueError(f"y has {len(y)} labels for {len(X)} rows of X")
        return self.drop_anomalous(self.training_samples(self.scaler_.transform(X).astype(np.float32)), y)

    def heldout_rows(self, n_rows: int, y: np.ndarray | None = None) -> np.ndarray:
        """Which of ``n_rows`` training rows (labelled ``y``) ``fit`` held out: mask, shape (n_rows,).

        A row is held out when the sample that scores it (the row with its lags, or the window
        ending at it) reads no row a training sample was fitted on: every row it reads comes after the last row
        of the samples before the :func:`split_validation` cut. A row whose sample reads a known
        anomaly (``y == 1``) is not a held-out normal row.
        """
        rows = np.arange(n_rows, dtype=np.float64).reshape(-1, 1)
        covered = self.drop_anomalous(self.training_samples(rows), y)  # the rows each training sample reads
        fitted, _ = split_validation(torch.from_numpy(covered), self.validation_fraction)

        def per_row(reduce, values: np.ndarray) -> np.ndarray:  # over the rows each scoring sample reads
            samples = self.to_samples(values)
            return self.rows_from_scores(reduce(samples.reshape(len(samples), -1), axis=1), n_rows)

        heldout = per_row(np.min, rows) > float(fitted.max())
        return heldout if y is None else heldout & (per_row(np.max, np.asarray(y).reshape(-1, 1)) == 0)

    def init_fit(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Check the parameters, fit the scaler and build the network; returns the scaled normal
        training samples.

        ``y``, if given, marks known anomalies (1), which are left out: training is unsupervised.
        """
        check_params(self.family, self.get_params(), list(self.get_params()))
        X = self._validate(X, fitted=False)
        normal = X if y is None else X[np.asarray(y) == 0]
        self.init_module(X.shape[1], fit_scaler(self.scaler, normal))
        return self.normal_samples(X, y)

    def init_module(self, n_features: int, scaler: Any) -> "BaseDeepDetector":
        """Take a fitted ``scaler`` (one for ``self.scaler``) and build the untrained network for ``n_features``
        sensors (seeded): what :meth:`init_fit` does after fitting the scaler, and what a streamed training run
        does with the scaler it computed in one pass over the data (``raysys.train.ingest``)."""
        torch.manual_seed(self.seed)
        self.n_features_in_ = n_features
        self.scaler_ = scaler
        self.module_ = self.build_module(n_features)
        return self

    def finish_fit(self, X: np.ndarray, y: np.ndarray | None = None,
                   best_module: dict[str, torch.Tensor] | None = None) -> "BaseDeepDetector":
        """Load the best weights, then compute extra state (e.g. latent statistics) from the normal
        rows, the training scores and the default threshold.

        ``decision_scores_`` are the scores of the normal training rows (PyOD's convention). The
        threshold is label-free (``threshold_method_ = "holdout_far"``):
        :func:`~raysys.evaluation.calibration.tail_threshold` for the false-alarm rate
        ``contamination`` on the scores of the held-out normal rows (:meth:`heldout_rows`: the tail
        ``validation_fraction`` of the samples, which early stopping only evaluated on), and never
        below the ``1 - contamination`` quantile of the training scores: a model scores the rows it
        was fitted on at most as high as new normal rows, so a held-out tail below that quantile is a
        calmer stretch than the rest of the history (a day of a process that varies by the week), not
        a better estimate. With fewer than 2 held-out normal rows the threshold is that training
        quantile alone (``"train_quantile"``: optimistic, more than ``contamination`` of new normal
        rows lie above it). Under Ray Train the train stage then replaces it with the one it
        calibrates on the dataset's validation split.
        """
        X = self._validate(X, fitted=True)
        if best_module is not None:
            self.module_.load_state_dict(best_module)
        self.module_.eval()
        self._finish_fit(torch.from_numpy(self.normal_samples(X, y)))
        scores = self.decision_function(X)
        self.decision_scores_ = scores if y is None else scores[np.asarray(y) == 0]
        train_quantile = float(np.quantile(self.decision_scores_, 1.0 - self.contamination))
        heldout = scores[self.heldout_rows(len(X), y)]
        if len(heldout) >= 2:
            self.set_threshold(max(tail_threshold(heldout, self.contamination), train_quantile), HOLDOUT_FAR)
        else:
            self.set_threshold(train_quantile, TRAIN_QUANTILE)
        return self

    def set_threshold(self, threshold: float, method: str) -> "BaseDeepDetector":
        """Flag rows above ``threshold`` from now on (``predict``, and what ``save`` writes);
        ``method`` says how it was chosen."""
        self.threshold_ = float(threshold)
        self.threshold_method_ = method
        return self

    def fit(self, X: np.ndarray, y: np.ndarray | None = None, device: str = "cpu") -> "BaseDeepDetector":
        """Train in-process, with early stopping on a held-out tail of the samples.

        Args:
            X: Raw sensor values, shape (rows, sensors), in time order.
            y: Optional 0/1 labels; rows (or windows) holding a 1 are left out of training.
            device: Where the network trains (``"cuda"`` for a GPU); the fitted detector is on the CPU.
        """
        train, val = split_validation(torch.from_numpy(self.init_fit(X, y)), self.validation_fraction)
        self.module_.to(device)
        generator = torch.Generator().manual_seed(self.seed)
        train_loader = DataLoader(TensorDataset(train), batch_size=self.batch_size, shuffle=True, generator=generator)
        val_loader = DataLoader(TensorDataset(val), batch_size=EVAL_BATCH_SIZE)
        optimizer, scheduler = make_optimizer(self.module_, self.lr, self.weight_decay)
        state = run_epochs(self.module_, train_loader, val_loader, optimizer, scheduler, epochs=self.epochs,
                           patience=self.patience, grad_clip=self.grad_clip, device=torch.device(device))
        self.module_.cpu()
        self.history_ = state.history
        return self.finish_fit(X, y, state.best_module)

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

    def sensor_contributions(self, X: np.ndarray) -> np.ndarray:
        """Each row's score split over the sensors, shape (rows, sensors); a row sums to its
        :meth:`decision_function` score. A sensor's part is its squared reconstruction error, added up
        over the rows of the sample that scores the row (its lags, or the window ending at it), with the
        weights the score gives them (docs/attribution.md)."""
        self._check_fitted()
        X = self._validate(X, fitted=True)
        samples = torch.from_numpy(self.to_samples(self.scaler_.transform(X).astype(np.float32)))
        terms = score_batches(self.module_, samples, head="score_terms").numpy()
        return self.rows_from_scores(terms.reshape(len(terms), -1, self.n_features_in_).sum(axis=1), len(X))

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
        """Write the fitted detector to a directory: config JSON, weights (a ``state_dict``), scaler JSON."""
        self._check_fitted()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        config = {"family": self.family, "params": self.get_params(), "n_features_in": self.n_features_in_,
                  "threshold": getattr(self, "threshold_", None),
                  "threshold_method": getattr(self, "threshold_method_", None)}
        (out / DETECTOR_CONFIG).write_text(json.dumps(config, indent=2))
        torch.save({"module": self.module_.state_dict(), "extra": self._extra_state()}, out / DETECTOR_WEIGHTS)
        (out / DETECTOR_SCALER).write_text(json.dumps(scaler_to_dict(self.scaler_)))
        return out


class DenseDetector(BaseDeepDetector):
    """A detector of single rows, each stacked with its ``self.lags`` previous rows as
    :func:`raysys.models.pca.lagged` stacks them (``[x_t, x_t-1, ...]``; the first rows repeat the
    first row as their history): the network reads ``n_sensors * (lags + 1)`` values per sample."""

    def input_width(self, n_features: int) -> int:
        """Network inputs per sample for ``n_features`` sensors."""
        return n_features * (self.lags + 1)

    def to_samples(self, Z: np.ndarray) -> np.ndarray:
        return lagged(Z, self.lags)


class SequenceDetector(BaseDeepDetector):
    """A detector over sliding windows of ``self.window`` consecutive rows (training windows every
    ``self.stride`` rows, scoring windows every row); each row is scored by the window ending at it."""

    def min_rows(self) -> int:
        return self.window

    def to_samples(self, Z: np.ndarray) -> np.ndarray:
        return sliding_windows(Z, self.window, 1)

    def training_samples(self, Z: np.ndarray) -> np.ndarray:
        return sliding_windows(Z, self.window, self.stride)

    def rows_from_scores(self, scores: np.ndarray, n_rows: int) -> np.ndarray:
        return window_scores_to_rows(scores, n_rows, self.window)


#: The pickled scaler of detectors saved before raysys 0.2 (refused: a pickle can run code).
LEGACY_SCALER = "scaler.joblib"


def load_weights(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: not a raysys weights file (torch.load(weights_only=True) refused it: it holds "
                         f"more than tensors and plain data, which could run code)") from exc


def restore(detector: BaseDeepDetector, path: str | os.PathLike, config: dict[str, Any]) -> BaseDeepDetector:
    """Fill an unfitted ``detector`` with the fitted state saved in ``path`` (``config``: its detector.json)."""
    root = Path(path)
    if not (root / DETECTOR_SCALER).exists():
        if (root / LEGACY_SCALER).exists():
            raise ValueError(f"{root}: the scaler is stored as a pickle ({LEGACY_SCALER}, the format of raysys < 0.2), "
                             f"which raysys no longer loads since it can run code; expected {DETECTOR_SCALER}: "
                             "retrain the detector")
        raise FileNotFoundError(f"{root}: no {DETECTOR_SCALER}; not a saved raysys detector")
    detector.n_features_in_ = config["n_features_in"]
    detector.module_ = detector.build_module(detector.n_features_in_)
    state = load_weights(root / DETECTOR_WEIGHTS)
    detector.module_.load_state_dict(state["module"])
    detector.module_.eval()
    detector._load_extra_state(state["extra"])
    detector.scaler_ = scaler_from_dict(json.loads((root / DETECTOR_SCALER).read_text()), str(root / DETECTOR_SCALER))
    if config.get("threshold") is not None:
        detector.set_threshold(config["threshold"], config.get("threshold_method") or TRAIN_QUANTILE)
    return detector
