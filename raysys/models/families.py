"""The detector families by name: build one, load a saved one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from raysys.layout import DETECTOR_CONFIG
from raysys.models.autoencoder import AutoEncoderDetector
from raysys.models.base import BaseDeepDetector, restore
from raysys.models.conv import ConvDetector
from raysys.models.lstm import LSTMDetector
from raysys.models.params import FAMILY_NAMES, check_params
from raysys.models.vae import VAEDetector

FAMILIES: dict[str, type[BaseDeepDetector]] = {
    "ae": AutoEncoderDetector,
    "vae": VAEDetector,
    "lstm": LSTMDetector,
    "conv": ConvDetector,
}
assert sorted(FAMILIES) == sorted(FAMILY_NAMES), "raysys.models.params.FAMILY_NAMES must list every family"


def build_detector(family: str, **params: Any) -> BaseDeepDetector:
    """An unfitted detector of ``family`` (``ae``, ``vae``, ``lstm`` or ``conv``) with ``params``.

    Unknown parameters and values out of a parameter's domain raise ``ValueError`` naming them.
    """
    if family not in FAMILIES:
        raise ValueError(f"model family must be one of {sorted(FAMILIES)}, got {family!r}")
    cls = FAMILIES[family]
    return cls(**check_params(family, params, list(cls().get_params())))


def load_detector(path: str | os.PathLike) -> BaseDeepDetector:
    """Load a detector written by ``BaseDeepDetector.save``."""
    config_path = Path(path) / DETECTOR_CONFIG
    if not config_path.exists():
        raise FileNotFoundError(f"{path}: no {DETECTOR_CONFIG}; not a saved raysys detector")
    try:
        config = json.loads(config_path.read_text())
        family, params = config["family"], config["params"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{config_path}: not a raysys detector config ({type(exc).__name__}: {exc})") from exc
    return restore(build_detector(family, **params), path, config)
