"""Scalers fitted on the training split, and sliding windows for sequence models."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

#: ``robust`` (median / interquartile range) resists outliers and drift in "normal" training data.
SCALERS = {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}
Scaler = StandardScaler | MinMaxScaler | RobustScaler


def fit_scaler(kind: str, X: np.ndarray) -> Scaler:
    """Fit a scikit-learn scaler (``standard``, ``minmax`` or ``robust``) on training rows."""
    if kind not in SCALERS:
        raise ValueError(f"scaler must be one of {sorted(SCALERS)}, got {kind!r}")
    return SCALERS[kind]().fit(X)


#: The fitted attributes of each scaler, as stored in a detector's ``scaler.json``.
_FITTED = {"standard": ("mean_", "var_", "scale_", "n_samples_seen_"),
           "minmax": ("min_", "scale_", "data_min_", "data_max_", "data_range_", "n_samples_seen_"),
           "robust": ("center_", "scale_")}


def scaler_to_dict(scaler: Scaler) -> dict:
    """A fitted scaler as plain JSON-able data (no pickle)."""
    kind = next(k for k, cls in SCALERS.items() if type(scaler) is cls)
    fitted = {name: np.asarray(getattr(scaler, name)).tolist() for name in _FITTED[kind]}
    return {"kind": kind, "params": scaler.get_params(), "n_features_in": int(scaler.n_features_in_), **fitted}


def scaler_from_dict(data: dict, source: str = "scaler") -> Scaler:
    """The scaler :func:`scaler_to_dict` wrote; ``ValueError`` naming ``source`` and what is wrong."""
    kind = data.get("kind")
    if kind not in SCALERS:
        raise ValueError(f"{source}: scaler kind must be one of {sorted(SCALERS)}, got {kind!r}")
    missing = [k for k in ("params", "n_features_in", *_FITTED[kind]) if k not in data]
    if missing:
        raise ValueError(f"{source}: {kind} scaler lacks {missing}")
    params = dict(data["params"])
    for key in ("feature_range", "quantile_range"):
        if key in params:
            params[key] = tuple(params[key])
    scaler = SCALERS[kind](**params)
    scaler.n_features_in_ = int(data["n_features_in"])
    for name in _FITTED[kind]:
        value = np.asarray(data[name], dtype=np.float64)
        setattr(scaler, name, value if value.ndim else value.item())
    if np.ndim(getattr(scaler, "n_samples_seen_", None)) == 0 and hasattr(scaler, "n_samples_seen_"):
        scaler.n_samples_seen_ = int(scaler.n_samples_seen_)
    return scaler


def scaler_affine(scaler: Scaler) -> tuple[np.ndarray, np.ndarray]:
    """The scaler as ``x * scale + offset`` (what ONNX export folds into the graph)."""
    if isinstance(scaler, StandardScaler):
        scale = 1.0 / scaler.scale_
        return scale, -scaler.mean_ * scale
    if isinstance(scaler, RobustScaler):
        scale = 1.0 / scaler.scale_
        return scale, -scaler.center_ * scale
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
    """Map stride-1 window scores (one per window, or one row of values per window) to rows: each row
    gets the score of the window ending at it.

    The first ``length - 1`` rows, which end no full window, take the first window's score.
    """
    if len(scores) != n_rows - length + 1:
        raise ValueError(f"expected {n_rows - length + 1} stride-1 window scores, got {len(scores)}")
    return np.concatenate([np.repeat(scores[:1], length - 1, axis=0), scores])
