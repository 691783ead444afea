"""The label-free ensemble the pipeline builds, as one scikit-learn estimator (for benchmarks).

``raysys pipeline`` on data without labels fits each family's detector on the training split, then
on the validation split (rows it was not fitted on) normalises every member's score by its median and
interquartile range and averages them with equal weights (docs/detection.md, "Without labels").
:class:`LabelFreeEnsemble` does the same on one array: the members are fitted on the first
``1 - validation_fraction`` of the rows and normalised on the rest, and ``decision_function`` is the
ensemble score computed from the source models (:func:`raysys.ensemble.build.source_ensemble_scores`,
equal to the exported ensemble's within the ONNX parity tolerance). So a benchmark can treat the
ensemble like any other detector (cross-fitted thresholds included) without exporting it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from raysys.ensemble.build import CVA, IFOREST, PCA, source_ensemble_scores
from raysys.ensemble.calibrate import normalisation_stats
from raysys.ensemble.export import detector_window, source_scores


class LabelFreeEnsemble(BaseEstimator):
    """Equal-weight mean of robust-normalised member scores (the pipeline's rule without labels).

    Args:
        families: Deep families, each built with its defaults (``raysys.models.build_detector``).
        iforest: Add an Isolation Forest member (scikit-learn defaults).
        pca: Add the PCA detector's two members, T2 and SPE (90% variance, no lags).
        cva: Add the CVA detector's member, its combined statistic (its defaults).
        validation_fraction: Newest share of the rows the members are normalised on, not fitted on.
        seed: Seed of every member.
    """

    def __init__(self, families: Sequence[str] = ("ae", "vae", "lstm", "conv"), iforest: bool = True,
                 pca: bool = True, cva: bool = False, validation_fraction: float = 0.3, seed: int = 0):
        self.families = families
        self.iforest = iforest
        self.pca = pca
        self.cva = cva
        self.validation_fraction = validation_fraction
        self.seed = seed

    def _models(self) -> dict[str, Any]:
        from sklearn.ensemble import IsolationForest

        from raysys.models import build_detector
        from raysys.models.cva import CVADetector
        from raysys.models.pca import PCADetector

        models: dict[str, Any] = {family: build_detector(family, seed=self.seed) for family in self.families}
        if self.iforest:
            models[IFOREST] = IsolationForest(random_state=self.seed)
        if self.pca:
            models[PCA] = PCADetector(lags=0)
        if self.cva:
            models[CVA] = CVADetector()
        if not models:
            raise ValueError("no members: give a family or keep the Isolation Forest, PCA or CVA")
        return models

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "LabelFreeEnsemble":
        """Fit the members on the older rows of ``X`` (time order), normalise on the newer ones."""
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        X = np.asarray(X, dtype=np.float32)
        cut = int(round(len(X) * (1.0 - self.validation_fraction)))
        self.models_ = {name: model.fit(X[:cut]) for name, model in self._models().items()}
        members = []
        for name, model in self.models_.items():
            for output, scores in source_scores(model, X[cut:]).items():
                members.append({"file": f"{name}.onnx", "output": output, "window": detector_window(model),
                                "raw": np.asarray(scores, dtype=np.float64)})
        center, scale = normalisation_stats(np.column_stack([m.pop("raw") for m in members]))
        for member, c, s in zip(members, center, scale):
            member.update(center=float(c), scale=float(s), weight=1.0 / len(members))
        self.members_ = members
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The ensemble score of each row of ``X`` (rows in time order; higher is more anomalous)."""
        check_is_fitted(self, "members_")
        return source_ensemble_scores(self.models_, {"members": self.members_}, np.asarray(X, dtype=np.float32))
