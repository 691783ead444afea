"""A real ``raysys train`` process, connected to the session's Ray cluster, is killed once it has
written a checkpoint; ``raysys train --resume`` then continues the same run (Ray Train run name
and MLflow run) from that checkpoint instead of starting again at epoch 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from raysys.cli import main
from raysys.layout import TRAIN_STATE

RAYSYS = str(Path(sys.executable).with_name("raysys"))
EPOCHS = 8
HANG_GUARD_S = 600  # only so that a broken cluster fails the test instead of hanging it


def _wait_for(condition, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}\n{log.read_text() if log else ''}"
        time.sleep(0.1)


def _complete_checkpoints(run_dir: Path) -> list[int]:
    """Epochs whose checkpoint directory holds a training state that loads."""
    epochs = []
    for ckpt in sorted(run_dir.glob("epoch-*")):
        try:
            epochs.append(torch.load(ckpt / TRAIN_STATE, weights_only=True)["epoch"])
        except Exception:  # cut short by the kill
            continue
    return epochs


def test_killed_training_resumes_from_its_checkpoint(ray_cluster, small_dataset, tmp_path, capsys):
    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = storage / "R"
    common = ["--data", str(small_dataset), "--storage-path", str(storage), "--mlflow-uri", uri]
    log = tmp_path / "first.log"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    # small batches: about 1 s an epoch on 2 CPUs, so the kill lands well before the last epoch
    with log.open("w") as out:
        proc = subprocess.Popen(
            [RAYSYS, "train", *common, "--model", "ae", "--num-workers", "2", "--max-epochs", str(EPOCHS),
             "--patience", "100", "--param", "batch_size=32", "--run-name", "R"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(lambda: (run_dir / "epoch-0002").exists() or proc.poll() is not None, "epoch-0002", log)
            assert proc.poll() is None, f"training ended before it could be killed\n{log.read_text()}"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the driver's death ends its Ray job; wait until its workers have given their CPUs back
    _wait_for(lambda: ray_cluster.available_resources().get("CPU", 0) >= 2, "the killed run's workers to exit")

    run_id = json.loads((run_dir / "raysys_run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # killed, never finished
    checkpointed = _complete_checkpoints(run_dir)
    assert checkpointed and 1 <= max(checkpointed) < EPOCHS
    last = max(checkpointed)
    logged_before = {m.step for m in client.get_metric_history(run_id, "train_loss")}
    assert logged_before <= set(range(1, last + 1))

    resumed_at = int(time.time() * 1000)
    assert main(["train", "--resume", "R", *common]) == 0
    assert f"run R: MLflow run {run_id}, {EPOCHS} epochs" in capsys.readouterr().out

    # the same MLflow run, finished, with each epoch exactly once ...
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert [r.info.run_id for r in client.search_runs(experiments)] == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    # ... and the resumed process trained only the epochs after the checkpoint
    assert sorted(m.step for m in history if m.timestamp >= resumed_at) == list(range(last + 1, EPOCHS + 1))
    final = torch.load(run_dir / f"epoch-{EPOCHS:04d}" / TRAIN_STATE, weights_only=True)
    assert final["epoch"] == EPOCHS
    assert [h["epoch"] for h in final["history"]] == list(range(1, EPOCHS + 1))
    assert (run_dir / f"epoch-{EPOCHS:04d}" / "detector" / "model.pt").exists()


def test_sigterm_marks_the_run_interrupted_and_keeps_its_checkpoints(ray_cluster, small_dataset, tmp_path):
    """Kubernetes stops a RayJob's driver with SIGTERM: it is handled like Ctrl-C, so the run ends
    KILLED and tagged interrupted (never FINISHED), its checkpoints stay, and the exit code is 130."""
    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = storage / "T"
    log = tmp_path / "sigterm.log"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [RAYSYS, "train", "--data", str(small_dataset), "--storage-path", str(storage), "--mlflow-uri", uri,
             "--model", "ae", "--num-workers", "1", "--max-epochs", "500", "--patience", "500",
             "--param", "batch_size=32", "--run-name", "T"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(lambda: (run_dir / "epoch-0001").exists() or proc.poll() is not None, "epoch-0001", log)
            assert proc.poll() is None, f"training ended before it could be stopped\n{log.read_text()}"
            proc.send_signal(signal.SIGTERM)
            _wait_for(lambda: proc.poll() is not None, "the driver to exit after SIGTERM", log)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, log.read_text()
    assert "raysys train: interrupted" in log.read_text()
    _wait_for(lambda: ray_cluster.available_resources().get("CPU", 0) >= 2, "the stopped run's workers to exit")
    run = MlflowClient(uri).get_run(json.loads((run_dir / "raysys_run.json").read_text())["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["raysys.status"] == "interrupted"
    assert _complete_checkpoints(run_dir), "the checkpoints written before SIGTERM are kept"
