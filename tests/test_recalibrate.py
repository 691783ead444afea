"""``raysys recalibrate``: a registered ensemble's threshold moved to new normal data, as a new version.

Real local MLflow stores (SQLite under tmp_path) and real onnxruntime. One small ensemble (an AE
fitted for 2 epochs, no Isolation Forest or PCA, gates off) is built once for the module and
registered as version 1 in a fresh store per test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from raysys.cli import main
from raysys.data import generate_dataset, load_dataset
from raysys.data.synthetic import TIMESTAMP
from raysys.ensemble.recalibrate import recalibrate
from raysys.evaluation.calibration import GATE_FACTOR, HOLDOUT_FRACTION
from raysys.ensemble.registry import CHAMPION, PREVIOUS, register_ensemble
from raysys.ensemble.runtime import load_runtime
from raysys.ensemble.workflow import run_ensemble
from raysys.models import build_detector

NAME = "raysys-detector"
CHAMPION_URI = f"models:/{NAME}@{CHAMPION}"


@pytest.fixture(scope="module")
def ensemble(small_dataset, tmp_path_factory):
    """``run_ensemble`` on the 3,000-row dataset, registered as version 1 of its own module store."""
    dataset = load_dataset(small_dataset)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        det = build_detector("ae", epochs=2).fit(dataset.features("train"), dataset.labels("train"))
    finally:
        torch.set_num_threads(threads)
    root = tmp_path_factory.mktemp("recalibrate")
    result = run_ensemble(dataset, detectors={"ae": det}, gates={}, iforest=False, pca=False,
                          out_dir=root / "out", tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    assert result.version == "1"
    return result


@pytest.fixture()
def store(ensemble, mlflow_uri):
    """A fresh MLflow store holding the module's ensemble as version 1 (@champion)."""
    registration = register_ensemble(ensemble.build, ensemble.gates, NAME, tracking_uri=mlflow_uri)
    assert registration.version == "1"
    return mlflow_uri


@pytest.fixture(scope="module")
def new_dataset(tmp_path_factory):
    """New plant data (another seed, 5,000 rows) whose last 30% stays close to the first 70%."""
    return generate_dataset(tmp_path_factory.mktemp("new") / "plant", rows=5000, seed=12)


@pytest.fixture(scope="module")
def exchangeable(tmp_path_factory) -> pd.DataFrame:
    """Normal rows of a 6,000-row dataset in random order (fresh timestamps): the held-out tail is
    exchangeable with the calibration rows, so the measured rate tests the calibration alone, not the
    plant's slow wander (the generator's weekly cycle and AR(1) drift; that is the gate's business).
    The model's only member scores single rows, so row order does not change the scores."""
    dataset = load_dataset(generate_dataset(tmp_path_factory.mktemp("exch") / "d", rows=6000, seed=21))
    frame = pd.concat([dataset.train, dataset.val, dataset.test], ignore_index=True)
    frame = frame[frame["is_anomaly"] == 0][[TIMESTAMP, *dataset.sensors]]
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame[TIMESTAMP] = pd.date_range("2030-01-01", periods=len(frame), freq="1min")
    return frame


def write(frame: pd.DataFrame, path) -> str:
    frame.to_parquet(path, index=False)
    return str(path)


def test_registers_a_new_version_and_moves_champion(ensemble, store, new_dataset):
    old_threshold = ensemble.build.spec["threshold"]
    result = recalibrate(CHAMPION_URI, new_dataset, target_far=0.01, tracking_uri=store)
    assert (result.version, result.model_uri) == ("2", f"models:/{NAME}/2")
    client = MlflowClient(store)
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"
    assert str(client.get_model_version_by_alias(NAME, PREVIOUS).version) == "1"

    champion = load_runtime(CHAMPION_URI, tracking_uri=store)
    assert champion.threshold == pytest.approx(result.threshold) and champion.threshold != old_threshold
    spec = champion.spec
    assert (spec["threshold_method"], spec["target_far"]) == ("far", 0.01)
    rec = spec["recalibrated"]
    assert rec["source"]["version"] == "1" and rec["source"]["run_id"] == client.get_model_version(NAME, "1").run_id
    assert rec["data"]["path"] == str(new_dataset) and rec["rows"] == result.rows
    assert rec["previous"]["threshold"] == old_threshold and rec["date"]
    # everything else, members and files, is the old ensemble's
    old_spec = ensemble.build.spec
    assert {k: v for k, v in spec.items() if k not in ("threshold", "threshold_method", "target_far",
                                                       "percentile", "recalibrated")} == \
        json.loads(json.dumps({k: v for k, v in old_spec.items() if k not in ("threshold", "threshold_method",
                                                                              "target_far", "percentile")}))
    for file in old_spec["files"]:
        assert (champion.directory / file).read_bytes() == (ensemble.ensemble_dir / file).read_bytes()

    # version 1 is untouched and still loads with its own threshold
    old = load_runtime(f"models:/{NAME}/1", tracking_uri=store)
    assert old.threshold == old_threshold and "recalibrated" not in old.spec
    assert load_runtime(f"models:/{NAME}@{PREVIOUS}", tracking_uri=store).threshold == old_threshold
    # the normal rows: every split's rows not labelled anomalous, less the history rows (none here)
    data = load_dataset(new_dataset)
    assert result.rows == sum(int((data.split(s)["is_anomaly"] == 0).sum()) for s in ("train", "val", "test"))
    assert result.holdout_rows == round(result.rows * HOLDOUT_FRACTION)
    assert result.holdout_far <= GATE_FACTOR * 0.01


@pytest.mark.parametrize("far", [0.01, 0.05])
def test_threshold_flags_about_the_asked_rate_of_held_out_rows(store, exchangeable, tmp_path, far):
    """Tolerance: the held-out rate within [0.2x, 3x] of the asked one (about 1,700 held-out rows:
    17 expected false alarms at 1%, 85 at 5%)."""
    result = recalibrate(CHAMPION_URI, input_path=write(exchangeable, tmp_path / "normal.parquet"),
                         target_far=far, tracking_uri=store, register=False)
    assert result.calibration_rows + result.holdout_rows == len(exchangeable)
    assert result.calibration_far == pytest.approx(far, rel=0.1)
    assert 0.2 * far <= result.holdout_far <= 3 * far
    # the same rate when the held-out rows are scored on their own with the new threshold
    runtime = load_runtime(CHAMPION_URI, tracking_uri=store)
    tail = exchangeable.iloc[result.calibration_rows:]
    flagged = runtime.score(tail[runtime.sensors].to_numpy(np.float32))["score"] > result.threshold
    assert flagged.mean() == pytest.approx(result.holdout_far)


def test_gate_refuses_a_shifted_tail_unless_forced(store, exchangeable, tmp_path):
    shifted = exchangeable.copy()
    tail = np.arange(len(shifted)) >= int(len(shifted) * (1 - HOLDOUT_FRACTION))
    sensors = [c for c in shifted.columns if c != TIMESTAMP]
    shifted.loc[tail, sensors] += 2.0 * shifted[sensors].std()  # 2 standard deviations on every sensor
    path = write(shifted, tmp_path / "shifted.parquet")
    with pytest.raises(ValueError, match=r"refused.*held-out.*above 2 x the asked 0.01 = 0.02.*--force") as err:
        recalibrate(CHAMPION_URI, input_path=path, target_far=0.01, tracking_uri=store)
    assert str(err.value).count("0.") >= 3  # the measured, asked and limit rates
    assert str(MlflowClient(store).get_model_version_by_alias(NAME, CHAMPION).version) == "1"  # nothing registered
    forced = recalibrate(CHAMPION_URI, input_path=path, target_far=0.01, tracking_uri=store, force=True)
    assert forced.version == "2" and forced.holdout_far > 5 * GATE_FACTOR * 0.01  # about 0.21 measured
    assert load_runtime(CHAMPION_URI, tracking_uri=store).spec["recalibrated"]["forced"] is True


def test_errors_name_the_problem(store, exchangeable, tmp_path):
    missing = write(exchangeable.drop(columns=["pressure"]), tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match=r"missing sensor column\(s\) \['pressure'\]"):
        recalibrate(CHAMPION_URI, input_path=missing, tracking_uri=store)
    with pytest.raises(ValueError, match=r"models:/no-such-model@champion: model URI not found.*'no-such-model'"):
        recalibrate("models:/no-such-model@champion", input_path=missing, tracking_uri=store)
    with pytest.raises(ValueError, match=r"model URI not found.*alias 'staging'"):
        recalibrate(f"models:/{NAME}@staging", input_path=missing, tracking_uri=store)
    few = write(exchangeable.head(50), tmp_path / "few.parquet")
    with pytest.raises(ValueError, match=r"too few normal rows to recalibrate: 50 .*at least 200"):
        recalibrate(CHAMPION_URI, input_path=few, tracking_uri=store)


def test_cli_registers_and_prints_the_new_version(store, exchangeable, tmp_path, capsys):
    path = write(exchangeable, tmp_path / "normal.parquet")
    code = main(["recalibrate", "--model", CHAMPION_URI, "--input", path, "--target-far", "0.05",
                 "--mlflow-uri", store])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"registered {NAME} version 2 as @champion" in out
    assert "held-out" in out and "last 30% in time order" in out
    assert main(["recalibrate", "--model", "models:/nope@champion", "--input", path, "--mlflow-uri", store]) == 2
    assert "model URI not found" in capsys.readouterr().err
