"""A small sweep on the real local Ray cluster: every trial a Ray Train run, ASHA, MLflow, outputs."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from raysys.data import load_dataset
from raysys.models import FAMILY_NAMES, load_detector
from raysys.tune import SweepConfig, run_sweep


def _wait_for_cpus(ray, expected: float, timeout_s: float = 60.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        available = ray.available_resources().get("CPU", 0.0)
        if available >= expected:
            return available
        time.sleep(1.0)
    return ray.available_resources().get("CPU", 0.0)


def test_small_sweep_over_three_families(ray_cluster, small_dataset, mlflow_uri, tmp_path):
    config = SweepConfig.quick(name="small", num_samples=6, scheduler="asha", max_epochs=2, grace_period=1,
                               reduction_factor=3, max_concurrent=2, workers_per_trial=1,
                               storage_path=str(tmp_path / "runs"), tracking_uri=mlflow_uri, seed=0,
                               time_budget_s=900)
    result = run_sweep(config, small_dataset)

    board = result.leaderboard
    assert result.finished and len(board) == 6
    assert set(board["family"]) == set(FAMILY_NAMES)  # 6 trials round-robin over the 4 families
    assert not (board["status"] == "error").any(), board[["trial_id", "status"]]
    stopped = board[board["status"] == "stopped"]
    assert (stopped["epochs"] < config.max_epochs).all()
    assert (board.loc[board["status"] == "completed", "epochs"] == config.max_epochs).all()
    assert board["val_pr_auc"].between(0, 1).all()
    assert result.total_trial_epochs == board["epochs_run"].sum() <= 6 * config.max_epochs
    on_disk = pd.read_csv(result.sweep_dir / "leaderboard.csv")
    assert list(on_disk["trial_id"].astype(str)) == list(board["trial_id"])
    assert (result.sweep_dir / "leaderboard.png").stat().st_size > 0

    # MLflow: the parent run holds the leaderboard; every trial is a child run with params and curves
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["scheduler"] == "asha"
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"leaderboard.csv", "leaderboard.png", "best.json", "best_configs.json", "sweep.yaml"} <= artifacts
    assert parent.data.metrics["trials_stopped"] == len(stopped)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(c.data.tags["raysys.trial_id"] for c in children) == sorted(board["trial_id"])
    by_trial = {c.data.tags["raysys.trial_id"]: c for c in children}
    for row in board.itertuples():
        child = by_trial[row.trial_id]
        assert child.info.run_id == row.run_id
        assert child.data.params["model"] == row.family and any(k.startswith("model.") for k in child.data.params)
        assert child.info.status == ("FINISHED" if row.status == "completed" else "KILLED")
        assert child.data.tags["raysys.trial_status"] == row.status
        steps = [m.step for m in client.get_metric_history(row.run_id, "val_pr_auc")]
        assert steps == sorted(set(steps)) and len(steps) >= row.epochs
    # ASHA's one rung is epoch 1 (grace period 1, max_t 3): a trial stops there only below the
    # cutoff of the results recorded before it, so the best trial at that rung always runs on
    first_epoch = {row.trial_id: next(m.value for m in client.get_metric_history(row.run_id, "val_pr_auc")
                                      if m.step == 1) for row in board.itertuples()}
    best_at_rung = max(first_epoch.values())
    assert all(board.set_index("trial_id").loc[t, "status"] == "completed"
               for t, v in first_epoch.items() if v == best_at_rung)

    # best.json: one loadable detector per family, for the ensemble step
    best = json.loads((result.sweep_dir / "best.json").read_text())
    assert best == result.best and set(best) == set(FAMILY_NAMES)
    val = load_dataset(small_dataset).features("val")
    for family, entry in best.items():
        assert entry["metric_name"] == "val_pr_auc" and 0 <= entry["metric"] <= 1
        assert entry["run_id"] in by_trial[entry["trial_id"]].info.run_id
        assert entry["config"]["family"] == family
        family_rows = board[board["family"] == family]
        assert entry["trial_metric"] == family_rows["val_pr_auc"].max()
        detector = load_detector(entry["checkpoint"])
        assert detector.family == family
        scores = detector.decision_function(val)
        assert scores.shape == (len(val),) and np.isfinite(scores).all()

    # trials stopped early by ASHA gave their Train workers' CPUs back
    assert _wait_for_cpus(ray_cluster, 2.0) == 2.0
