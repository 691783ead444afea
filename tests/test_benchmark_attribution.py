"""``raysys benchmark attribution``: events from the generated ground truth, hit rates, the command end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from raysys.benchmarks import cli as benchmark_cli
from raysys.benchmarks.attribution import hit_rates, labelled_events
from raysys.data import load_dataset


def test_hit_rates_worked_by_hand():
    """Three events: a spike caught and attributed right, a drift caught but attributed second, a
    stuck sensor never flagged (not counted in the rates); the peak row decides."""
    events = [{"type": "spike", "sensors": ["a"], "rows": (0, 2)},
              {"type": "drift", "sensors": ["b"], "rows": (2, 5)},
              {"type": "stuck", "sensors": ["c"], "rows": (5, 6)},
              {"type": "process", "sensors": ["a", "c"], "rows": (6, 7)}]
    scores = np.array([1.0, 5.0, 1.0, 9.0, 2.0, 0.5, 3.0])
    flags = np.array([False, True, False, True, False, False, True])
    top = [["b"], ["a", "b"], ["b"], ["a", "b", "c"], ["b"], ["c"], ["d", "c"]]
    rates = hit_rates(events, scores, flags, top)
    assert rates["by_type"]["spike"] == {"events": 1, "detected": 1, "top1": 1.0, "top3": 1.0}
    assert rates["by_type"]["drift"] == {"events": 1, "detected": 1, "top1": 0.0, "top3": 1.0}
    assert rates["by_type"]["stuck"] == {"events": 1, "detected": 0, "top1": None, "top3": None}
    assert rates["single_sensor"] == {"events": 3, "detected": 2, "top1": 0.5, "top3": 1.0}
    assert rates["all"] == {"events": 4, "detected": 3, "top1": pytest.approx(1 / 3), "top3": 1.0}


def test_labelled_events_are_the_runs_of_one_event_in_the_test_split(small_dataset):
    dataset = load_dataset(small_dataset)
    events = labelled_events(dataset)
    labels, sensors, types = dataset.labels("test"), dataset.anomaly_sensors("test"), dataset.anomaly_types("test")
    assert events and sum(b - a for e in events for a, b in [e["rows"]]) == int(labels.sum())
    for event in events:
        a, b = event["rows"]
        assert all(sensors[i] == event["sensors"] for i in range(a, b))
        assert set(event["sensors"]) <= set(dataset.sensors)
        assert all(types[i] == event["type"] for i in range(a, b))
        assert a == 0 or labels[a - 1] == 0 or (types[a - 1], sensors[a - 1]) != (event["type"], event["sensors"])


def test_data_without_ground_truth_is_refused_by_name(small_dataset, tmp_path):
    import shutil

    import pandas as pd

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    test = pd.read_parquet(copy / "test.parquet").drop(columns=["anomaly_sensors"])
    test.to_parquet(copy / "test.parquet")
    with pytest.raises(ValueError, match="no 'is_anomaly' and 'anomaly_sensors' columns"):
        labelled_events(load_dataset(copy))


def test_command_fits_builds_measures_and_logs(small_dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="raysys")
    benchmark_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = parser.parse_args(["benchmark", "attribution", "--data", str(small_dataset), "--families", "ae",
                              "--json", str(tmp_path / "out.json"), "--out", str(tmp_path / "work"),
                              "--mlflow-uri", uri])
    assert args.func(args) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["families"] == ["ae"] and (tmp_path / "work" / "ensemble" / "ensemble.json").exists()
    rates = result["hit_rates"]
    assert rates["all"]["events"] == len(labelled_events(load_dataset(small_dataset))) > 0
    assert rates["all"]["detected"] >= 1 and 0.0 <= rates["all"]["top1"] <= rates["all"]["top3"] <= 1.0
    assert "single-sensor types" in capsys.readouterr().out
    [run] = MlflowClient(uri).search_runs(MlflowClient(uri).get_experiment_by_name("raysys").experiment_id)
    assert run.data.tags["raysys.benchmark"] == "attribution" and "all.top1" in run.data.metrics
