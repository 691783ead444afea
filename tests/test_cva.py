"""The CVA detector (canonical variate analysis) and out-of-fold scores with real history."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from raysys.evaluation.calibration import cross_fit_scores
from raysys.models.cva import CVADetector
from raysys.models.pca import PCADetector, lagged, trailing_mean


def _dynamic(n: int = 1500, d: int = 6, phi: float = 0.9, seed: int = 0) -> np.ndarray:
    """``d`` correlated sensors driven by AR(1) sources with coefficient ``phi`` (unit variance each),
    so the past predicts the future when ``phi`` != 0."""
    rng = np.random.default_rng(seed)
    sources = np.zeros((n, 3))
    noise = rng.normal(size=(n, 3)) * np.sqrt(1 - phi ** 2)
    sources[0] = rng.normal(size=3)
    for t in range(1, n):
        sources[t] = phi * sources[t - 1] + noise[t]
    mixing = np.random.default_rng(99).normal(size=(3, d))  # the same sensors whatever the seed
    return sources @ mixing * 3 + rng.normal(size=(n, d)) * 0.3 + 10


def test_canonical_variates_have_unit_variance_and_no_correlation_on_the_fit_rows():
    X = _dynamic()
    det = CVADetector(lags=2, future=2, n_states=4, ridge=0.0).fit(X)  # the ridge bends orthogonality a little
    Z = (lagged(X, 2)[2:len(X) - 2] - det.mean_) / det.scale_  # the past vectors fitted on
    variates = Z @ np.vstack([det.state_loadings_, det.residual_loadings_]).T
    np.testing.assert_allclose(variates.std(axis=0), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.corrcoef(variates.T), np.eye(variates.shape[1]), atol=1e-6)
    assert det.n_states_ == 4 and det.state_loadings_.shape == (4, 18) and det.residual_loadings_.shape == (14, 18)
    # the three AR sources make three strong past-future correlations, the rest is noise
    corr = det.canonical_correlations_
    assert np.all(np.diff(corr) <= 1e-12) and corr[2] > 0.8 and corr[6] < 0.3


@pytest.mark.parametrize("score", ["ts", "tr", "combined"])
def test_decision_function_is_the_chosen_statistic(score):
    X = _dynamic()
    det = CVADetector(score=score).fit(X)
    k, r = det.n_states_, len(det.residual_loadings_)
    expected = {"ts": det.ts(X), "tr": det.tr(X), "combined": det.ts(X) / k + det.tr(X) / r}[score]
    np.testing.assert_allclose(det.decision_function(X), expected)
    assert det.n_states_ == X.shape[1] // 2  # the default: half the sensors
    if score == "combined":  # each part has mean ~1 on the training rows
        assert 0.9 < expected.mean() / 2 < 1.1
    smoothed = CVADetector(score=score, smoothing=4).fit(X).decision_function(X)
    np.testing.assert_allclose(smoothed, trailing_mean(expected, 4))


def test_a_change_of_dynamics_that_static_pca_cannot_see():
    """The same covariance with the past no longer predicting the future (AR coefficient 0.9 -> 0):
    every row looks normal on its own, so static PCA's score stays put; CVA's residual breaks."""
    X, same, changed = _dynamic(seed=0), _dynamic(seed=1), _dynamic(phi=0.0, seed=1)
    cva, pca = CVADetector().fit(X), PCADetector(score="combined").fit(X)
    assert cva.decision_function(changed).mean() > 2 * cva.decision_function(same).mean()
    assert pca.decision_function(changed).mean() < 1.3 * pca.decision_function(same).mean()


def test_labelled_anomalies_do_not_move_the_fit():
    X = _dynamic(n=600)
    y = np.zeros(len(X), dtype=int)
    y[200:220] = 1
    wild = X.copy()
    wild[200:220] = 1e4
    a, b = CVADetector().fit(X, y), CVADetector().fit(wild, y)
    np.testing.assert_allclose(a.state_loadings_, b.state_loadings_)
    np.testing.assert_allclose(a.mean_, b.mean_)
    assert not np.allclose(CVADetector().fit(wild).mean_, a.mean_)
    with pytest.raises(ValueError, match="3 labels for 600 rows"):
        CVADetector().fit(X, y[:3])


@pytest.mark.parametrize("params, message", [
    ({"lags": -1}, "lags"), ({"future": 0}, "future"), ({"n_states": 0}, "n_states"),
    ({"n_states": 18}, "n_states=18 must be less than the 18 past features"), ({"score": "q"}, "score"),
    ({"ridge": -1.0}, "ridge"), ({"smoothing": 0}, "smoothing"),
])
def test_bad_params_are_named_at_fit(params, message):
    det = CVADetector(**params)  # __init__ only stores
    with pytest.raises(ValueError, match=message):
        det.fit(_dynamic())


def test_follows_the_estimator_contract():
    det = CVADetector(lags=1, n_states=2)
    assert clone(det).get_params() == det.get_params()
    with pytest.raises(NotFittedError):
        det.decision_function(_dynamic())
    assert det.fit(_dynamic()) is det
    with pytest.raises(ValueError, match="3 sensors, expected 6"):
        det.decision_function(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="need at least 7 rows"):
        CVADetector(lags=2, future=3).fit(_dynamic()[:6])


def test_cross_fit_context_gives_each_block_its_real_history():
    """With ``context`` a block's first rows are scored after the rows before it, as in service; without,
    they get a series' padding (a lagged detector's first ``lags`` scores differ, the rest agree)."""
    X = _dynamic(n=400)
    det = CVADetector(lags=2, n_states=2)
    folds, a, b = 4, 100, 200  # the second block
    keep = np.r_[0:a, b:len(X)]
    expected = clone(det).fit(X[keep]).decision_function(X[:b])[a:b]
    np.testing.assert_allclose(cross_fit_scores(det, X, folds=folds, context=5)[a:b], expected)
    padded = cross_fit_scores(det, X, folds=folds)[a:b]
    np.testing.assert_allclose(padded[2:], expected[2:])
    assert not np.allclose(padded[:2], expected[:2])
    with pytest.raises(ValueError, match="context"):
        cross_fit_scores(det, X, context=-1)


@pytest.mark.parametrize("score", ["ts", "tr", "combined"])
def test_statistic_its_contributions_and_its_onnx_member_follow_the_score(score, tmp_path):
    """``statistic`` is the score before smoothing; its per-sensor parts add up to it; the ensemble
    member exported from the detector scores it (and its parts) within the parity tolerance."""
    from raysys.ensemble.export import export_member

    X, X_new = _dynamic(), _dynamic(phi=0.5, seed=4)
    det = CVADetector(score=score, smoothing=3).fit(X)
    np.testing.assert_allclose(det.decision_function(X_new), trailing_mean(det.statistic(X_new), 3))
    np.testing.assert_allclose(det.contributions(X_new).sum(axis=1), det.statistic(X_new), rtol=1e-9)
    member = export_member("cva", det, tmp_path, {"validation": X_new, "random": X_new[::-1] * 1.5})
    assert member.family == "cva" and member.window == 3 and member.outputs == {"cva": "score"}
    assert max(max(check.values()) for check in member.parity.values()) <= 1e-4


def test_directions_the_fit_rows_barely_span_are_not_blown_up():
    """Fewer past-future pairs than past features: a direction the rows do not span has a spread of
    rounding noise (~1e-16); it is divided by MIN_VARIATE_STD instead, so no loading exceeds the
    ridge's whitening (1 / sqrt(ridge)) over MIN_VARIATE_STD (unfloored: ~1e16)."""
    from raysys.models.cva import MIN_VARIATE_STD

    X = _dynamic(n=40, d=12)  # 36 pairs for 36 past features (lags 2)
    det = CVADetector().fit(X)
    loadings = np.vstack([det.state_loadings_, det.residual_loadings_])
    assert np.linalg.norm(loadings, axis=1).max() <= 1.001 / (np.sqrt(det.ridge) * MIN_VARIATE_STD)
    assert np.isfinite(det.decision_function(_dynamic(n=200, d=12, seed=5))).all()
