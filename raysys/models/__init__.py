"""Detectors: dense autoencoder, VAE and LSTM autoencoder, each with the estimator contract."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from raysys.models.autoencoder import AutoEncoderDetector, DenseAutoEncoder
from raysys.models.base import CONFIG_FILE, DETECTOR_DIR, BaseDeepDetector, restore
from raysys.models.lstm import LSTMAutoEncoder, LSTMDetector
from raysys.models.vae import VAEDetector, VariationalAutoEncoder

FAMILIES: dict[str, type[BaseDeepDetector]] = {
    "ae": AutoEncoderDetector,
    "vae": VAEDetector,
    "lstm": LSTMDetector,
}


def build_detector(family: str, **params: Any) -> BaseDeepDetector:
    """An unfitted detector of ``family`` (``ae``, ``vae`` or ``lstm``) with ``params``."""
    if family not in FAMILIES:
        raise ValueError(f"model family must be one of {sorted(FAMILIES)}, got {family!r}")
    detector = FAMILIES[family]()
    unknown = sorted(set(params) - set(detector.get_params()))
    if unknown:
        raise ValueError(f"unknown {family} parameter(s) {unknown}; expected some of {sorted(detector.get_params())}")
    return FAMILIES[family](**params)


def load_detector(path: str | os.PathLike) -> BaseDeepDetector:
    """Load a detector written by ``BaseDeepDetector.save``."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a saved raysys detector")
    config = json.loads(config_path.read_text())
    return restore(build_detector(config["family"], **config["params"]), path)


__all__ = [
    "DETECTOR_DIR", "FAMILIES", "AutoEncoderDetector", "BaseDeepDetector", "DenseAutoEncoder", "LSTMAutoEncoder", "LSTMDetector",
    "VAEDetector", "VariationalAutoEncoder", "build_detector", "load_detector",
]
