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
- :func:`holdout_calibration` is the label-free rule every stage uses on normal rows in time order
  (the ensemble without labels, ``raysys recalibrate``): the threshold comes from the first
  ``1 - HOLDOUT_FRACTION`` of the rows and its false-alarm rate is measured on the newest
  ``HOLDOUT_FRACTION``, rows the model never saw and the threshold was not set on. The label-free
  gate asks that measured rate to stay within :data:`GATE_FACTOR` times the asked one.
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
#: The share of the newest normal rows held out to measure a label-free threshold's false-alarm rate.
HOLDOUT_FRACTION = 0.3
#: Label-free gate: the held-out false-alarm rate may be at most this many times the asked rate.
#: 2 leaves room for the binomial spread of a held-out count (at 1% of 3,000 rows, 30 alarms expected,
#: the 99th percentile is about 44, 1.45x) and for slow drift, and still catches a threshold that
#: does not transfer (a shifted regime measures 5-20x).
GATE_FACTOR = 2.0
#: A held-out tail is measured only when the asked rate expects at least this many false alarms on
#: it; fewer rows calibrate on everything, and the gate cannot be applied.
MIN_HOLDOUT_ALARMS = 5


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


def cross_fit_scores(estimator: Any, X: np.ndarray, y: np.ndarray | None = None, folds: int = 5,
                     context: int = 0) -> np.ndarray:
    """Out-of-fold scores: each of ``folds`` contiguous blocks of ``X`` (in time order) scored by a
    clone of ``estimator`` fitted on the other blocks (``decision_function``; higher is more anomalous).

    ``y``, if given, is passed to ``fit`` (known anomalies are left out of training). ``context``: rows
    before each block scored with it, their scores dropped, so a detector that reads a row's history
    (lags, windows, smoothing) sees the real one at the block's start, as it does in service, instead
    of the padding a series' first rows get (measured on TEP: padded block starts raised the CVA
    detector's out-of-fold 99th percentile from 5.0 to 10.9, above any normal test score).
    """
    X = np.asarray(X)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if len(X) < 2 * folds:
        raise ValueError(f"need at least {2 * folds} rows for {folds} folds, got {len(X)}")
    if context < 0:
        raise ValueError(f"context must be >= 0 rows, got {context}")
    bounds = np.linspace(0, len(X), folds + 1).astype(int)
    out = np.empty(len(X), dtype=np.float64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        keep = np.r_[0:a, b:len(X)]
        model = clone(estimator)
        model.fit(X[keep], None if y is None else np.asarray(y)[keep])
        start = max(0, a - context)
        out[a:b] = model.decision_function(X[start:b])[a - start:]
    return out


def false_alarm_rate(scores: np.ndarray, threshold: float, forced: np.ndarray | None = None) -> float:
    """Share of (normal) rows flagged: above ``threshold``, or flagged whatever the score (``forced``)."""
    flagged = np.asarray(scores) > threshold
    if forced is not None:
        flagged |= np.asarray(forced, dtype=bool)
    return float(flagged.mean()) if len(flagged) else math.nan


def holdout_calibration(scores: np.ndarray, target_far: float, forced: np.ndarray | None = None,
                        holdout_fraction: float = HOLDOUT_FRACTION) -> dict[str, Any]:
    """The label-free threshold for ``target_far`` from normal ``scores`` in time order, and its
    false-alarm rate measured on rows it was not set on.

    With enough rows (see :data:`MIN_HOLDOUT_ALARMS`) the threshold is :func:`tail_threshold` of the
    first ``1 - holdout_fraction`` of the rows, and the rate is also measured on the rest (the newest).
    ``forced`` rows (flagged whatever their score, e.g. out of range) are left out of the tail and
    counted as false alarms.

    Returns:
        ``threshold``, ``target_far``, ``rows``, ``calibration_rows``, ``holdout_rows`` (0: no held-out
        check), ``calibration_far``, ``holdout_far`` (None without a held-out tail) and
        ``holdout_far_ratio`` (``holdout_far / target_far``, None without one).
    """
    if not 0.0 < target_far < 1.0:
        raise ValueError(f"target false-alarm rate must be in (0, 1), got {target_far}")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {holdout_fraction}")
    scores = np.asarray(scores, dtype=np.float64)
    forced = np.zeros(len(scores), dtype=bool) if forced is None else np.asarray(forced, dtype=bool)
    n = len(scores)
    holdout = round(n * holdout_fraction)
    if holdout * target_far < MIN_HOLDOUT_ALARMS:
        holdout = 0
    cut = n - holdout
    threshold = tail_threshold(scores[:cut][~forced[:cut]], target_far)
    holdout_far = false_alarm_rate(scores[cut:], threshold, forced[cut:]) if holdout else None
    return {"threshold": threshold, "target_far": float(target_far), "rows": n, "calibration_rows": cut,
            "holdout_rows": holdout, "calibration_far": false_alarm_rate(scores[:cut], threshold, forced[:cut]),
            "holdout_far": holdout_far,
            "holdout_far_ratio": None if holdout_far is None else holdout_far / target_far}


def label_free_metrics(threshold: float, test_flagged: np.ndarray, holdout_flagged: np.ndarray | None,
                       target_far: float | None) -> dict[str, Any]:
    """What an evaluation without labels reports: the share of test rows flagged (``alarm_rate``) and
    the false-alarm rate measured on the held-out normal rows beside the asked one.

    ``holdout_flagged``: which held-out rows were flagged (None: no held-out rows). On unlabelled data
    the held-out rows are taken as normal, so anomalies among them count as false alarms (the measured
    rate is an upper bound).
    """
    out: dict[str, Any] = {"labelled": False, "threshold": float(threshold),
                           "alarm_rate": float(np.mean(test_flagged)), "far_asked": target_far}
    if holdout_flagged is not None and len(holdout_flagged):
        far = float(np.mean(holdout_flagged))
        out.update(heldout_false_alarm_rate=far, heldout_rows=len(holdout_flagged),
                   heldout_far_ratio=None if not target_far else far / target_far)
    return out


def label_free_threshold(scores: np.ndarray, method: str, target_far: float = 0.01, percentile: float = 99.0
                         ) -> tuple[float, dict[str, Any] | None]:
    """The threshold of unlabelled validation ``scores`` (in time order, all taken as normal) and, for
    ``far``, the :func:`holdout_calibration` it came from (None for ``percentile``)."""
    from raysys.evaluation.metrics import calibrate_threshold

    if method == "far":
        measured = holdout_calibration(scores, target_far)
        return measured["threshold"], measured
    return calibrate_threshold(method, None, scores, percentile, target_far), None
