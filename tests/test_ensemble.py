"""The ONNX ensemble: export parity, calibration, gates, MLflow registry, fresh-process loading, CLI."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from raysys.data import ANOMALY_TYPE, LABEL, load_dataset
from raysys.ensemble import cli as ensemble_cli
from raysys.ensemble.alarms import AlarmLogic, alarm_rows
from raysys.ensemble.build import ENSEMBLE, build_ensemble, source_ensemble_scores
from raysys.ensemble.calibrate import normalisation_stats, objective, select_weights
from raysys.ensemble.export import (ExportParityError, check_parity, export_member, max_relative_error, random_rows,
                                    source_contributions, source_scores)
from raysys.ensemble.gates import DEFAULT_GATES, LABELLED_GATES, check_gates, parse_gates
from raysys.ensemble.members import load_members
from raysys.ensemble.predict import predict_file
from raysys.ensemble.registry import CHAMPION, PREVIOUS, register_ensemble
from raysys.ensemble.runtime import (EnsembleRuntime, MemberSessions, attribute, combine, history_windows, input_range,
                                     load_runtime, normalise)
from raysys.ensemble.workflow import gate_report, run_ensemble
from raysys.evaluation.calibration import HOLDOUT_FRACTION, tail_threshold
from raysys.evaluation.events import events_of
from raysys.layout import SWEEP_BEST
from raysys.models import build_detector
from raysys.models.cva import CVADetector
from raysys.models.pca import PCADetector

ROOT = Path(__file__).resolve().parents[1]
NAME = "raysys-detector"


@pytest.fixture(scope="module")
def dataset(default_dataset):
    return load_dataset(default_dataset)


@pytest.fixture(scope="module")
def detectors(dataset):
    """The four deep families fitted in-process on the default dataset (LSTM and conv on a budget).

    One torch thread: on a shared 2-core machine more threads mostly spin.
    """
    X, y = dataset.features("train"), dataset.labels("train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"ae": build_detector("ae").fit(X, y), "vae": build_detector("vae").fit(X, y),
                "lstm": build_detector("lstm", epochs=5, stride=2).fit(X, y),
                "conv": build_detector("conv", epochs=3, stride=2).fit(X, y)}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(detectors, dataset, tmp_path_factory):
    return build_ensemble(detectors, dataset, tmp_path_factory.mktemp("ensemble") / "onnx")  # any name


@pytest.fixture(scope="module")
def detector_dirs(detectors, tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    return {name: det.save(root / name) for name, det in detectors.items()}


# -- runtime -------------------------------------------------------------------------------------

def test_history_windows_pad_with_the_first_row():
    X = np.arange(8, dtype=np.float32).reshape(4, 2)
    windows = history_windows(X, 3)
    assert windows.shape == (4, 3, 2)
    np.testing.assert_array_equal(windows[0], [X[0], X[0], X[0]])
    np.testing.assert_array_equal(windows[1], [X[0], X[0], X[1]])
    np.testing.assert_array_equal(windows[3], X[1:4])
    # two series of 2 rows: the second's windows repeat its own first row, never reach into the first
    windows = history_windows(X, 3, np.array([0, 1, 0, 1]))
    np.testing.assert_array_equal(windows[2], [X[2], X[2], X[2]])
    np.testing.assert_array_equal(windows[3], [X[2], X[2], X[3]])


def test_combine_leaves_out_members_without_full_history():
    normalised = np.array([[1.0, 100.0], [1.0, 100.0], [1.0, 100.0]])
    weights = np.array([0.5, 0.5])
    np.testing.assert_allclose(combine(normalised, weights), [50.5] * 3)
    # member 2 looks at windows of 2 rows: row 0 has no history, so only member 1 counts there
    np.testing.assert_allclose(combine(normalised, weights, np.array([1, 2])), [1.0, 50.5, 50.5])
    # with only sequence members weighted, rows without history keep every member
    np.testing.assert_allclose(combine(normalised, np.array([0.0, 1.0]), np.array([1, 2])), [100.0] * 3)
    # a second series starting at row 2 has no history there either
    np.testing.assert_allclose(combine(normalised, weights, np.array([1, 2]), np.array([0, 1, 0])), [1.0, 50.5, 1.0])


def test_runtime_scores_single_readings_and_streams_like_a_batch(built, dataset):
    runtime = EnsembleRuntime.load(built.directory)
    X = dataset.features("test")[:200]
    full = runtime.score(X)
    assert runtime.history == 15 and runtime.sensors == dataset.sensors
    assert full["score"].shape == (200,) and full["is_anomaly"].dtype == bool
    assert set(full["members"]) == set(runtime.members) == {"ae", "vae", "vae_mahalanobis", "lstm", "conv", "iforest",
                                                            "pca_t2", "pca_spe"}
    one = runtime.score(X[:1])
    assert one["score"].shape == (1,)
    for i in (3, 40, 199):  # a streaming caller passes the last `history` rows before the new one
        start = max(0, i - runtime.history)
        np.testing.assert_allclose(runtime.score(X[start:i + 1])["score"][-1], full["score"][i], rtol=1e-6, atol=1e-6)
    parts = [X[:1], X[50:60], X[100:130]]  # independent requests, scored together as if alone
    for together, part in zip(runtime.score_many(parts), parts):
        alone = runtime.score(part)
        np.testing.assert_allclose(together["score"], alone["score"], rtol=1e-6, atol=1e-6)
        for name in ("lstm", "conv"):
            np.testing.assert_allclose(together["members"][name], alone["members"][name], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="sum to the 200 rows"):
        runtime.score(X, lengths=[100, 50])


def test_raw_scores_in_small_calls_equal_one_call(built, dataset):
    """Member sessions score in chunks (``batch_rows`` rows; ``batch_rows // window`` windows for the LSTM):
    chunk edges change no score, also where a chunk starts inside a series' first window."""
    from raysys.ensemble.runtime import MemberSessions

    spec = EnsembleRuntime.load(built.directory).spec
    sessions = MemberSessions(built.directory, spec["members"], len(spec["sensors"]))
    X = dataset.features("test")[:300]
    positions = np.concatenate([np.arange(37), np.arange(263)])  # two series; the second starts mid-chunk
    whole = sessions.raw_scores(X, positions, batch_rows=8192)
    for batch_rows in (16, 100, 1000):
        np.testing.assert_allclose(sessions.raw_scores(X, positions, batch_rows=batch_rows), whole, rtol=1e-5, atol=1e-6)


def test_runtime_rejects_bad_input_naming_it(built, dataset):
    runtime = EnsembleRuntime.load(built.directory)
    with pytest.raises(ValueError, match=r"shape \(rows, 5\)"):
        runtime.score(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        runtime.score(np.full((3, 5), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="pressure"):
        runtime.score_frame(dataset.test.drop(columns=["pressure"]))
    scored = runtime.score_frame(dataset.test.head(10))  # timestamp and label columns are ignored
    assert list(scored.columns[:2]) == ["score", "is_anomaly"] and "score_lstm" in scored.columns


def test_zero_weight_members_are_left_out_not_multiplied():
    normalised = np.array([[1.0, np.inf], [2.0, np.nan]])
    np.testing.assert_array_equal(combine(normalised, np.array([1.0, 0.0])), [1.0, 2.0])


@pytest.mark.parametrize("value", [1e19, -1e19, 1e300])
def test_extreme_readings_fail_closed_with_reason_and_sensor(built, dataset, value):
    """A reading far outside the training range is an anomaly whatever the score, names its sensor,
    and every number stays finite (1e300 does not even fit the members' float32 input)."""
    runtime = EnsembleRuntime.load(built.directory)
    X = dataset.features("test")[:40].astype(np.float64)
    X[30, 0] = value
    result = runtime.score(X)
    assert result["reason"][30] == "out_of_range" and result["reason_sensors"][30] == [runtime.sensors[0]]
    assert result["is_anomaly"][30]
    assert np.isfinite(result["score"]).all() and all(np.isfinite(v).all() for v in result["members"].values())
    clean = runtime.score(X[:30])
    assert (result["reason"][:30] == clean["reason"]).all()
    np.testing.assert_array_equal(result["score"][:30], clean["score"])


def test_non_finite_member_score_fails_closed_without_a_recorded_range(built, dataset, tmp_path):
    """An ensemble built before input ranges existed still never lets a non-finite score pass as normal."""
    legacy = tmp_path / "legacy"
    shutil.copytree(built.directory, legacy)
    spec = json.loads((legacy / "ensemble.json").read_text())
    del spec["input_range"]
    (legacy / "ensemble.json").write_text(json.dumps(spec))
    runtime = EnsembleRuntime.load(legacy)
    X = dataset.features("test")[:20].astype(np.float64)
    X[19, 1] = 3e38  # squared reconstruction error overflows
    result = runtime.score(X)
    assert result["reason"][19] == "non_finite_score" and result["is_anomaly"][19]
    assert result["reason_sensors"][19] == runtime.sensors
    assert np.isfinite(result["score"]).all()
    assert (result["reason"][:19] == "").all()


def test_range_factor_is_per_sensor_and_recorded(built, dataset):
    spec = built.spec
    assert spec["input_range"]["factor"] == [3.0] * len(spec["sensors"])
    X = dataset.features("train", normal_only=True)
    np.testing.assert_allclose(spec["input_range"]["min"], X.min(axis=0), rtol=1e-6)
    rng = input_range(X, dataset.sensors, {"pressure": 0.5})
    assert rng["factor"][dataset.sensors.index("pressure")] == 0.5 and rng["factor"][0] == 3.0
    with pytest.raises(ValueError, match="unknown sensor.*'pressur'"):
        input_range(X, dataset.sensors, {"pressur": 1.0})


def test_unsupported_ensemble_format_names_its_version(built, tmp_path):
    future = tmp_path / "future"
    shutil.copytree(built.directory, future)
    spec = json.loads((future / "ensemble.json").read_text())
    (future / "ensemble.json").write_text(json.dumps({**spec, "format_version": 99}))
    with pytest.raises(ValueError, match=r"format_version 99 is not supported.*reads versions \[1, 2\]"):
        EnsembleRuntime.load(future)


def test_predict_refuses_an_input_without_rows(built, tmp_path):
    empty = tmp_path / "header-only.csv"
    empty.write_text(",".join(EnsembleRuntime.load(built.directory).sensors) + "\n")
    with pytest.raises(ValueError, match="header-only.csv: no rows to score"):
        predict_file(built.directory, empty, tmp_path / "scores.parquet")
    assert not (tmp_path / "scores.parquet").exists()


def test_runtime_imports_neither_torch_nor_training_code():
    code = ("import sys, raysys.ensemble.runtime, raysys.ensemble.pyfunc; "
            "bad = [m for m in ('torch', 'raysys.models', 'raysys.train') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


# -- export ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("file", ["ae.onnx", "vae.onnx", "lstm.onnx", "conv.onnx", "iforest.onnx", "pca.onnx"])
def test_member_matches_its_source_on_random_and_validation_data(built, dataset, file):
    model = onnx.load(str(built.directory / file))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    info = built.spec["files"][file]
    assert info["opset"] == 17 and max(max(c.values()) for c in info["parity_max_rel_error"].values()) <= 1e-4
    source = built.models[Path(file).stem]
    entries = [m for m in built.spec["members"] if m["file"] == file]
    member = {"file": file, "family": info["family"], "window": info["window"],
              "outputs": {m["output"]: m["output"] for m in entries},
              "contributions": {m["output"]: m["contributions"] for m in entries if "contributions" in m}}
    # every score that splits over the sensors exports its terms: all but the VAE's Mahalanobis and the forest
    expected = {o for o in source_scores(source, dataset.features("val")[:2]) if o != "mahalanobis"} - (
        {"score"} if info["family"] == "iforest" else set())
    assert set(member["contributions"]) == expected
    assert set(source_contributions(source, dataset.features("val")[:20])) == {f"{o}_sensors" for o in expected}
    fresh = random_rows(dataset.features("train"), n=300, seed=123)  # not the inputs checked at export
    report = check_parity(source, built.directory, member, {"random": fresh, "validation": dataset.features("val")})
    assert max(max(c.values()) for c in report.values()) <= 1e-4
    assert {f"{o}_sensors" for o in member["contributions"]} <= set(report["random"])  # ONNX terms == PyTorch's


def test_vae_exports_reconstruction_and_mahalanobis_scores(built, dataset):
    X = dataset.features("val")
    raw = EnsembleRuntime.load(built.directory).raw_scores(X)
    vae = built.models["vae"]
    assert max_relative_error(raw["vae"], vae.decision_function(X)) <= 1e-4
    assert max_relative_error(raw["vae_mahalanobis"], vae.latent_scores(X)["mahalanobis"]) <= 1e-4


def test_conv_member_scores_each_row_by_the_window_ending_at_it(built, dataset):
    X = dataset.features("val")
    conv = built.models["conv"]
    info = built.spec["files"]["conv.onnx"]
    assert info["family"] == "conv" and info["window"] == conv.window == 16
    raw = EnsembleRuntime.load(built.directory).raw_scores(X)["conv"]
    # past the first window the runtime's windows are the detector's own: no padding involved
    assert max_relative_error(raw[15:], conv.decision_function(X)[15:]) <= 1e-4


def test_pca_exports_t2_and_spe_as_two_members(built, dataset):
    """The PCA member: fitted on the normal training rows, components explaining 90% of the variance,
    its ONNX outputs equal to PCADetector.t2 / spe (numpy, float64) within 1e-4."""
    pca = built.models["pca"]
    assert isinstance(pca, PCADetector) and pca.lags == 0 and pca.n_components == 0.9
    assert pca.explained_variance_ratio_.sum() >= 0.9 and 1 <= pca.n_components_ < len(dataset.sensors)
    members = {m["name"]: m for m in built.spec["members"]}
    assert (members["pca_t2"]["output"], members["pca_spe"]["output"]) == ("t2", "spe")
    assert members["pca_t2"]["file"] == members["pca_spe"]["file"] == "pca.onnx" and "pca" not in members
    assert built.spec["files"]["pca.onnx"]["family"] == "pca" and built.spec["files"]["pca.onnx"]["window"] == 1
    runtime = EnsembleRuntime.load(built.directory)
    for X in (dataset.features("val"), random_rows(dataset.features("train"), n=300, seed=5)):
        raw = runtime.raw_scores(X)
        assert max_relative_error(raw["pca_t2"], pca.t2(X)) <= 1e-4
        assert max_relative_error(raw["pca_spe"], pca.spe(X)) <= 1e-4
    graph = onnx.load(str(built.directory / "pca.onnx")).graph
    assert [o.name for o in graph.output] == ["t2", "spe", "t2_sensors", "spe_sensors"] and graph.input[0].name == "x"
    X = dataset.features("val")
    np.testing.assert_allclose(pca.t2_contributions(X).sum(axis=1), pca.t2(X), rtol=1e-9)
    np.testing.assert_allclose(pca.spe_contributions(X).sum(axis=1), pca.spe(X), rtol=1e-9)


@pytest.mark.parametrize(("make", "outputs"), [
    (lambda lags: PCADetector(n_components=3, lags=lags), {"lagged_t2": "t2", "lagged_spe": "spe"}),
    (lambda lags: build_detector("ae", lags=lags, epochs=2), {"lagged": "score"}),
    (lambda lags: build_detector("vae", lags=lags, epochs=2), {"lagged": "score", "lagged_mahalanobis": "mahalanobis"}),
    (lambda lags: CVADetector(lags=lags, n_states=3), {"lagged": "score"}),
], ids=["pca", "ae", "vae", "cva"])
@pytest.mark.parametrize("lags", [0, 3])
def test_lagged_row_models_export_as_windowed_members(dataset, make, outputs, lags, tmp_path):
    """Dynamic PCA, CVA and the dense families with lags > 0 become windowed members: the runtime's
    left-padded history windows are the rows ``raysys.models.pca.lagged`` stacks."""
    X = dataset.features("train", normal_only=True)
    model = make(lags).fit(X)
    checks = {"validation": dataset.features("val"), "random": random_rows(X, seed=1)}
    exported = export_member("lagged", model, tmp_path, checks)
    assert exported.window == lags + 1 and exported.outputs == outputs
    assert exported.contributions == {name: f"{out}_sensors" for name, out in outputs.items() if out != "mahalanobis"}
    assert max(max(c.values()) for c in exported.parity.values()) <= 1e-4


def test_pca_and_iforest_can_be_left_out_and_their_names_are_reserved(detectors, dataset, tmp_path):
    build = build_ensemble({"ae": detectors["ae"]}, dataset, tmp_path / "ae-only", iforest=False, pca=False)
    assert [m["name"] for m in build.spec["members"]] == ["ae"]
    with pytest.raises(ValueError, match="'pca_t2' is reserved for the PCA detector"):
        build_ensemble({"pca_t2": detectors["ae"]}, dataset, tmp_path / "clash")
    with pytest.raises(ValueError, match="'cva' is reserved for the CVA detector"):
        build_ensemble({"cva": detectors["ae"]}, dataset, tmp_path / "clash", cva=True)
    with pytest.raises(ValueError, match="no ensemble members"):
        build_ensemble({}, dataset, tmp_path / "empty", iforest=False, pca=False)


def test_parity_check_catches_a_wrong_export(built, dataset):
    member = {"file": "ae.onnx", "family": "vae", "window": 1, "outputs": {"vae": "score"}}
    with pytest.raises(ExportParityError, match="relative error"):
        check_parity(built.models["vae"], built.directory, member, {"validation": dataset.features("val")})


# -- attribution ---------------------------------------------------------------------------------

def test_attribute_splits_each_members_part_by_its_terms():
    """Worked by hand: member 1 (weight 0.75) has terms, member 2 (0.25) has none and is split like
    member 1; a row where no member has terms is split equally; a member's centre is shared alike."""
    normalised = np.array([[2.0, 4.0], [-1.0, 8.0]])
    weights = np.array([[0.75, 0.25], [0.75, 0.25]])
    terms = np.array([[[3.0, 1.0, 0.0], [np.nan] * 3], [[0.0, 0.0, 0.0], [np.nan] * 3]])
    parts = attribute(normalised, weights, terms)
    # row 0: 0.75 * 2 = 1.5 split 3:1:0, 0.25 * 4 = 1 split like it
    np.testing.assert_allclose(parts[0], [1.125 + 0.75, 0.375 + 0.25, 0.0])
    # row 1: member 1's terms sum to 0 -> no member has usable terms: -0.75 + 2 = 1.25 split equally
    np.testing.assert_allclose(parts[1], [1.25 / 3] * 3)
    np.testing.assert_allclose(parts.sum(axis=1), combine(normalised, np.array([0.75, 0.25])))
    # a member without weight on a row gives nothing there, its terms neither
    left_out = attribute(normalised, np.array([[1.0, 0.0], [1.0, 0.0]]), np.nan_to_num(terms, nan=5.0))
    np.testing.assert_allclose(left_out[0], [1.5, 0.5, 0.0])


def test_contributions_sum_to_the_score_and_change_nothing_else(built, dataset, assert_same_top_sensors):
    runtime = EnsembleRuntime.load(built.directory)
    X = dataset.features("test")[:300]
    plain, explained = runtime.score(X), runtime.score(X, explain=True)
    for key in ("score", "is_anomaly", "reason"):
        np.testing.assert_array_equal(explained[key], plain[key])
    assert explained["contributions"].shape == (300, len(runtime.sensors))
    np.testing.assert_allclose(explained["contributions"].sum(axis=1), plain["score"], rtol=1e-9, atol=1e-9)
    positive = explained["contributions"] > 0
    for row, top in zip(explained["contributions"], explained["top_sensors"]):
        assert 1 <= len(top) <= 3 or not (row > 0).any()
        assert [row[runtime.sensors.index(s)] for s in top] == sorted(row[row > 0], reverse=True)[:len(top)]
    assert positive.any()
    parts = [X[:1], X[10:40], X[40:300]]  # coalesced series explain as if alone
    for together, part in zip(runtime.score_many(parts, explain=True), parts):
        alone = runtime.score(part, explain=True)
        np.testing.assert_allclose(together["contributions"], alone["contributions"], rtol=1e-5, atol=1e-6)
        assert_same_top_sensors(together["top_sensors"], alone["top_sensors"], alone["contributions"], runtime.sensors)


@pytest.mark.parametrize("sensor", range(5))
def test_a_spike_on_one_sensor_is_attributed_to_it(built, dataset, sensor):
    """An 8-sigma spike on one sensor (inside the allowed range, so no fail-closed reason) makes that
    sensor the top one."""
    runtime = EnsembleRuntime.load(built.directory)
    normal = dataset.features("train", normal_only=True)
    X = dataset.features("val")[:80].astype(np.float64)
    X[60, sensor] += 8 * normal[:, sensor].std()
    result = runtime.score(X, explain=True)
    assert result["reason"][60] == "" and result["is_anomaly"][60]
    assert result["top_sensors"][60][0] == runtime.sensors[sensor]


def test_fail_closed_rows_name_their_sensors_with_finite_contributions(built, dataset):
    runtime = EnsembleRuntime.load(built.directory)
    X = dataset.features("test")[:40].astype(np.float64)
    X[30, 2] = 1e300
    result = runtime.score(X, explain=True)
    assert result["reason"][30] == "out_of_range" and result["top_sensors"][30] == [runtime.sensors[2]]
    assert np.isfinite(result["contributions"]).all()


def test_predict_explain_writes_contribution_columns_and_top_sensors(built, default_dataset, tmp_path):
    assert _cli(["predict", "--model", str(built.directory), "--input", str(default_dataset / "test.parquet"),
                 "--output", str(tmp_path / "x.csv"), "--explain"]) == 0
    scored = pd.read_csv(tmp_path / "x.csv", keep_default_na=False)
    sensors = EnsembleRuntime.load(built.directory).sensors
    columns = [f"contribution_{s}" for s in sensors]
    assert set(columns) <= set(scored.columns) and "top_sensors" in scored.columns
    np.testing.assert_allclose(scored[columns].sum(axis=1), scored["score"], rtol=1e-6, atol=1e-9)
    flagged = scored[scored["is_anomaly"]]
    assert len(flagged) and all(top.split(",")[0] in sensors for top in flagged["top_sensors"])
    plain, events = predict_file(built.directory, default_dataset / "test.parquet", tmp_path / "plain.parquet")
    assert not any(c.startswith("contribution_") for c in plain.columns) and "top_sensors" not in plain.columns
    # the events table beside the scores: one row per run of `alarm` (the default logic: runs of flagged rows)
    np.testing.assert_array_equal(plain["alarm"], plain["is_anomaly"])
    explained = pd.read_csv(tmp_path / "x_events.csv", keep_default_na=False)
    assert list(explained.columns) == ["start", "end", "rows", "peak_score", "peak", "top_sensors"]
    assert len(explained) == len(events) == len(events_of(plain["alarm"])) > 0
    assert explained["rows"].sum() == plain["alarm"].sum()
    stamps = plain["timestamp"].astype(str).tolist()
    for event, (start, stop) in zip(explained.itertuples(), events_of(plain["alarm"])):
        assert (event.start, event.end) == (stamps[start], stamps[stop - 1])
        assert event.peak_score == pytest.approx(plain["score"][start:stop].max())
        assert event.top_sensors.split(",")[0] in sensors
    assert pd.read_parquet(tmp_path / "plain_events.parquet").shape == (len(events), 5)


def test_a_bad_alarm_setting_on_the_command_line_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli(["ensemble", "--data", "data", "--alarm", "k=3,n=2"])
    assert exit_info.value.code == 2 and "alarm n must be >= k, got k=3, n=2" in capsys.readouterr().err


# -- calibration and quality -------------------------------------------------------------------

def test_ensemble_weights_score_validation_at_least_as_well_as_any_member(built, dataset):
    """What weight selection guarantees: on the validation split it chose on, the weighted mix scores
    at least as well (by the selection's objective) as each member alone. On the test split it may not."""
    spec = built.spec
    X, y = dataset.features("val"), dataset.labels("val")
    raw = np.column_stack(list(EnsembleRuntime.load(built.directory).raw_scores(X).values())).astype(np.float64)
    center, scale, weights, windows = (np.array([m[k] for m in spec["members"]])
                                       for k in ("center", "scale", "weight", "window"))
    normalised = normalise(raw, center, scale)
    mix = objective(y, combine(normalised, weights, windows), spec["threshold_method"])
    for j, member in enumerate(spec["members"]):
        alone = objective(y, combine(normalised, np.eye(len(weights))[j], windows), spec["threshold_method"])
        assert mix >= alone, member["name"]
    ensemble = built.ensemble_metrics
    assert ensemble["roc_auc"] >= 0.95
    assert set(ensemble["recall_by_type"]) == {"spike", "drift", "stuck", "oscillation", "process", "replay"}
    assert abs(sum(m["weight"] for m in built.spec["members"]) - 1.0) < 1e-9


def test_exported_ensemble_scores_like_its_sources(built, dataset):
    X = dataset.features("test")
    reference = source_ensemble_scores(built.models, built.spec, X)
    np.testing.assert_allclose(built.test_scores[ENSEMBLE], reference, rtol=1e-4, atol=1e-4)


def test_select_weights_prefers_the_informative_member():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.05).astype(int)
    scores = np.column_stack([rng.normal(size=2000) + 6 * y, rng.normal(size=2000)])
    center, scale = normalisation_stats(scores[y == 0])
    weights = select_weights((scores - center) / scale, y)
    assert weights[0] > 0.5 and weights.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both normal"):
        select_weights(scores, np.zeros(2000, dtype=int))


def test_smoothing_is_calibrated_on_and_served_as_the_smoothed_score(detectors, dataset, tmp_path):
    from raysys.evaluation import calibrate_threshold

    logic = AlarmLogic(k=2, n=3, off_delay=5)
    build = build_ensemble({"ae": detectors["ae"]}, dataset, tmp_path / "smooth", smoothing=4, pca=False, alarm=logic)
    runtime = EnsembleRuntime.load(build.directory)
    assert build.spec["smoothing"] == runtime.smoothing == 4 and runtime.history == build.spec["history"] == 3
    assert build.spec["alarm"] == {"k": 2, "n": 3, "clear_level": None, "off_delay": 5} and runtime.alarm_logic == logic
    frame = runtime.score_frame(dataset.test)  # alarm is the event state of the flagged rows, by the stored logic
    result = runtime.score(dataset.features("test"))
    np.testing.assert_array_equal(frame["alarm"], alarm_rows(result["is_anomaly"], result["score"], runtime.threshold,
                                                             logic)[0])
    assert frame["alarm"].sum() > frame["is_anomaly"].sum()  # each event held 5 rows
    val = dataset.features("val")
    scores = runtime.score(val)["score"]
    np.testing.assert_allclose(source_ensemble_scores(build.models, build.spec, val), scores, rtol=1e-4, atol=1e-5)
    assert build.spec["threshold"] == pytest.approx(calibrate_threshold("best_f1", dataset.labels("val"), scores),
                                                    rel=1e-6)
    with pytest.raises(ValueError, match="smoothing must be an int >= 1"):
        build_ensemble({"ae": detectors["ae"]}, dataset, tmp_path / "bad", smoothing=0)


def test_far_threshold_keeps_the_false_alarm_budget_on_validation(detectors, dataset, tmp_path):
    build = build_ensemble({"ae": detectors["ae"]}, dataset, tmp_path / "far", threshold_method="far",
                           target_far=0.02, iforest=False)
    runtime = EnsembleRuntime.load(build.directory)
    normal = runtime.score(dataset.features("val"))["is_anomaly"][dataset.labels("val") == 0]
    assert normal.mean() <= 0.02 + 1 / len(normal)  # tail_threshold takes an observed score as the threshold
    assert build.spec["threshold_method"] == "far" and build.spec["target_far"] == 0.02


# -- without labels ---------------------------------------------------------------------------------

def _unlabelled(dataset):
    """The same splits with the label columns dropped."""
    from dataclasses import replace

    def drop(frame):
        return frame.drop(columns=[LABEL, ANOMALY_TYPE])

    return replace(dataset, train=drop(dataset.train), val=drop(dataset.val), test=drop(dataset.test))


@pytest.fixture(scope="module")
def built_without_labels(detectors, dataset, tmp_path_factory):
    return build_ensemble({"ae": detectors["ae"], "lstm": detectors["lstm"]}, _unlabelled(dataset),
                          tmp_path_factory.mktemp("unlabelled") / "onnx", target_far=0.05, smoothing=3)


def test_without_labels_weights_are_equal_and_the_threshold_comes_from_the_first_rows(built_without_labels,
                                                                                      dataset):
    spec = built_without_labels.spec
    assert spec["threshold_method"] == "far" and spec["target_far"] == 0.05
    assert spec["smoothing"] == 3 and spec["history"] == max(m["window"] for m in spec["members"]) - 1 + 2
    cal = spec["calibration"]
    assert cal["labels"] is False and cal["weights"] == "equal (no labels)"
    assert [m["weight"] for m in spec["members"]] == pytest.approx([1 / len(spec["members"])] * len(spec["members"]))
    assert cal["rows"] == len(dataset.val) - spec["history"] == cal["calibration_rows"] + cal["holdout_rows"]
    assert cal["holdout_rows"] == round(cal["rows"] * HOLDOUT_FRACTION)
    runtime = EnsembleRuntime.load(built_without_labels.directory)
    val = runtime.score(dataset.features("val"))
    scores, forced = val["score"][spec["history"]:], (val["reason"] != "")[spec["history"]:]
    assert spec["threshold"] == tail_threshold(scores[:cal["calibration_rows"]][~forced[:cal["calibration_rows"]]],
                                               0.05)
    tail = slice(cal["calibration_rows"], None)
    measured = built_without_labels.ensemble_metrics
    assert measured["labelled"] is False and measured["far_asked"] == 0.05
    assert measured["heldout_false_alarm_rate"] == pytest.approx(np.mean((scores[tail] > spec["threshold"])
                                                                         | forced[tail]))
    assert measured["heldout_far_ratio"] == pytest.approx(measured["heldout_false_alarm_rate"] / 0.05)
    assert measured["alarm_rate"] == pytest.approx(runtime.score(dataset.features("test"))["is_anomaly"].mean())


def test_without_labels_label_gates_are_skipped_and_the_held_out_gate_applies(built_without_labels, built):
    report = gate_report(built_without_labels)
    assert dict(report.skipped) == {name: "the test split has no labels"
                                    for name in DEFAULT_GATES if name in LABELLED_GATES}
    assert {r.name for r in report.results} == {"heldout_far_ratio", "latency_ms"}
    assert "skipped, the test split has no labels" in report.summary()
    labelled = gate_report(built)
    assert [name for name, _ in labelled.skipped] == ["heldout_far_ratio"]
    assert {r.name for r in labelled.results} == set(DEFAULT_GATES) - {"heldout_far_ratio"}


def test_without_labels_best_f1_is_refused_by_name(detectors, dataset, tmp_path):
    with pytest.raises(ValueError, match="'best_f1' needs labelled validation rows.*use 'far'"):
        build_ensemble({"ae": detectors["ae"]}, _unlabelled(dataset), tmp_path / "x", threshold_method="best_f1",
                       iforest=False, pca=False)


# -- gates ------------------------------------------------------------------------------------------

def test_parse_gates_overrides_and_drops_defaults():
    gates = parse_gates(["roc_auc=0.95", "latency_ms=off", "f1=0.9"])
    assert gates["roc_auc"] == 0.95 and "latency_ms" not in gates and gates["f1"] == 0.9
    assert gates["recall"] == DEFAULT_GATES["recall"]
    with pytest.raises(ValueError, match="'roc_auc'"):
        parse_gates(["roc_auc=high"])
    with pytest.raises(ValueError, match="NAME=LIMIT"):
        parse_gates(["roc_auc"])


def test_gate_report_says_which_gate_failed_by_how_much():
    report = check_gates({"roc_auc": 0.95, "false_alarm_rate": 0.08, "latency_ms": 3.0},
                         {"roc_auc": 0.9, "false_alarm_rate": 0.05, "latency_ms": 50})
    assert not report.passed and [f.name for f in report.failures] == ["false_alarm_rate"]
    assert "false_alarm_rate = 0.08 (must be <= 0.05): FAIL by 0.03" in report.summary()
    with pytest.raises(ValueError, match="unknown quality gate 'auc'"):
        check_gates({"roc_auc": 0.95}, {"auc": 0.9})


# -- registry ---------------------------------------------------------------------------------------

def test_gate_failure_registers_nothing(built, mlflow_uri):
    report = gate_report(built, parse_gates(["roc_auc=0.9999"]))
    assert not report.passed and "roc_auc" in report.summary() and "FAIL by" in report.summary()
    client = MlflowClient(mlflow_uri)
    parent = client.create_run(client.create_experiment("pipeline")).info.run_id
    registration = register_ensemble(built, report, NAME, tracking_uri=mlflow_uri, parent_run_id=parent)
    assert registration.version is None and registration.model_uri is None
    assert client.search_registered_models() == []
    run = client.get_run(registration.run_id)
    assert run.data.tags["raysys.gates"] == "failed" and "test_f1" in run.data.metrics
    assert run.data.tags["mlflow.parentRunId"] == parent


_FRESH = """
import json, sys
import mlflow, numpy as np, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/{name}@champion")
out = model.predict(pd.read_parquet(sys.argv[2]))
loaded = [m for m in ("torch", "raysys.models", "raysys.train") if m in sys.modules]
np.save(sys.argv[3], out["score"].to_numpy())
print(json.dumps({{"loaded": loaded, "columns": list(out.columns), "flags": int(out["is_anomaly"].sum())}}))
"""


def test_pass_registers_moves_champion_and_loads_in_a_fresh_process(built, dataset, mlflow_uri, tmp_path):
    report = gate_report(built)
    assert report.passed, report.summary()
    first = register_ensemble(built, report, NAME, tracking_uri=mlflow_uri)
    second = register_ensemble(built, report, NAME, tracking_uri=mlflow_uri)
    assert (first.version, second.version) == ("1", "2")
    client = MlflowClient(mlflow_uri)
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"
    assert str(client.get_model_version_by_alias(NAME, PREVIOUS).version) == "1"
    assert "test_recall_by_type_drift" in client.get_run(second.run_id).data.metrics
    assert "gate_report.json" in {a.path for a in client.list_artifacts(second.run_id)}

    test_file = dataset.path / "test.parquet"
    out = subprocess.run([sys.executable, "-c", _FRESH.format(name=NAME), mlflow_uri, str(test_file),
                          str(tmp_path / "scores.npy")], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["columns"][:2] == ["score", "is_anomaly"] and "score_vae_mahalanobis" in result["columns"]
    fresh = np.load(tmp_path / "scores.npy")
    np.testing.assert_allclose(fresh, built.test_scores[ENSEMBLE], rtol=1e-6, atol=1e-6)  # same ONNX run
    reference = source_ensemble_scores(built.models, built.spec, dataset.features("test"))  # before export
    np.testing.assert_allclose(fresh, reference, rtol=1e-4, atol=1e-4)

    # the previous champion stays loadable, and `raysys predict` reads the alias too
    assert load_runtime(f"models:/{NAME}@{PREVIOUS}", tracking_uri=mlflow_uri).threshold == built.spec["threshold"]
    scored, _ = predict_file(f"models:/{NAME}@{CHAMPION}", test_file, tmp_path / "scores.csv", tracking_uri=mlflow_uri)
    np.testing.assert_allclose(scored["score"], built.test_scores[ENSEMBLE], rtol=1e-6, atol=1e-6)
    assert list(pd.read_csv(tmp_path / "scores.csv").columns[:3]) == ["timestamp", "score", "is_anomaly"]


# -- members and CLI --------------------------------------------------------------------------------

def test_members_from_sweep_and_mlflow_run(detector_dirs, dataset, mlflow_uri, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / SWEEP_BEST).write_text(json.dumps({
        "ae": {"checkpoint": str(detector_dirs["ae"]), "run_id": None, "config": {"lr": 1e-3}, "metric": 0.9}}))
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("members")).info.run_id
    client.log_artifacts(run_id, str(detector_dirs["vae"]), "detector")
    members = load_members(sweep, [run_id], [detector_dirs["ae"]], tracking_uri=mlflow_uri)
    assert [m.name for m in members] == ["ae", "vae", "ae_2"]
    assert members[0].source["config"] == {"lr": 1e-3} and members[1].source == {"kind": "run", "run_id": run_id}
    with pytest.raises(ValueError, match="no ensemble members"):
        run_ensemble(dataset, register=False)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="raysys")
    ensemble_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_gate_failure_exits_1_and_predict_writes_scores(default_dataset, detector_dirs, built, mlflow_uri,
                                                           tmp_path, capsys):
    code = _cli(["ensemble", "--data", str(default_dataset), "--detector", str(detector_dirs["ae"]), "--no-pca",
                 "--cva", "--gate", "roc_auc=0.9999", "--out", str(tmp_path / "work"), "--mlflow-uri", mlflow_uri])
    out = capsys.readouterr().out
    assert code == 1 and "roc_auc" in out and "FAIL by" in out and "nothing registered" in out
    spec = json.loads((tmp_path / "work" / "ensemble" / "ensemble.json").read_text())
    assert [m["name"] for m in spec["members"]] == ["ae", "iforest", "cva"]  # --no-pca --cva
    assert spec["files"]["cva.onnx"]["family"] == "cva" and spec["files"]["cva.onnx"]["window"] == 3
    assert MlflowClient(mlflow_uri).search_registered_models() == []
    assert (tmp_path / "work" / "evaluation" / "plots" / "roc_pr.png").exists()

    assert _cli(["predict", "--model", str(built.directory), "--input", str(default_dataset / "test.parquet"),
                 "--output", str(tmp_path / "scores.parquet")]) == 0
    scored = pd.read_parquet(tmp_path / "scores.parquet")
    assert len(scored) == 3000 and {"timestamp", "score", "is_anomaly", "score_ae"} <= set(scored.columns)
    np.testing.assert_allclose(scored["score"], built.test_scores[ENSEMBLE], rtol=1e-6, atol=1e-6)


def test_label_free_estimator_scores_as_the_built_ensemble_without_labels(small_dataset, tmp_path):
    """``LabelFreeEnsemble`` (the benchmark's ``ensemble`` entry) is the pipeline's label-free rule:
    members fitted on the older rows, normalised on the newer ones, equal weights."""
    from raysys.ensemble.estimator import LabelFreeEnsemble

    data = _unlabelled(load_dataset(small_dataset))
    X = np.concatenate([data.features("train"), data.features("val")])
    estimator = LabelFreeEnsemble(families=("ae",), seed=3, validation_fraction=len(data.val) / len(X)).fit(X)
    build = build_ensemble({"ae": estimator.models_["ae"]}, data, tmp_path / "free", seed=3)
    assert [m["name"] for m in build.spec["members"]] == ["ae", "iforest", "pca_t2", "pca_spe"]
    runtime = EnsembleRuntime.load(build.directory)
    test = data.features("test")
    np.testing.assert_allclose(estimator.decision_function(test), runtime.score(test)["score"], rtol=1e-4, atol=1e-5)


def test_cva_member_scores_as_the_detector_fitted_on_the_training_split(dataset, tmp_path):
    """``cva=True`` adds member ``cva``: the CVA detector's statistic (its score before smoothing), fitted
    on the training split in time order without its labelled anomalies; the runtime equals the detector,
    scores and per-sensor terms."""
    build = build_ensemble({}, dataset, tmp_path / "cva", iforest=False, pca=False, cva=True)
    cva = build.models["cva"]
    assert isinstance(cva, CVADetector) and cva.get_params() == CVADetector().get_params()
    fitted = CVADetector().fit(dataset.features("train"), dataset.labels("train"))
    np.testing.assert_allclose(cva.state_loadings_, fitted.state_loadings_)
    assert [(m["name"], m["output"], m["window"]) for m in build.spec["members"]] == [("cva", "score", 3)]
    X = dataset.features("val")
    raw, terms = MemberSessions(build.directory, build.spec["members"], len(dataset.sensors)).raw_scores_and_terms(X)
    assert max_relative_error(raw[:, 0], cva.statistic(X)) <= 1e-4
    expected = cva.contributions(X)
    assert np.max(np.abs(terms[:, 0] - expected) / np.abs(expected).sum(axis=1, keepdims=True)) <= 1e-4


def test_cli_builds_the_cva_member_alone(default_dataset, tmp_path, capsys):
    """``raysys ensemble --cva --no-iforest --no-pca`` needs no trained detector; without ``--cva`` and
    without members the command still says what is missing."""
    assert _cli(["ensemble", "--data", str(default_dataset), "--cva", "--no-iforest", "--no-pca", "--no-register",
                 "--out", str(tmp_path / "work")]) == 0
    spec = json.loads((tmp_path / "work" / "ensemble" / "ensemble.json").read_text())
    assert [m["name"] for m in spec["members"]] == ["cva"]
    with pytest.raises(ValueError, match="no ensemble members: give a sweep directory"):
        _cli(["ensemble", "--data", str(default_dataset), "--no-register", "--out", str(tmp_path / "none")])
