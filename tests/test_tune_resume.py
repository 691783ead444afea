"""Kill a running sweep (its whole process group), resume it with ``--resume``: the remaining
trials finish and the ones that had finished are not run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from raysys.models import load_detector
from raysys.tune import SweepConfig
from raysys.tune.leaderboard import latest_checkpoint
from raysys.tune.trial import TRIAL_RECORD


def _records(train_dir: Path) -> dict[str, dict]:
    records = {}
    for path in train_dir.glob(f"trial_*/{TRIAL_RECORD}"):
        try:
            records[path.parent.name] = json.loads(path.read_text())
        except json.JSONDecodeError:  # being replaced right now
            continue
    return records


def _part_way(train_dir: Path, max_epochs: int, client: MlflowClient) -> set[str]:
    """Trials part-way through their Train run: some epochs reported (so checkpointed), not all."""
    part_way = set()
    for name, record in _records(train_dir).items():
        if record.get("status") == "running" and 0 < latest_checkpoint(train_dir / name)[0] < max_epochs:
            if 0 < len(client.get_metric_history(record["run_id"], "val_loss")) < max_epochs:
                part_way.add(name)
    return part_way


def _tune_state(sweep_dir: Path) -> str:
    """The text of Tune's latest saved experiment state (empty before the first save)."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    try:
        return states[-1].read_text() if states else ""
    except FileNotFoundError:  # replaced while reading
        return ""


def _snapshot(trial_dir: Path) -> dict[str, float]:
    """Every file of a trial's Train run with its modification time."""
    return {str(p.relative_to(trial_dir)): p.stat().st_mtime for p in trial_dir.rglob("*") if p.is_file()}


def test_killed_sweep_resumes_without_rerunning_finished_trials(ray_cluster, small_dataset, mlflow_uri, tmp_path):
    storage = tmp_path / "runs"
    # enough epochs that a trial seen part-way is still part-way once its actors stop after the kill
    # (they outlive the killed driver by a second or two; an epoch takes a fraction of one), and a
    # patience no run reaches, so every trial trains all of them
    config = SweepConfig.quick(name="resumable", num_samples=3, max_epochs=16, patience=16, scheduler="fifo",
                               max_concurrent=2, storage_path=str(storage), tracking_uri=mlflow_uri,
                               time_budget_s=900)
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(config.to_yaml())
    # Tune saves its experiment state every >= 10 s by default; every second makes the kill point
    # below reachable in a short test
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
           "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    sweep_dir = storage / "resumable"
    train_dir = sweep_dir / "train"

    client = MlflowClient(mlflow_uri)
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, "-m", "raysys.tune", "--data", str(small_dataset),
                              "--config", str(config_path)], env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        # kill once a trial has finished and another one is part-way: it reported an epoch (so that
        # epoch is checkpointed), not its last, and is in Tune's saved experiment state (a trial
        # started after the last save is run again as a new trial on resume)
        while time.monotonic() < deadline and first.poll() is None:
            done = {name for name, r in _records(train_dir).items() if r.get("status") == "completed"}
            if done and {name for name in _part_way(train_dir, config.max_epochs, client) - done
                         if name.removeprefix("trial_") in _tune_state(sweep_dir)}:
                break
            time.sleep(0.2)
        assert first.poll() is None, f"the sweep ended before it could be killed; see {tmp_path / 'first.log'}"
        assert time.monotonic() < deadline, "no trial finished in time"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started in its session
        killed_at_ms = time.time() * 1000
        first.wait()
        log.close()

    finished = {name: r for name, r in _records(train_dir).items() if r.get("status") == "completed"}
    part_way = {name for name in _part_way(train_dir, config.max_epochs, client) - set(finished)
                if name.removeprefix("trial_") in _tune_state(sweep_dir)}
    assert 1 <= len(finished) < 3 and part_way
    before = {name: _snapshot(train_dir / name) for name in finished}

    with open(tmp_path / "resume.log", "w") as log:
        resumed = subprocess.run([sys.executable, "-m", "raysys.tune", "--resume", str(sweep_dir)], env=env,
                                 stdout=log, stderr=subprocess.STDOUT, timeout=900)
    assert resumed.returncode == 0, (tmp_path / "resume.log").read_text()[-5000:]

    board = pd.read_csv(sweep_dir / "leaderboard.csv", dtype={"trial_id": str})
    assert len(board) == 3 and set(board["family"]) == {"ae", "vae", "lstm"}
    assert (board["status"] == "completed").all(), board[["trial_id", "status", "epochs"]]
    assert (board["epochs"] == config.max_epochs).all()

    # finished trials were not trained again: their Train runs and records are untouched
    for name, files in before.items():
        assert _snapshot(train_dir / name) == files, f"{name} was run again"

    # one MLflow child run per trial, each epoch logged once
    record = json.loads((sweep_dir / "raysys_sweep.json").read_text())
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{record['parent_run_id']}'")
    # a trial started just before the kill but not yet in Tune's saved state is run again under a
    # new trial id (same config); its first child run is closed as lost
    lost = [c for c in children if c.data.tags.get("raysys.trial_status") == "lost"]
    assert all(c.info.status == "KILLED" for c in lost)
    children = [c for c in children if c not in lost]
    assert sorted(c.data.tags["raysys.trial_id"] for c in children) == sorted(board["trial_id"])
    assert set(board["run_id"]) == {c.info.run_id for c in children}
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val_loss")
        name = f"trial_{child.data.tags['raysys.trial_id']}"
        assert max(m.step for m in history) == config.max_epochs
        if name in finished:
            assert sorted(m.step for m in history) == list(range(1, config.max_epochs + 1))
        else:
            # resumed from its Train checkpoint: no epoch it had reported before the kill was trained
            # again (an epoch checkpointed in the instant before the kill may lack its MLflow point)
            before_kill = {m.step for m in history if m.timestamp < killed_at_ms}
            assert not before_kill & {m.step for m in history if m.timestamp >= killed_at_ms}
            assert len(history) == len({m.step for m in history})
            if name in part_way:
                assert before_kill, f"{name} had reported no epoch before the kill"

    best = json.loads((sweep_dir / "best.json").read_text())
    assert set(best) == {"ae", "vae", "lstm"}
    for family, entry in best.items():
        assert load_detector(entry["checkpoint"]).family == family
    assert yaml.safe_load(config_path.read_text())["num_samples"] == 3
