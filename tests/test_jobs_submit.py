"""`ray job submit` jobs: a real local Ray head (`ray start --head`, dashboard on 127.0.0.1)
accepts jobs from jobs/ through the Job Submission SDK (`raysys submit`) and the `ray job
submit` CLI; a tiny training job logs to MLflow and SUCCEEDS, a job with bad arguments FAILS
with the argparse error in its logs. Plus unit tests of the submission helper."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from raysys.jobs import build_runtime_env, load_runtime_env, submit_job
from raysys.jobs import cli as jobs_cli
from raysys.jobs.submit import DEFAULT_EXCLUDES, EXIT_STOPPED, EXIT_TIMEOUT, exit_code_for, follow_job

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


# --------------------------------------------------------------------------- a real Ray head


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid``: everything the `ray start` we launched started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ...
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 with its own ports and temp dir, in its own
    session; torn down by signalling that session only (never `ray stop`, which would stop
    every Ray on the machine)."""
    temp_dir = tempfile.mkdtemp(prefix="rsjob-", dir="/tmp")  # short: Ray's socket paths
    gcs, dashboard, client, agent_http, agent_grpc, metrics, runtime_env_agent, node_manager, objects = _free_ports(9)
    worker_low = 20000 + (os.getpid() % 200) * 100
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_ADDRESS")}
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keep every Ray address on 127.0.0.1
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="1",
        RAY_USAGE_STATS_ENABLED="0",
        # A loopback-only test cluster: no token auth, whatever ~/.ray/auth_token holds.
        RAY_AUTH_MODE="disabled",
    )
    command = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env_agent}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={objects}", f"--min-worker-port={worker_low}",
        f"--max-worker-port={worker_low + 99}", "--num-cpus=2", "--num-gpus=0",
        "--object-store-memory=268435456", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited {process.returncode}: {(Path(temp_dir) / 'ray-start.log').read_text()}")
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield SimpleNamespace(address=address, env=env, temp_dir=temp_dir)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid in _session_pids(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.poll() is None:
            process.wait(timeout=10)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _client(ray_head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_head.address)


def _runtime_env(**env_vars: str) -> dict:
    """jobs/runtime_env.local.yaml with this checkout as working_dir."""
    runtime_env = load_runtime_env(ROOT / "jobs" / "runtime_env.local.yaml")
    return build_runtime_env(runtime_env, working_dir=ROOT, env_vars=env_vars)


def test_training_job_succeeds_and_logs_to_mlflow(ray_head, tmp_path):
    """`python jobs/generate.py ... && python jobs/train.py ...` on the head: a tiny model,
    logged to MLflow, SUCCEEDED."""
    from mlflow.tracking import MlflowClient

    data = tmp_path / "data"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    entrypoint = (
        f"python jobs/generate.py --profile water_treatment --rows 3000 --seed 0 --out {data}"
        f" && python jobs/train.py --data {data} --model ae --num-workers 1 --max-epochs 1 --threshold percentile"
        f" --mlflow-uri {mlflow_uri} --storage-path {tmp_path / 'ray_results'}"
    )
    logs = io.StringIO()
    code = submit_job(
        ray_head.address,
        entrypoint,
        _runtime_env(MLFLOW_TRACKING_URI=mlflow_uri),
        submission_id="raysys-test-train",
        timeout_s=600,
        out=logs,
    )
    assert code == 0, logs.getvalue()[-5000:]
    client = _client(ray_head)
    assert str(client.get_job_status("raysys-test-train")) == "SUCCEEDED"
    assert "MLflow run" in client.get_job_logs("raysys-test-train")

    tracking = MlflowClient(mlflow_uri)
    experiments = [e.experiment_id for e in tracking.search_experiments()]
    runs = tracking.search_runs(experiments)
    assert runs, "the job logged no MLflow run"
    assert any(run.info.status == "FINISHED" and run.data.metrics for run in runs)


def test_job_with_bad_arguments_fails_with_the_error_in_its_logs(ray_head, capsys):
    """Two jobs at once with bad flags: one through the README's `ray job submit ... -- python
    jobs/train.py ...` line, one through `raysys submit`, whose exit code is the driver's
    (argparse: 2). Both FAIL with the argparse error in their logs."""
    bad_flags = ["python", "jobs/train.py", "--data", "/nonexistent", "--model", "nonsense"]
    ray_cli = subprocess.Popen(
        [
            RAY, "job", "submit", "--address", ray_head.address,
            "--runtime-env", "jobs/runtime_env.local.yaml", "--working-dir", ".",
            "--submission-id", "raysys-test-cli", "--", *bad_flags,
        ],
        cwd=ROOT, env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        parser = argparse.ArgumentParser(prog="raysys")
        jobs_cli.add_parsers(parser.add_subparsers(dest="command"))
        args = parser.parse_args(
            [
                "submit", "--address", ray_head.address,
                "--runtime-env", str(ROOT / "jobs" / "runtime_env.local.yaml"), "--working-dir", str(ROOT),
                "--submission-id", "raysys-test-bad-args", "--timeout", "300", "--", *bad_flags,
            ]
        )  # fmt: skip
        assert args.func(args) == 2
        cli_output, _ = ray_cli.communicate(timeout=300)
    finally:
        if ray_cli.poll() is None:
            ray_cli.kill()
    client = _client(ray_head)
    for job_id in ("raysys-test-bad-args", "raysys-test-cli"):
        assert str(client.get_job_status(job_id)) == "FAILED"
        assert "invalid choice: 'nonsense'" in client.get_job_logs(job_id)
    assert "invalid choice: 'nonsense'" in capsys.readouterr().out  # streamed to the terminal
    assert ray_cli.returncode != 0
    assert "invalid choice: 'nonsense'" in cli_output


def test_no_wait_returns_once_the_job_is_accepted(ray_head, capsys):
    code = submit_job(ray_head.address, "python -c \"print('hello from raysys')\"", follow=False,
                      submission_id="raysys-test-no-wait")  # fmt: skip
    assert code == 0
    assert "raysys-test-no-wait" in capsys.readouterr().out
    client = _client(ray_head)
    deadline = time.monotonic() + 120
    while not client.get_job_status("raysys-test-no-wait").is_terminal():
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert str(client.get_job_status("raysys-test-no-wait")) == "SUCCEEDED"
    assert "hello from raysys" in client.get_job_logs("raysys-test-no-wait")


# --------------------------------------------------------------------------- unit tests


class FakeClient:
    """A JobSubmissionClient stand-in: statuses in order, logs in chunks."""

    def __init__(self, statuses, chunks=("line 1\n", "line 2\n"), driver_exit_code=None, tail_error=None):
        self.statuses = list(statuses)
        self.chunks = list(chunks)
        self.driver_exit_code = driver_exit_code
        self.tail_error = tail_error
        self.submitted = {}

    def submit_job(self, **kwargs):
        self.submitted = kwargs
        return kwargs.get("submission_id") or "raysubmit_1"

    async def tail_job_logs(self, job_id):
        if self.tail_error:
            raise self.tail_error
        for chunk in self.chunks:
            yield chunk

    def get_job_status(self, job_id):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def get_job_logs(self, job_id):
        return "".join(self.chunks)

    def get_job_info(self, job_id):
        return SimpleNamespace(driver_exit_code=self.driver_exit_code, message="done")


@pytest.mark.parametrize(
    ("status", "driver_exit_code", "expected"),
    [("SUCCEEDED", 0, 0), ("FAILED", 2, 2), ("FAILED", None, 1), ("FAILED", 0, 1), ("STOPPED", None, EXIT_STOPPED)],
)
def test_exit_code_for_terminal_statuses(status, driver_exit_code, expected):
    assert exit_code_for(status, driver_exit_code) == expected


def test_exit_code_for_rejects_a_running_job():
    with pytest.raises(ValueError, match="'RUNNING'"):
        exit_code_for("RUNNING")


def test_submit_job_streams_logs_and_returns_the_drivers_exit_code():
    client = FakeClient(["RUNNING", "FAILED"], driver_exit_code=3)
    out = io.StringIO()
    code = submit_job("http://unused:8265", "python jobs/train.py", {"env_vars": {"A": "1"}}, client=client,
                      out=out, poll_interval_s=0)  # fmt: skip
    assert code == 3
    assert out.getvalue() == "line 1\nline 2\n"
    assert client.submitted["entrypoint"] == "python jobs/train.py"
    assert client.submitted["runtime_env"] == {"env_vars": {"A": "1"}}


def test_follow_job_falls_back_to_polling_when_streaming_fails():
    client = FakeClient(["RUNNING", "SUCCEEDED"], tail_error=RuntimeError("websocket closed"))
    out = io.StringIO()
    assert follow_job(client, "job", out=out, poll_interval_s=0) == 0
    assert out.getvalue() == "line 1\nline 2\n"  # printed once at the end


def test_follow_job_times_out_while_the_job_keeps_running():
    client = FakeClient(["RUNNING"], tail_error=RuntimeError("no websocket"))
    assert follow_job(client, "job", out=io.StringIO(), timeout_s=0.05, poll_interval_s=0.01) == EXIT_TIMEOUT


def test_submit_job_rejects_an_empty_entrypoint():
    with pytest.raises(ValueError, match="entrypoint is empty"):
        submit_job("http://unused:8265", "  ", client=FakeClient(["SUCCEEDED"]))


def test_build_runtime_env_merges_overrides(tmp_path):
    merged = build_runtime_env(
        {"working_dir": "s3://bucket/code.zip", "env_vars": {"A": "1", "B": "2"}},
        env_vars={"B": "3", "MLFLOW_TRACKING_URI": "http://mlflow:5000"},
    )
    assert merged == {
        "working_dir": "s3://bucket/code.zip",
        "env_vars": {"A": "1", "B": "3", "MLFLOW_TRACKING_URI": "http://mlflow:5000"},
    }
    local = build_runtime_env(None, working_dir=tmp_path)
    assert local == {"working_dir": str(tmp_path), "excludes": list(DEFAULT_EXCLUDES)}
    assert build_runtime_env(None) is None
    with pytest.raises(ValueError, match="not a directory"):
        build_runtime_env({"working_dir": str(tmp_path / "missing")})


def test_load_runtime_env_rejects_a_non_mapping(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_runtime_env(path)
    path.write_text("")
    assert load_runtime_env(path) == {}


def test_submit_cli_parses_the_entrypoint_after_double_dash(monkeypatch):
    calls = {}

    def fake_submit_job(address, entrypoint, runtime_env, follow=True, **kwargs):
        calls.update(address=address, entrypoint=entrypoint, runtime_env=runtime_env, follow=follow, **kwargs)
        return 0

    monkeypatch.setattr(jobs_cli, "submit_job", fake_submit_job)
    parser = argparse.ArgumentParser(prog="raysys")
    jobs_cli.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["submit", "--address", "http://head:8265", "--env", "MLFLOW_TRACKING_URI=http://m:5000", "--no-wait",
         "--", "python", "jobs/train.py", "--data", "/mnt/shared/data dir", "--model", "ae"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert calls["address"] == "http://head:8265"
    assert calls["entrypoint"] == "python jobs/train.py --data '/mnt/shared/data dir' --model ae"
    assert calls["runtime_env"] == {"env_vars": {"MLFLOW_TRACKING_URI": "http://m:5000"}}
    assert calls["follow"] is False


def test_submit_cli_requires_an_entrypoint():
    parser = argparse.ArgumentParser(prog="raysys")
    jobs_cli.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["submit", "--address", "http://head:8265"])
    with pytest.raises(SystemExit, match="after '--'"):
        args.func(args)


def test_raysys_cli_has_the_submit_command(monkeypatch):
    """`raysys submit ...` reaches raysys.jobs.cli.run through the main CLI."""
    from raysys.cli import main

    calls = {}
    monkeypatch.setattr(jobs_cli, "submit_job", lambda address, entrypoint, *a, **k: calls.update(
        address=address, entrypoint=entrypoint) or 0)  # fmt: skip
    assert main(["submit", "--address", "http://head:8265", "--", "python", "jobs/train.py", "--model", "ae"]) == 0
    assert calls == {"address": "http://head:8265", "entrypoint": "python jobs/train.py --model ae"}
