"""The detector families' names, the domain of every detector parameter and of their input (no torch).

``build_detector`` checks parameters against these rules before anything trains, and the sweep
config checks its search space with the same rules, so ``raysys train --param dropout=2`` and a
sweep drawing ``dropout`` from ``[0, 2]`` fail the same way, naming the parameter and the value.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

#: Detector families (``raysys.models.FAMILIES`` maps each to its estimator class).
FAMILY_NAMES = ("ae", "conv", "lstm", "vae")
#: The scalers a detector may fit on its training rows.
SCALER_NAMES = ("minmax", "robust", "standard")


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _int_list(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v))


#: Parameter name -> (type, check, what the check means). Parameters not listed are checked by name only.
PARAM_RULES: dict[str, tuple[type | None, Callable[[Any], bool], str]] = {
    "lr": (float, _positive, "> 0"),
    "weight_decay": (float, _non_negative, ">= 0"),
    "dropout": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta": (float, _non_negative, ">= 0"),
    "grad_clip": (float, _non_negative, ">= 0"),
    "contamination": (float, lambda v: 0 < v < 0.5, "in (0, 0.5)"),
    "validation_fraction": (float, lambda v: 0 < v < 1, "in (0, 1)"),
    "batch_size": (int, _positive, ">= 1"),
    "epochs": (int, _positive, ">= 1"),
    "patience": (int, _positive, ">= 1"),
    "latent_dim": (int, _positive, ">= 1"),
    "hidden_size": (int, _positive, ">= 1"),
    "num_layers": (int, _positive, ">= 1"),
    "window": (int, lambda v: v >= 2, ">= 2"),
    "lags": (int, _non_negative, ">= 0"),
    "stride": (int, _positive, ">= 1"),
    "seed": (int, _non_negative, ">= 0"),
    "kernel_size": (int, lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1"),
    "hidden_dims": (None, _int_list, "a non-empty list of positive integers"),
    "channels": (None, _int_list, "a non-empty list of positive integers"),
    "scaler": (str, lambda v: v in SCALER_NAMES, " or ".join(repr(s) for s in SCALER_NAMES)),
}


#: Settings that are user-facing spellings of a detector parameter (``raysys train --max-epochs``,
#: the sweep's ``max_epochs``): setting name -> parameter name.
SPELLINGS = {"max_epochs": "epochs", "patience": "patience"}


def with_spellings(params: Mapping[str, Any], **settings: Any) -> dict[str, Any]:
    """``params`` with the :data:`SPELLINGS` in ``settings`` (``None``: not given) written in.

    A setting that contradicts an explicit parameter raises ``ValueError`` naming both.
    """
    out = dict(params)
    for setting, value in settings.items():
        if value is None:
            continue
        name = SPELLINGS[setting]
        if name in out and out[name] != value:
            raise ValueError(f"{setting}={value!r} conflicts with the detector parameter {name}={out[name]!r}; "
                             f"give one of them")
        out[name] = value
    return out


def as_number(value: Any, where: str) -> int | float:
    """A YAML number; also accepts strings such as ``1e-4`` that YAML 1.1 reads as text."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    raise ValueError(f"{where}: expected a number, got {value!r}")


def check_param(name: str, value: Any, where: str) -> Any:
    """``value`` of detector parameter ``name``, coerced to its type; ``ValueError`` if out of its domain."""
    rule = PARAM_RULES.get(name)
    if rule is None:
        return value
    kind, check, meaning = rule
    if kind in (int, float):
        value = as_number(value, where)
        if kind is int:
            if float(value) != int(value):
                raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
    elif kind is str and not isinstance(value, str):
        raise ValueError(f"{where}: {name} must be {meaning}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be finite, got {value!r}")
    if not check(value):
        raise ValueError(f"{where}: {name} must be {meaning}, got {value!r}")
    return list(value) if isinstance(value, tuple) else value


def check_params(family: str, params: Mapping[str, Any], known: list[str]) -> dict[str, Any]:
    """``params`` of a ``family`` detector whose parameters are ``known``, each checked and coerced."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown {family} parameter(s) {unknown}; expected some of {sorted(known)}")
    return {name: check_param(name, value, f"{family} parameter") for name, value in params.items()}


def check_rows(X: Any, dtype: type, n_features: int | None = None, min_rows: int = 1) -> np.ndarray:
    """``X`` as a 2-D ``dtype`` array of finite sensor rows; ``ValueError`` naming what is wrong.

    ``n_features``: the sensors the detector was fitted on (None before ``fit``).
    """
    X = np.asarray(X, dtype=dtype)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows, sensors), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} sensors, expected {n_features} as in fit")
    if len(X) < min_rows:
        raise ValueError(f"X needs at least {min_rows} rows, got {len(X)}")
    return X
