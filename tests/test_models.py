"""The detectors' estimator contract, in-process without Ray: fit / decision_function / predict /
save / load_detector, the VAE's latent scores, and parameter checking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from raysys.data import load_dataset
from raysys.models import FAMILIES, VAEDetector, build_detector, load_detector

FAST = {"ae": {"epochs": 4}, "vae": {"epochs": 4}, "lstm": {"epochs": 2, "window": 8, "stride": 2},
        "conv": {"epochs": 3, "window": 8, "stride": 2}}


@pytest.fixture(scope="module")
def data(small_dataset):
    return load_dataset(small_dataset)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fitted(request, data):
    """One detector per family, fitted once on the small dataset's training split."""
    family = request.param
    detector = build_detector(family, seed=0, **FAST[family])
    returned = detector.fit(data.features("train"), data.labels("train"))
    return family, detector, returned


def test_fit_returns_self_with_fitted_state(fitted, data):
    family, detector, returned = fitted
    assert returned is detector
    assert type(detector) is FAMILIES[family] and detector.family == family
    assert detector.n_features_in_ == len(data.sensors)
    assert np.isfinite(detector.threshold_)
    assert 1 <= len(detector.history_) <= FAST[family]["epochs"]
    assert all(np.isfinite([h["train_loss"], h["val_loss"]]).all() for h in detector.history_)
    # the threshold flags `contamination` of the normal training rows
    assert detector.decision_scores_.shape == ((data.labels("train") == 0).sum(),)
    assert np.mean(detector.decision_scores_ > detector.threshold_) == pytest.approx(detector.contamination,
                                                                                    abs=0.005)


def test_decision_function_and_predict_shapes_and_values(fitted, data):
    _, detector, _ = fitted
    X, y = data.features("test"), data.labels("test")
    scores = detector.decision_function(X)
    assert scores.shape == (len(X),) and np.isfinite(scores).all() and (scores >= 0).all()
    predictions = detector.predict(X)
    assert predictions.shape == (len(X),) and predictions.dtype == np.int64
    assert set(np.unique(predictions)) <= {0, 1}
    np.testing.assert_array_equal(predictions, (scores > detector.threshold_).astype(int))
    # scoring is deterministic (dropout and VAE sampling are off outside training)
    np.testing.assert_array_equal(detector.decision_function(X), scores)
    # a few epochs already rank anomalies above normal rows
    assert roc_auc_score(y, scores) > 0.8


def test_save_load_round_trip_gives_identical_scores(fitted, data, tmp_path):
    family, detector, _ = fitted
    path = detector.save(tmp_path / "detector")
    assert sorted(p.name for p in path.iterdir()) == ["detector.json", "model.pt", "scaler.json"]
    config = json.loads((path / "detector.json").read_text())
    assert config["family"] == family and config["params"]["epochs"] == FAST[family]["epochs"]
    loaded = load_detector(path)
    assert type(loaded) is type(detector) and loaded is not detector
    # list parameters (hidden_dims, channels) come back from JSON as lists
    assert loaded.get_params() == {k: list(v) if isinstance(v, tuple) else v for k, v in detector.get_params().items()}
    assert loaded.threshold_ == detector.threshold_
    X = data.features("test")
    np.testing.assert_array_equal(loaded.decision_function(X), detector.decision_function(X))
    np.testing.assert_array_equal(loaded.predict(X), detector.predict(X))
    if isinstance(detector, VAEDetector):
        for name, scores in detector.latent_scores(X).items():
            np.testing.assert_array_equal(loaded.latent_scores(X)[name], scores)


def test_vae_reports_latent_mahalanobis_and_euclidean_scores(data):
    detector = build_detector("vae", epochs=4, seed=0).fit(data.features("train"), data.labels("train"))
    X, y = data.features("test"), data.labels("test")
    latent = detector.latent_scores(X)
    assert set(latent) == {"euclidean", "mahalanobis"}
    for scores in latent.values():
        assert scores.shape == (len(X),) and np.isfinite(scores).all() and (scores >= 0).all()
    assert not np.allclose(latent["euclidean"], latent["mahalanobis"])
    # Mahalanobis distance of the training latents averages about sqrt(latent_dim)
    train_latent = detector.latent_scores(data.features("train")[data.labels("train") == 0])["mahalanobis"]
    assert np.mean(train_latent ** 2) == pytest.approx(detector.latent_dim, rel=0.2)
    assert roc_auc_score(y, latent["mahalanobis"]) > 0.6


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unfitted_detector_raises_not_fitted(family, tmp_path):
    detector = build_detector(family)
    X = np.zeros((32, 5), dtype=np.float32)
    for call in (lambda: detector.decision_function(X), lambda: detector.predict(X),
                 lambda: detector.save(tmp_path / "d")):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call()
    if family == "vae":
        with pytest.raises(NotFittedError):
            detector.latent_scores(X)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_init_only_stores_parameters(family):
    detector = build_detector(family, lr=0.5, batch_size=7)
    assert detector.get_params()["lr"] == 0.5 and detector.get_params()["batch_size"] == 7
    assert not [name for name in vars(detector) if name.endswith("_")]


@pytest.mark.parametrize(("family", "params", "bad"), [
    ("ae", {"latent": 4}, "latent"),
    ("vae", {"beta": 1.0, "kl_weight": 2.0}, "kl_weight"),
    ("lstm", {"hidden_dims": [8]}, "hidden_dims"),
    ("conv", {"hidden_size": 8}, "hidden_size"),
])
def test_unknown_parameter_is_a_value_error_naming_it(family, params, bad):
    with pytest.raises(ValueError, match=f"unknown {family} parameter.*'{bad}'"):
        build_detector(family, **params)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_detectors_are_scikit_learn_estimators(family):
    detector = build_detector(family, lr=0.01, epochs=3)
    copy = clone(detector)
    assert copy is not detector and copy.get_params() == detector.get_params()
    assert copy.set_params(lr=0.5) is copy and copy.get_params()["lr"] == 0.5 and detector.lr == 0.01
    with pytest.raises(ValueError, match="Invalid parameter"):
        copy.set_params(nonsense=1)


@pytest.mark.parametrize(("params", "match"), [
    ({"dropout": 2}, r"dropout must be in \[0, 1\), got 2"),
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
    ({"scaler": "robustish"}, "scaler must be 'minmax' or 'robust' or 'standard', got 'robustish'"),
])
def test_out_of_range_parameter_is_rejected_by_build_detector(params, match):
    with pytest.raises(ValueError, match=match):
        build_detector("ae", **params)


@pytest.mark.parametrize(("params", "match"), [
    ({"kernel_size": 4}, "kernel_size must be an odd integer >= 1, got 4"),
    ({"channels": []}, r"channels must be a non-empty list of positive integers, got \[\]"),
    ({"channels": [16, 0]}, "channels must be a non-empty list"),
    ({"window": 1}, "window must be >= 2, got 1"),
])
def test_conv_parameters_are_checked(params, match):
    with pytest.raises(ValueError, match=match):
        build_detector("conv", **params)


@pytest.mark.parametrize("window", [2, 5, 8, 13, 16, 32])
@pytest.mark.parametrize(("channels", "kernel_size"), [((16, 32), 3), ((8,), 5), ((8, 8, 16), 1)])
def test_conv_reconstructs_windows_of_any_length(window, channels, kernel_size):
    """Stride-2 layers round odd lengths up; the decoder's output padding brings every window back whole."""
    detector = build_detector("conv", window=window, channels=list(channels), kernel_size=kernel_size)
    module = detector.build_module(5).eval()
    x = torch.randn(3, window, 5)
    (recon,) = module(x)
    assert recon.shape == x.shape
    assert module.score(x, (recon,)).shape == (3,)


def test_loading_never_unpickles_code(fitted, tmp_path):
    """Weights load with torch.load(weights_only=True) and scalers from JSON: a crafted pickle is
    refused, and the code it carries never runs."""
    family, detector, _ = fitted
    path = detector.save(tmp_path / "d")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"module": Payload(), "extra": {}}, path / "model.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_detector(path)
    assert not marker.exists()

    detector.save(path)
    (path / "scaler.json").unlink()
    (path / "scaler.joblib").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"pickle \(scaler.joblib, the format of raysys < 0.2\)"):
        load_detector(path)


def test_unknown_family_is_a_value_error():
    with pytest.raises(ValueError, match="model family must be one of .*'iforest'"):
        build_detector("iforest")


@pytest.mark.parametrize(("X", "match"), [
    (np.zeros((50, 4), dtype=np.float32), "X has 4 sensors, expected 5"),
    (np.zeros(50, dtype=np.float32), "X must be 2-D"),
    (np.full((50, 5), np.nan, dtype=np.float32), "NaN or infinite"),
])
def test_scoring_validates_input(fitted, X, match):
    _, detector, _ = fitted
    with pytest.raises(ValueError, match=match):
        detector.decision_function(X)


@pytest.mark.parametrize("family", ["lstm", "conv"])
def test_sequence_detectors_need_a_full_window(family, data):
    detector = build_detector(family, window=8, epochs=1)
    with pytest.raises(ValueError, match="at least 8 rows, got 5"):
        detector.fit(data.features("train")[:5])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_is_reproducible_given_seed(family, data):
    X = data.features("train")[:600]
    params = {**FAST[family], "epochs": 1}
    first = build_detector(family, seed=3, **params).fit(X)
    again = build_detector(family, seed=3, **params).fit(X)
    for a, b in zip(first.module_.state_dict().values(), again.module_.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(first.decision_function(X), again.decision_function(X))


def test_known_anomalies_are_left_out_of_training(data):
    X, y = data.features("train"), data.labels("train")
    detector = build_detector("lstm", window=8, stride=1)
    samples = detector.init_fit(X, y)
    # windows touching a labelled row are dropped; every other window is kept
    touched = np.convolve(y, np.ones(8), mode="valid") > 0
    assert samples.shape == ((~touched).sum(), 8, X.shape[1])
    dense = build_detector("ae").init_fit(X, y)
    assert dense.shape == ((y == 0).sum(), X.shape[1])


@pytest.mark.parametrize("scaler", ["standard", "minmax", "robust"])
def test_every_scaler_saves_as_json_and_folds_into_an_affine_map(scaler, data, tmp_path):
    from raysys.data.preprocessing import scaler_affine

    detector = build_detector("ae", scaler=scaler, epochs=1).fit(data.features("train"), data.labels("train"))
    X = data.features("test")[:50]
    loaded = load_detector(detector.save(tmp_path / scaler))
    np.testing.assert_array_equal(loaded.scaler_.transform(X), detector.scaler_.transform(X))
    np.testing.assert_allclose(loaded.decision_function(X), detector.decision_function(X), rtol=1e-6)
    scale, offset = scaler_affine(detector.scaler_)
    np.testing.assert_allclose(X * scale + offset, detector.scaler_.transform(X), rtol=1e-5, atol=1e-6)
