"""Detectors: dense autoencoder, VAE, LSTM and 1-D convolutional autoencoders (the deep families,
trained with Ray Train), and the classical PCA T2 / SPE detector, each a scikit-learn estimator.

The family names and parameter rules (:mod:`raysys.models.params`) import without torch; the
estimators (``FAMILIES``, ``build_detector``, ``load_detector``, the classes) are imported on
first use, so a command line that only parses arguments stays fast.
"""

from __future__ import annotations

from raysys._lazy import lazy_exports
from raysys.layout import DETECTOR_DIR
from raysys.models.params import FAMILY_NAMES, PARAM_RULES, check_param, check_params, with_spellings

_LAZY = {
    "FAMILIES": "raysys.models.families",
    "build_detector": "raysys.models.families",
    "load_detector": "raysys.models.families",
    "BaseDeepDetector": "raysys.models.base",
    "ConvAutoEncoder": "raysys.models.conv",
    "ConvDetector": "raysys.models.conv",
    "AutoEncoderDetector": "raysys.models.autoencoder",
    "DenseAutoEncoder": "raysys.models.autoencoder",
    "LSTMDetector": "raysys.models.lstm",
    "LSTMAutoEncoder": "raysys.models.lstm",
    "PCADetector": "raysys.models.pca",
    "VAEDetector": "raysys.models.vae",
    "VariationalAutoEncoder": "raysys.models.vae",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["DETECTOR_DIR", "FAMILY_NAMES", "PARAM_RULES", "check_param", "check_params", "with_spellings", *_LAZY]
