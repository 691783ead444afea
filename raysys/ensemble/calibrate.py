"""Calibration on the validation split: member normalisation and ensemble weights.

- Normalisation: each member's raw score becomes ``(raw - median) / IQR`` of its scores on the
  validation split's *normal* rows, so members with different score ranges are comparable.
- Weights: greedy ensemble selection with replacement (Caruana et al., 2004): ``rounds`` times, add
  the member whose addition most improves the validation objective of the mean; the weights are
  the counts of the round whose mix scored best (as the paper selects its final ensemble), so the
  chosen mix scores at least as well on validation as the best member alone (round one). The
  objective is what the threshold method aims at: the F1 at the best-F1 threshold, else the recall
  at the threshold that keeps the false-alarm budget.

The decision threshold itself is :func:`raysys.evaluation.calibrate_threshold` on the ensemble score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, recall_score

from raysys.ensemble.runtime import combine
from raysys.evaluation import calibrate_threshold


def normalisation_stats(raw_normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-member centre (median) and scale (interquartile range) of raw scores on normal rows."""
    if len(raw_normal) < 2:
        raise ValueError(f"need at least 2 normal validation rows to normalise scores, got {len(raw_normal)}")
    q25, center, q75 = np.percentile(raw_normal, [25, 50, 75], axis=0)
    scale = q75 - q25
    # a member constant on most normal rows: fall back to its standard deviation, then to 1
    scale = np.where(scale > 0, scale, np.std(raw_normal, axis=0))
    return center, np.where(scale > 0, scale, 1.0)


def objective(y: np.ndarray, scores: np.ndarray, method: str = "best_f1", **threshold_kwargs: Any
              ) -> tuple[float, float]:
    """What weight selection maximises: (F1 for ``best_f1``, else recall, at the calibrated threshold;
    average precision to break ties)."""
    flagged = scores > calibrate_threshold(method, y, scores, **threshold_kwargs)
    value = f1_score(y, flagged) if method == "best_f1" else recall_score(y, flagged)
    return float(value), float(average_precision_score(y, scores))


def select_weights(normalised: np.ndarray, y: np.ndarray, method: str = "best_f1", rounds: int = 10,
                   windows: np.ndarray | None = None, **threshold_kwargs: Any) -> np.ndarray:
    """Member weights (summing to 1) by greedy selection with replacement on validation scores.

    Args:
        normalised: Normalised member scores on the validation split, shape (rows, members).
        y: Validation labels (0 normal, 1 anomaly); both must occur.
        method: Threshold method (``raysys.evaluation.THRESHOLD_METHODS``) whose objective is maximised.
        rounds: Selection rounds; weights are multiples of ``1 / rounds``.
        windows: Rows each member looks at, for :func:`raysys.ensemble.runtime.combine`.
        **threshold_kwargs: ``percentile`` / ``target_far`` for the threshold method.
    """
    if normalised.ndim != 2 or len(normalised) != len(y):
        raise ValueError(f"expected scores (rows, members) for {len(y)} labels, got shape {normalised.shape}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not (np.any(y == 1) and np.any(y == 0)):
        raise ValueError("validation labels must hold both normal (0) and anomalous (1) rows to choose weights")
    counts = np.zeros(normalised.shape[1])
    candidates = np.eye(len(counts))
    best: tuple[tuple[float, float], np.ndarray] | None = None
    for _ in range(rounds):
        trials = [objective(y, combine(normalised, (counts + c) / (counts.sum() + 1), windows), method,
                            **threshold_kwargs)
                  for c in candidates]
        chosen = max(range(len(trials)), key=trials.__getitem__)
        counts[chosen] += 1
        if best is None or trials[chosen] > best[0]:
            best = (trials[chosen], counts / counts.sum())
    return best[1]
