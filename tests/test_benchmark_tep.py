"""The Tennessee Eastman benchmark: the headerless reader, PCA T2/SPE, the protocol and ``raysys benchmark tep``.

Runs on the slice of the published files in ``tests/data/tep`` (see its README); no Ray, no torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from raysys.benchmarks import tep
from raysys.data.io import DataValidationError, read_numeric_table
from raysys.models.pca import PCADetector, lagged, trailing_mean

SLICE = Path(__file__).parent / "data" / "tep"


# -- the reader ------------------------------------------------------------------------------------
def test_reader_transposes_d00_to_samples_by_sensors():
    frame = read_numeric_table(SLICE / "d00.dat", transpose=True)
    assert frame.shape == (120, 53)
    assert list(frame.columns) == ["timestamp", *(f"x{i}" for i in range(1, 53))]
    assert (frame["timestamp"].diff().dropna() == pd.Timedelta("3min")).all()
    first_line = [float(v) for v in (SLICE / "d00.dat").read_text().splitlines()[0].split()]
    np.testing.assert_allclose(frame["x1"].to_numpy(), first_line)  # a line of d00.dat is one sensor


def test_reader_reads_samples_per_line_with_names_and_interval():
    names = tep.SENSOR_NAMES
    frame = read_numeric_table(SLICE / "d01_te.dat", sample_interval="1s", columns=names)
    assert frame.shape == (200, 53)
    assert list(frame.columns[1:]) == names
    assert frame["timestamp"].iloc[1] - frame["timestamp"].iloc[0] == pd.Timedelta("1s")


def test_reader_accepts_commas(tmp_path):
    path = tmp_path / "values.csv"
    path.write_text("1.0,2.0, 3\n4,5e0 ,6\n\n")
    frame = read_numeric_table(path)
    np.testing.assert_array_equal(frame[["x1", "x2", "x3"]].to_numpy(), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("text, kwargs, message", [
    ("1 2 3\n4 5\n", {}, r"line 2 has 2 values, expected 3"),
    ("1 2 3\n4 oops 6\n", {}, r"non-numeric value 'oops' on line 2"),
    ("a b c\n1 2 3\n", {}, r"non-numeric value 'a' on line 1"),
    ("1 2 3\n4 5 6\n", {"columns": ["a", "b"]}, r"2 column names given for 3 sensors"),
    ("1 2 3\n4 5 6\n", {"transpose": True, "columns": ["a", "b", "c"]}, r"3 column names given for 2 sensors"),
    ("1 2 3\n", {"sample_interval": "often"}, r"sample interval 'often'"),
    ("\n\n", {}, r"no numbers"),
])
def test_reader_errors_name_the_file(tmp_path, text, kwargs, message):
    path = tmp_path / "bad.dat"
    path.write_text(text)
    with pytest.raises(DataValidationError, match=message) as info:
        read_numeric_table(path, **kwargs)
    assert str(path) in str(info.value)


def test_prepare_no_header_reads_then_validates(tmp_path):
    from raysys.cli import main

    out = tmp_path / "d00"
    assert main(["prepare", "--input", str(SLICE / "d00.dat"), "--no-header", "--transpose",
                 "--out", str(out)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["rows"] == 120 and meta["sensors"][:2] == ["x1", "x2"] and len(meta["sensors"]) == 52
    assert main(["prepare", "--input", str(SLICE / "d00.dat"), "--transpose", "--out", str(tmp_path / "x")]) == 2


# -- PCA -------------------------------------------------------------------------------------------
def _correlated(n: int = 300, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)) * 5 + rng.normal(size=(n, d)) + 10


@pytest.mark.parametrize("n_components", [0.9, 3])
def test_pca_t2_and_spe_match_sklearn(n_components):
    X, X_new = _correlated(), _correlated(seed=1)
    det = PCADetector(n_components=n_components).fit(X)
    scaler = StandardScaler().fit(X)
    pca = PCA(n_components=n_components, svd_solver="full").fit(scaler.transform(X))
    Z = scaler.transform(X_new)
    t = pca.transform(Z)
    np.testing.assert_allclose(det.t2(X_new), np.sum(t ** 2 / pca.explained_variance_, axis=1), rtol=1e-8)
    np.testing.assert_allclose(det.spe(X_new), np.sum((Z - pca.inverse_transform(t)) ** 2, axis=1), rtol=1e-8)
    assert det.n_components_ == pca.n_components_
    np.testing.assert_allclose(det.explained_variance_, pca.explained_variance_, rtol=1e-8)
    assert isinstance(det.mean_, np.ndarray) and isinstance(det.components_, np.ndarray)


@pytest.mark.parametrize("score", ["t2", "spe", "combined"])
def test_pca_decision_function_is_the_chosen_statistic(score):
    X = _correlated()
    det = PCADetector(score=score).fit(X)
    expected = {"t2": det.t2(X), "spe": det.spe(X),
                "combined": det.t2(X) / det.n_components_ + det.spe(X) / det.residual_variance_}[score]
    np.testing.assert_allclose(det.decision_function(X), expected)
    if score == "combined":  # each part has mean ~1 on the training rows
        assert 0.9 < expected.mean() / 2 < 1.1


def test_dynamic_pca_stacks_lags_with_left_padding():
    X = np.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(lagged(X, 2), [[0, 1, 0, 1, 0, 1], [2, 3, 0, 1, 0, 1],
                                                 [4, 5, 2, 3, 0, 1], [6, 7, 4, 5, 2, 3]])
    data = _correlated()
    det = PCADetector(lags=2).fit(data)
    static = PCADetector().fit(lagged(data, 2))
    np.testing.assert_allclose(det.spe(data), static.spe(lagged(data, 2)))
    assert det.components_.shape[1] == 3 * data.shape[1]


def test_smoothing_is_a_trailing_mean():
    np.testing.assert_allclose(trailing_mean(np.array([1.0, 3, 5, 7]), 2), [1, 2, 4, 6])
    X = _correlated()
    raw = PCADetector().fit(X).decision_function(X)
    np.testing.assert_allclose(PCADetector(smoothing=3).fit(X).decision_function(X), trailing_mean(raw, 3))


@pytest.mark.parametrize("params, message", [
    ({"n_components": 1.5}, "n_components"), ({"n_components": 0}, "n_components"),
    ({"n_components": 8}, "n_components=8"), ({"lags": -1}, "lags"), ({"score": "q"}, "score"),
    ({"scaler": "minmax"}, "scaler"), ({"smoothing": 0}, "smoothing"),
])
def test_pca_rejects_bad_params_at_fit(params, message):
    det = PCADetector(**params)  # __init__ only stores
    with pytest.raises(ValueError, match=message):
        det.fit(_correlated())


def test_pca_follows_the_estimator_contract():
    from sklearn.exceptions import NotFittedError

    det = PCADetector(n_components=2, lags=1, score="t2")
    assert clone(det).get_params() == det.get_params()
    with pytest.raises(NotFittedError):
        det.decision_function(_correlated())
    assert det.fit(_correlated()) is det
    with pytest.raises(ValueError, match="3 sensors, expected 8"):
        det.decision_function(np.zeros((5, 3)))


def test_pca_module_does_not_import_torch():
    code = "import sys, raysys.models.pca, raysys.benchmarks.tep; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# -- the protocol ----------------------------------------------------------------------------------
def test_file_rates_count_from_the_onset():
    alarms = np.zeros(10, dtype=int)
    alarms[[1, 6, 7]] = 1
    assert tep.file_rates(alarms, onset=4) == {"far": 0.25, "fdr": pytest.approx(2 / 6), "delay": 2.0}
    assert tep.file_rates(np.zeros(10), onset=4)["delay"] == 6.0  # never flagged: the whole faulty stretch
    assert tep.file_rates(np.r_[np.zeros(4), np.ones(6)], onset=4) == {"far": 0.0, "fdr": 1.0, "delay": 0.0}
    with pytest.raises(ValueError, match="onset"):
        tep.file_rates(np.zeros(10), onset=10)


def _toy_data(onset: int = 30) -> tep.TEPData:
    """Four sensors following one latent signal; fault 1 shifts a sensor by 5 from ``onset`` on (breaking
    the correlation), fault 3 changes nothing."""
    rng = np.random.default_rng(0)

    def normal(n: int) -> np.ndarray:
        return rng.normal(size=(n, 1)) @ np.ones((1, 4)) + 0.1 * rng.normal(size=(n, 4))

    shifted = normal(80)
    shifted[onset:, 0] += 5
    return tep.TEPData(train=normal(200), normal_test=normal(80), faults={1: shifted, 3: normal(80)})


def test_protocol_handles_onset_and_undetectable_faults():
    result = tep.run_benchmark(_toy_data(), ["pca_spe"], target_far=0.05, seeds=1, onset=30)
    s = result["detectors"]["pca_spe"]
    assert s["fdr"]["1"] == 1.0 and s["delay"]["1"] == 0.0
    assert s["fdr"]["3"] < 0.2
    assert s["mean_fdr_detectable"] == 1.0  # fault 3 is left out of the detectable mean
    assert s["mean_fdr_all"] == pytest.approx((1.0 + s["fdr"]["3"]) / 2)
    assert s["detection_delay"] == 0.0
    assert s["far_asked"] == 0.05 and 0 <= s["far_pre_fault"] <= 0.2 and 0 <= s["far_normal_test"] <= 0.2


def test_protocol_never_reads_a_test_file_for_the_threshold():
    data = _toy_data()
    before = tep.evaluate_detector(PCADetector(score="spe"), data, [0.05], onset=30)[0]
    data.normal_test = data.normal_test + 100  # every d00_te sample now alarms...
    data.faults[3] = data.faults[3] * 50
    after = tep.evaluate_detector(PCADetector(score="spe"), data, [0.05], onset=30)[0]
    assert after["threshold"] == before["threshold"]  # ...and the threshold does not move
    assert after["far_normal_test"] == 1.0


KEYS = {"mean_fdr_detectable", "mean_fdr_all", "far_pre_fault", "far_normal_test", "far_asked", "fdr",
        "detection_delay"}


def test_protocol_on_the_slice():
    result = tep.run_benchmark(SLICE, ["pca_t2", "pca_spe", "iforest"], target_far=0.01, seeds=2)
    json.dumps(result, allow_nan=False)
    assert set(result) == {"detectors", "recommended"} and result["recommended"] is None
    for name, s in result["detectors"].items():
        assert KEYS <= set(s) and {f"{k}_std" for k in KEYS - {"far_asked", "fdr"}} <= set(s)
        assert set(s["fdr"]) == {"1"} and set(s["fdr_std"]) == {"1"}
        for key in ("mean_fdr_detectable", "mean_fdr_all", "far_pre_fault", "far_normal_test", "fdr"):
            value = s[key]["1"] if key == "fdr" else s[key]
            assert 0.0 <= value <= 1.0, (name, key, value)
        assert 0 <= s["detection_delay"] <= 40
    assert result["detectors"]["pca_t2"]["fdr_std"]["1"] == 0.0  # PCA is deterministic
    assert result["detectors"]["pca_spe"]["fdr"]["1"] > 0.5  # fault 1 (A/C feed ratio step) is an easy one


def test_recommended_detector_runs_on_the_slice():
    """The recommended detector (CVA) through the protocol on the published files' slice: d00.dat's
    ~100 samples for 156 past features (the ridge keeps the covariances invertible)."""
    result = tep.run_benchmark(SLICE, [tep.RECOMMENDED, "pca_spe"], target_far=0.05, seeds=1)
    assert result["recommended"] == tep.RECOMMENDED == "cva"
    s = result["detectors"]["cva"]
    assert s["fdr"]["1"] > 0.5 and s["detection_delay"] < 40  # fault 1 (A/C feed ratio step) is an easy one
    assert s["far_pre_fault"] <= 0.1 and s["far_normal_test"] <= 0.1


def test_multiple_fars_share_the_fits():
    out = tep.run_benchmarks(_toy_data(), ["pca_t2"], [0.01, 0.05], seeds=1, onset=30)
    assert set(out) == {0.01, 0.05}
    assert out[0.01]["detectors"]["pca_t2"]["threshold"] >= out[0.05]["detectors"]["pca_t2"]["threshold"]


def test_unknown_detector_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown detector"):
        tep.run_benchmark(SLICE, ["pca_t3"], seeds=1)
    with pytest.raises(FileNotFoundError, match="d00.dat"):
        tep.load_tep(tmp_path)
    (tmp_path / "d00.dat").write_text((SLICE / "d00.dat").read_text())
    (tmp_path / "d00_te.dat").write_text("1 2 3\n")
    with pytest.raises(DataValidationError, match="d00_te.dat: expected one sample of 52 values"):
        tep.load_tep(tmp_path)


def test_cli_benchmark_tep_on_the_slice(tmp_path, mlflow_uri, capsys):
    import mlflow

    from raysys.cli import main

    out = tmp_path / "tep.json"
    assert main(["benchmark", "tep", "--data", str(SLICE), "--detectors", "pca_t2,pca_spe", "--seeds", "1",
                 "--target-far", "0.05", "--json", str(out), "--mlflow-uri", mlflow_uri]) == 0
    result = json.loads(out.read_text())
    assert set(result["detectors"]) == {"pca_t2", "pca_spe"}
    assert result["detectors"]["pca_spe"]["far_asked"] == 0.05
    printed = capsys.readouterr().out
    assert "pca_spe" in printed and "FAR d00_te" in printed
    runs = mlflow.MlflowClient(mlflow_uri).search_runs(
        [mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("raysys").experiment_id])
    assert len(runs) == 1
    assert "pca_spe.mean_fdr_detectable" in runs[0].data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient(mlflow_uri).list_artifacts(runs[0].info.run_id)}
    assert {"tep_fdr_per_fault.png", "tep_benchmark.json"} <= artifacts
    assert main(["benchmark", "tep", "--data", str(SLICE), "--detectors", "nope", "--no-mlflow"]) == 2
