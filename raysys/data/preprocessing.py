"""Scalers fitted on the training split, and sliding windows for sequence models."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.preprocessing import MinMaxScaler, StandardScaler

SCALERS = {"standard": StandardScaler, "minmax": MinMaxScaler}


def fit_scaler(kind: str, X: np.ndarray) -> StandardScaler | MinMaxScaler:
    """Fit a scikit-learn scaler (``standard`` or ``minmax``) on training rows."""
    if kind not in SCALERS:
        raise ValueError(f"scaler must be one of {sorted(SCALERS)}, got {kind!r}")
    return SCALERS[kind]().fit(X)


def scaler_affine(scaler: StandardScaler | MinMaxScaler) -> tuple[np.ndarray, np.ndarray]:
    """The scaler as ``x * scale + offset`` (what ONNX export folds into the graph)."""
    if isinstance(scaler, StandardScaler):
        scale = 1.0 / scaler.scale_
        return scale, -scaler.mean_ * scale
    return scaler.scale_, scaler.min_


def sliding_windows(X: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Windows of ``length`` consecutive rows every ``stride`` rows: shape (n, length, features)."""
    if length < 1 or stride < 1:
        raise ValueError(f"window length and stride must be >= 1, got length={length}, stride={stride}")
    if len(X) < length:
        raise ValueError(f"need at least {length} rows for windows of length {length}, got {len(X)}")
    view = sliding_window_view(X, length, axis=0)[::stride]  # (n, features, length)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def window_scores_to_rows(scores: np.ndarray, n_rows: int, length: int) -> np.ndarray:
    """Map stride-1 window scores to rows: each row gets the score of the window ending at it.

    The first ``length - 1`` rows, which end no full window, take the first window's score.
    """
    if len(scores) != n_rows - length + 1:
        raise ValueError(f"expected {n_rows - length + 1} stride-1 window scores, got {len(scores)}")
    return np.concatenate([np.full(length - 1, scores[0]), scores])
