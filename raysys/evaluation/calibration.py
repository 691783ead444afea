"""Label-free thresholds: a false-alarm rate asked for, kept on normal data the model was not fitted on.

Two problems make a quantile of training scores miss its promise: training scores are optimistic
(the model has seen those rows), and small samples give poor tails (a 1% quantile of 500 scores
rests on 5 points). So:

- :func:`cross_fit_scores` scores every row with a model that did not see it: the rows are cut into
  ``folds`` contiguous blocks in time order, each block is scored by a clone fitted on the others.
- :func:`tail_threshold` turns normal scores into the threshold for a false-alarm rate: the
  empirical quantile when enough scores lie above it, else a peaks-over-threshold estimate, a
  generalised Pareto distribution fitted to the excesses over a high quantile (Siffer et al.,
  "Anomaly Detection in Streams with Extreme Value Theory", KDD 2017).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import stats
from sklearn.base import clone

#: Fewest normal scores above an empirical quantile for it to be trusted; below, the tail is modelled.
MIN_EXCEEDANCES = 20
#: Share of the highest normal scores the tail model is fitted on.
TAIL_FRACTION = 0.1


def tail_threshold(normal_scores: np.ndarray, target_far: float, min_exceedances: int = MIN_EXCEEDANCES,
                   tail_fraction: float = TAIL_FRACTION) -> float:
    """The score above which about ``target_far`` of normal rows lie (flag when ``score > threshold``).

    With at least ``min_exceedances`` scores above the ``1 - target_far`` quantile, that quantile;
    otherwise the peaks-over-threshold estimate ``t + sigma / xi * ((target_far * n / k) ** -xi - 1)``,
    with ``t`` the ``1 - tail_fraction`` quantile, ``k`` the scores above it and ``(xi, sigma)`` the
    generalised Pareto fit of their excesses (``xi = 0``: the exponential limit). A fit that fails or
    extrapolates below the highest quantile it could trust falls back to the largest observed score.
    """
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64))
    scores = scores[np.isfinite(scores)]
    if not 0.0 < target_far < 1.0:
        raise ValueError(f"target false-alarm rate must be in (0, 1), got {target_far}")
    if len(scores) < 2:
        raise ValueError(f"need at least 2 finite normal scores to calibrate a threshold, got {len(scores)}")
    n = len(scores)
    if target_far * n >= min_exceedances:
        return float(np.quantile(scores, 1.0 - target_far, method="higher"))
    t = float(np.quantile(scores, 1.0 - tail_fraction))
    excesses = scores[scores > t] - t
    if len(excesses) < 5 or not np.ptp(excesses) > 0:
        return float(scores[-1])
    ratio = target_far * n / len(excesses)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xi, _, sigma = stats.genpareto.fit(excesses, floc=0.0)
    except Exception:  # an optimiser failure is a missing estimate, not an error
        return float(scores[-1])
    if not (math.isfinite(xi) and math.isfinite(sigma) and sigma > 0):
        return float(scores[-1])
    z = t - sigma * math.log(ratio) if abs(xi) < 1e-6 else t + sigma / xi * (ratio ** -xi - 1.0)
    # never below what the data itself supports: the empirical quantile of the asked rate
    floor = float(np.quantile(scores, 1.0 - target_far, method="higher"))
    return float(max(z, floor)) if math.isfinite(z) else float(scores[-1])


def cross_fit_scores(estimator: Any, X: np.ndarray, y: np.ndarray | None = None, folds: int = 5) -> np.ndarray:
    """Out-of-fold scores: each of ``folds`` contiguous blocks of ``X`` (in time order) scored by a
    clone of ``estimator`` fitted on the other blocks (``decision_function``; higher is more anomalous).

    ``y``, if given, is passed to ``fit`` (known anomalies are left out of training).
    """
    X = np.asarray(X)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if len(X) < 2 * folds:
        raise ValueError(f"need at least {2 * folds} rows for {folds} folds, got {len(X)}")
    bounds = np.linspace(0, len(X), folds + 1).astype(int)
    out = np.empty(len(X), dtype=np.float64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        keep = np.r_[0:a, b:len(X)]
        model = clone(estimator)
        model.fit(X[keep], None if y is None else np.asarray(y)[keep])
        out[a:b] = model.decision_function(X[a:b])
    return out
