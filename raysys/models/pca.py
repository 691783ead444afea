"""PCA monitoring: Hotelling's T2 and the squared prediction error (SPE, or Q), static or dynamic.

The classic multivariate statistical process control detector (Jackson, "A User's Guide to
Principal Components", 1991; dynamic PCA: Ku, Storer & Georgakakis, 1995). Each row is stacked
with its ``lags`` previous rows (dynamic PCA; the first rows of a series repeat the first row for
the history they lack), standardised with the training mean and standard deviation, and projected
on the principal components that keep ``n_components`` of the variance:

- ``T2 = sum_j t_j**2 / lambda_j``, the Mahalanobis distance within the retained components;
- ``SPE = ||z - P P^T z||**2``, what the retained components cannot reconstruct;
- ``combined = T2 / k + SPE / theta``, each divided by its mean on normal data (``k`` retained
  components, ``theta`` the sum of the discarded eigenvalues), so both weigh alike.

``smoothing`` > 1 replaces a row's statistic by its mean over the trailing ``smoothing`` rows (fewer
at the start of a series; :func:`raysys.ensemble.runtime.trailing_mean`, which also smooths ensemble
scores): small persistent shifts stand out of the noise, at the cost of a delay.

Numpy and scikit-learn only (no torch). The fitted state is plain numpy arrays ending in ``_``, so the
scorer is a fixed affine map, a matrix product and sums of squares (what an ONNX export needs).
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from raysys.ensemble.runtime import trailing_mean  # the ensemble's score smoothing too: one definition
from raysys.models.params import check_rows

#: Values of ``PCADetector.score``.
PCA_SCORES = ("t2", "spe", "combined")


def lagged(X: np.ndarray, lags: int) -> np.ndarray:
    """Each row followed by its ``lags`` previous rows: shape (n, d * (lags + 1)); ``[x_t, x_t-1, ...]``.

    Rows at the start lacking a history repeat the first row (left padding).
    """
    if lags == 0:
        return X
    padded = np.concatenate([np.repeat(X[:1], lags, axis=0), X])
    n = len(X)
    return np.hstack([padded[lags - k:lags - k + n] for k in range(lags + 1)])


def nonzero_scale(scale: np.ndarray) -> np.ndarray:
    """``scale`` with zeros replaced by 1 (a constant feature is centred, not divided)."""
    return np.where(scale > 0, scale, 1.0)


def quadratic(Z: np.ndarray, loadings: np.ndarray, variances: np.ndarray | float = 1.0) -> np.ndarray:
    """``sum_j t_j**2 / v_j`` per row, ``t = Z @ L^T`` (T2 on PCA's components, CVA's statistics)."""
    return np.sum((Z @ loadings.T) ** 2 / variances, axis=1)


def quadratic_terms(Z: np.ndarray, loadings: np.ndarray, variances: np.ndarray | float = 1.0) -> np.ndarray:
    """Each stacked feature's term of :func:`quadratic`: ``z_f * ((t / v) @ L)_f`` (they sum to it; a term
    can be negative)."""
    return Z * (((Z @ loadings.T) / variances) @ loadings)


def per_sensor(terms: np.ndarray, n_sensors: int) -> np.ndarray:
    """Stacked-feature terms (n, sensors * (lags + 1)) added up per sensor over the lags: (n, sensors)."""
    return terms.reshape(len(terms), -1, n_sensors).sum(axis=1)


class PCADetector(BaseEstimator):
    """PCA (or dynamic PCA) detector scoring rows by T2, SPE or both.

    Args:
        n_components: Share of the variance the retained components explain (a float in (0, 1)), or
            their number (an int >= 1, fewer than the stacked features).
        lags: Previous rows stacked with each row (0: static PCA; dynamic PCA otherwise).
        score: What ``decision_function`` returns: ``"t2"``, ``"spe"`` or ``"combined"``.
        scaler: ``"standard"`` (the only one: PCA on correlations, as in process monitoring).
        smoothing: Rows in the trailing mean of the statistic (1: none).
    """

    def __init__(self, n_components: float | int = 0.9, lags: int = 0, score: str = "spe",
                 scaler: str = "standard", smoothing: int = 1):
        self.n_components = n_components
        self.lags = lags
        self.score = score
        self.scaler = scaler
        self.smoothing = smoothing

    # -- checks --------------------------------------------------------------------
    def _check_params(self) -> None:
        nc = self.n_components
        if isinstance(nc, bool) or not isinstance(nc, numbers.Real):
            raise ValueError(f"n_components must be a variance fraction in (0, 1) or an int >= 1, got {nc!r}")
        if isinstance(nc, numbers.Integral) and nc < 1 or not isinstance(nc, numbers.Integral) and not 0 < nc < 1:
            raise ValueError(f"n_components must be a variance fraction in (0, 1) or an int >= 1, got {nc!r}")
        if isinstance(self.lags, bool) or not isinstance(self.lags, numbers.Integral) or self.lags < 0:
            raise ValueError(f"lags must be an int >= 0, got {self.lags!r}")
        if self.score not in PCA_SCORES:
            raise ValueError(f"score must be one of {PCA_SCORES}, got {self.score!r}")
        if self.scaler != "standard":
            raise ValueError(f"scaler must be 'standard' for PCA, got {self.scaler!r}")
        if isinstance(self.smoothing, bool) or not isinstance(self.smoothing, numbers.Integral) or self.smoothing < 1:
            raise ValueError(f"smoothing must be an int >= 1, got {self.smoothing!r}")

    def _validate(self, X: np.ndarray, fitted: bool) -> np.ndarray:
        return check_rows(X, np.float64, self.n_features_in_ if fitted else None)

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit first")

    # -- fitting -------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "PCADetector":
        """Fit the scaler and the principal components on normal rows (in time order).

        Args:
            X: Raw sensor values, shape (rows, sensors).
            y: Optional 0/1 labels; rows marked 1 are left out (after stacking their history).
        """
        self._check_params()
        X = self._validate(X, fitted=False)
        self.n_features_in_ = X.shape[1]
        S = lagged(X, self.lags)
        if y is not None:
            y = np.asarray(y)
            if len(y) != len(X):
                raise ValueError(f"y has {len(y)} labels for {len(X)} rows of X")
            S = S[y == 0]
        if len(S) < 2:
            raise ValueError(f"need at least 2 normal rows to fit PCA, got {len(S)}")
        self.mean_ = S.mean(axis=0)
        scale = S.std(axis=0)
        self.scale_ = nonzero_scale(scale)  # constant sensors: centred, not divided
        Z = (S - self.mean_) / self.scale_
        _, sing, vt = np.linalg.svd(Z, full_matrices=False)
        eigen = sing ** 2 / (len(Z) - 1)
        total = eigen.sum()
        if isinstance(self.n_components, numbers.Integral):
            k = int(self.n_components)
            if k >= Z.shape[1] or k > len(eigen):
                raise ValueError(f"n_components={k} must be less than the {Z.shape[1]} stacked features and at most "
                                 f"the {len(eigen)} components the {len(Z)} rows give")
        else:
            k = int(np.searchsorted(np.cumsum(eigen) / total, self.n_components) + 1)
            k = min(k, len(eigen))
        self.n_components_ = k
        self.components_ = vt[:k].copy()  # (k, stacked features), rows are unit loadings
        self.explained_variance_ = eigen[:k].copy()
        self.explained_variance_ratio_ = self.explained_variance_ / total
        residual = eigen[k:].sum()
        # mean SPE on normal data; a tiny floor keeps the combined index finite when nothing is left
        self.residual_variance_ = np.asarray(max(float(residual), 1e-12 * float(total)))
        return self

    # -- scoring -------------------------------------------------------------------
    def _scaled(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = self._validate(X, fitted=True)
        return (lagged(X, self.lags) - self.mean_) / self.scale_

    def _spe_terms(self, Z: np.ndarray) -> np.ndarray:
        """Each stacked feature's squared residual (they sum to SPE)."""
        return (Z - (Z @ self.components_.T) @ self.components_) ** 2

    def _t2(self, Z: np.ndarray) -> np.ndarray:
        return quadratic(Z, self.components_, self.explained_variance_)

    def _spe(self, Z: np.ndarray) -> np.ndarray:
        return np.sum(self._spe_terms(Z), axis=1)

    def t2(self, X: np.ndarray) -> np.ndarray:
        """Hotelling's T2 of each row on the retained components (before ``smoothing``)."""
        return self._t2(self._scaled(X))

    def spe(self, X: np.ndarray) -> np.ndarray:
        """Squared prediction error of each row (before ``smoothing``)."""
        return self._spe(self._scaled(X))

    def t2_contributions(self, X: np.ndarray) -> np.ndarray:
        """Each sensor's part of each row's T2, shape (rows, sensors); rows sum to :meth:`t2`."""
        return per_sensor(quadratic_terms(self._scaled(X), self.components_, self.explained_variance_),
                          self.n_features_in_)

    def spe_contributions(self, X: np.ndarray) -> np.ndarray:
        """Each sensor's squared residuals (over its lags), shape (rows, sensors); rows sum to :meth:`spe`."""
        return per_sensor(self._spe_terms(self._scaled(X)), self.n_features_in_)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row (``score``, smoothed over ``smoothing`` rows): higher is more anomalous."""
        Z = self._scaled(X)
        if self.score == "t2":
            stat = self._t2(Z)
        elif self.score == "spe":
            stat = self._spe(Z)
        else:
            stat = self._t2(Z) / self.n_components_ + self._spe(Z) / float(self.residual_variance_)
        return trailing_mean(stat, self.smoothing)
