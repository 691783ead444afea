"""Canonical variate analysis (CVA) monitoring: a state statistic and a residual statistic.

The dynamic counterpart of PCA for processes under feedback control (Larimore 1990; for monitoring,
Russell, Chiang & Braatz, "Fault detection in industrial processes using canonical variate analysis
and dynamic principal component analysis", Chemometrics and Intelligent Laboratory Systems 51, 2000;
Odiowei & Cao, IEEE Trans. Industrial Informatics 6(1), 2010). Each row is stacked with its ``lags``
previous rows (the *past* vector ``p_t = [x_t, x_t-1, ...]``, as :func:`raysys.models.pca.lagged`
stacks them; the first rows of a series repeat the first row) and standardised. Fitting pairs every
past vector with its *future* ``f_t = [x_t+1, ..., x_t+future]`` and finds the directions of the past
that best predict the future: the SVD of ``Spp^-1/2 Spf Sff^-1/2`` (covariances of the standardised
vectors, ``Spp`` and ``Sff`` with a ridge of ``ridge`` times their mean variance). Its left singular
vectors mapped back through ``Spp^-1/2`` are the canonical directions, each with unit variance on
the training rows:

- ``ts``: the sum of squares of the first ``n_states`` canonical variates (the process state);
- ``tr``: the sum of squares of the others (the residual space);
- ``combined = ts / n_states + tr / (features - n_states)``: each divided by its mean on normal data.

A lasting change the controllers compensate (a step that a loop brings back to its set point) leaves
the past-future correlation broken while each reading looks normal, which static and dynamic PCA miss
(Tennessee Eastman fault 5: docs/detection.md). Scoring reads only the past vector, so a row is scored
from itself and its ``lags`` previous rows, like dynamic PCA; the future is used in ``fit`` only.

Numpy only. The fitted state is plain arrays ending in ``_`` (standardisation, then two matrix products
and sums of squares), which :func:`raysys.ensemble.export.export_cva` writes as ONNX: one ensemble
member whose score is :meth:`CVADetector.statistic`, the detector's own score before smoothing.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from raysys.ensemble.runtime import trailing_mean
from raysys.models.params import check_rows
from raysys.models.pca import lagged, nonzero_scale, per_sensor, quadratic, quadratic_terms

#: Values of ``CVADetector.score``.
CVA_SCORES = ("ts", "tr", "combined")
#: Least spread a canonical variate is scaled by: a direction the fit rows barely span (fewer pairs
#: than past features, collinear sensors) is not blown up from rounding noise (on TEP's 500 rows the
#: smallest spread is 0.014, so this never binds there; on 100 rows it does).
MIN_VARIATE_STD = 1e-3


def _inverse_sqrt(cov: np.ndarray, ridge: float) -> np.ndarray:
    """``(cov + ridge * mean variance * I) ** -1/2`` of a symmetric covariance."""
    regularised = cov + ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
    values, vectors = np.linalg.eigh(regularised)
    return (vectors / np.sqrt(np.maximum(values, 1e-12 * values.max()))) @ vectors.T


class CVADetector(BaseEstimator):
    """CVA detector scoring rows by the state statistic, the residual statistic or both.

    Args:
        lags: Previous rows stacked with each row in the past vector (the past horizon is ``lags + 1``).
        future: Rows after each row in the future vector ``fit`` correlates the past with.
        n_states: Canonical variates kept as the state (None: half the sensors, at least 1).
        score: What ``decision_function`` returns: ``"ts"``, ``"tr"`` or ``"combined"``.
        ridge: Regularisation of the covariances, as a share of their mean variance (the past vector
            has ``sensors * (lags + 1)`` features, estimated from few rows).
        smoothing: Rows in the trailing mean of the statistic (1: none).
    """

    def __init__(self, lags: int = 2, future: int = 3, n_states: int | None = None, score: str = "combined",
                 ridge: float = 1e-3, smoothing: int = 1):
        self.lags = lags
        self.future = future
        self.n_states = n_states
        self.score = score
        self.ridge = ridge
        self.smoothing = smoothing

    # -- checks --------------------------------------------------------------------
    def _check_params(self) -> None:
        for name in ("lags", "future", "smoothing"):
            value, least = getattr(self, name), 0 if name == "lags" else 1
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        k = self.n_states
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"n_states must be an int >= 1 or None, got {k!r}")
        if self.score not in CVA_SCORES:
            raise ValueError(f"score must be one of {CVA_SCORES}, got {self.score!r}")
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, numbers.Real) or not self.ridge >= 0:
            raise ValueError(f"ridge must be a number >= 0, got {self.ridge!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "state_loadings_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit first")

    # -- fitting -------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "CVADetector":
        """Fit the standardisation and the canonical directions on normal rows in time order.

        Args:
            X: Raw sensor values, shape (rows, sensors), one series in time order.
            y: Optional 0/1 labels; a past-future pair that reads a row marked 1 is left out.
        """
        self._check_params()
        X = check_rows(X, np.float64)
        self.n_features_in_ = d = X.shape[1]
        features = d * (self.lags + 1)
        k = max(1, d // 2) if self.n_states is None else int(self.n_states)
        if k >= features:
            raise ValueError(f"n_states={k} must be less than the {features} past features "
                             f"({d} sensors x {self.lags + 1} rows)")
        n, f = len(X), self.future
        first, end = self.lags, n - f  # pairs with a full past (no padding) and a full future
        if end - first < 2:
            raise ValueError(f"need at least {self.lags + f + 2} rows for lags={self.lags} and future={f}, got {n}")
        past = lagged(X, self.lags)
        futures = np.hstack([X[1 + j:n - f + 1 + j] for j in range(f)])[first:]
        past = past[first:end]
        if y is not None:
            y = np.asarray(y)
            if len(y) != n:
                raise ValueError(f"y has {len(y)} labels for {n} rows of X")
            bad = np.convolve(y != 0, np.ones(self.lags + f + 1), mode="full")[first + f:end + f] > 0
            past, futures = past[~bad], futures[~bad]
            if len(past) < 2:
                raise ValueError(f"need at least 2 normal past-future pairs to fit CVA, got {len(past)}")
        self.mean_ = past.mean(axis=0)
        self.scale_ = nonzero_scale(past.std(axis=0))  # constant sensors: centred, not divided
        P = (past - self.mean_) / self.scale_
        F = (futures - futures.mean(axis=0)) / nonzero_scale(futures.std(axis=0))
        m = len(P) - 1
        w_past = _inverse_sqrt(P.T @ P / m, self.ridge)
        u, corr, _ = np.linalg.svd(w_past @ (P.T @ F / m) @ _inverse_sqrt(F.T @ F / m, self.ridge))
        directions = u.T @ w_past  # canonical directions in the standardised past, strongest first
        # unit variance on the fit rows, except directions they barely span
        directions /= np.maximum((P @ directions.T).std(axis=0), MIN_VARIATE_STD)[:, None]
        self.n_states_ = k
        self.canonical_correlations_ = np.concatenate([corr, np.zeros(features - len(corr))])
        self.state_loadings_ = directions[:k].copy()
        self.residual_loadings_ = directions[k:].copy()
        return self

    # -- scoring -------------------------------------------------------------------
    def _scaled(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = check_rows(X, np.float64, self.n_features_in_)
        return (lagged(X, self.lags) - self.mean_) / self.scale_

    def ts(self, X: np.ndarray) -> np.ndarray:
        """The state statistic of each row (before ``smoothing``)."""
        return quadratic(self._scaled(X), self.state_loadings_)

    def tr(self, X: np.ndarray) -> np.ndarray:
        """The residual statistic of each row (before ``smoothing``)."""
        return quadratic(self._scaled(X), self.residual_loadings_)

    def statistic_weights(self) -> tuple[float, float]:
        """``(a, b)`` with ``statistic = a * ts + b * tr`` for the chosen ``score``."""
        self._check_fitted()
        return {"ts": (1.0, 0.0), "tr": (0.0, 1.0),
                "combined": (1.0 / self.n_states_, 1.0 / len(self.residual_loadings_))}[self.score]

    def statistic(self, X: np.ndarray) -> np.ndarray:
        """The chosen ``score`` statistic of each row (before ``smoothing``)."""
        a, b = self.statistic_weights()
        Z = self._scaled(X)
        return a * quadratic(Z, self.state_loadings_) + b * quadratic(Z, self.residual_loadings_)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Each sensor's part of each row's :meth:`statistic`, shape (rows, sensors); rows sum to it."""
        a, b = self.statistic_weights()
        Z = self._scaled(X)
        terms = a * quadratic_terms(Z, self.state_loadings_) + b * quadratic_terms(Z, self.residual_loadings_)
        return per_sensor(terms, self.n_features_in_)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row (:meth:`statistic`, smoothed over ``smoothing`` rows): higher is more anomalous."""
        return trailing_mean(self.statistic(X), self.smoothing)
