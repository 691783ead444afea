"""Reliability probes of the served detector: replica kills under load, oversized and slow bodies, bad input.

On one machine, against a real ``raysys`` Serve application (HAProxy ingress, raysys's ``retry_on``) serving
a small AE ensemble fitted here:

- **replica kill**: 32 concurrent clients send ``--requests`` predictions (single readings and 16-row
  batches; the clients do not retry); after a third of them one replica process gets SIGKILL. Once with
  1 replica and once with 2; client-visible failures are counted by kind (status code or exception).
- **memory**: the replica's RSS (psutil) while clients send oversized ``Transfer-Encoding: chunked`` bodies
  (60 MB each, no Content-Length) and slow bodies (a few bytes a second, never finished): it must stay flat,
  since a body is refused at ``max_body_bytes`` and given up after ``body_timeout_s``.
- **probes**: malformed requests (each must get its 4xx), extreme readings (each must answer 200, flagged
  ``out_of_range``, strict JSON), corrupt data files for ``raysys predict`` (each must fail with a clean
  ``ValueError``/``OSError`` naming the problem, never score garbage).

    python bench/bench_reliability.py                   # about 6 minutes on 2 cores
    python bench/bench_reliability.py --smoke-test      # 1 minute
    python bench/bench_reliability.py --retry-on conn-failure   # Serve's own retry policy, for comparison

Results: a Markdown table on stdout and ``--json``; ``docs/reliability.md`` holds a run's figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(workdir: Path, rows: int):
    """A small AE ensemble on a generated dataset; returns (ensemble dir, sensors, test rows)."""
    from raysys.data import generate_dataset, load_dataset
    from raysys.ensemble.build import build_ensemble
    from raysys.models import build_detector

    dataset = load_dataset(generate_dataset(workdir / "data", rows=rows, seed=7))
    X, y = dataset.features("train"), dataset.labels("train")
    detectors = {"ae": build_detector("ae", epochs=2, seed=0).fit(X, y)}
    built = build_ensemble(detectors, dataset, workdir / "ensemble", iforest=False)
    return Path(built.directory), dataset.sensors, dataset.features("test")


def replica_processes() -> dict[str, int]:
    """Alive AnomalyDetector replica processes on this machine: process title -> pid (Ray titles a replica's
    worker ``ray::ServeReplica:raysys:AnomalyDetector``; the state API would need the dashboard)."""
    import psutil

    found = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith("ray::ServeReplica:raysys:AnomalyDetector") and process.status() != psutil.STATUS_ZOMBIE:
            found[f"{title.split()[0]}#{process.info['pid']}"] = process.info["pid"]
    return found


def wait_replicas(n: int, timeout_s: float = 120) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = replica_processes()
        if len(found) == n:
            return found
        time.sleep(0.5)
    raise TimeoutError(f"{n} replicas not alive after {timeout_s}s: {replica_processes()}")


def deploy_fixed(ensemble: Path, port: int, replicas: int, user_config: dict | None = None) -> str:
    from raysys.serve import DeploymentSettings, ServeConfig, UserConfig, deploy

    config = ServeConfig(host="127.0.0.1", port=port, autoscaling_config=None, num_replicas=replicas,
                         deployment=DeploymentSettings(num_cpus=0.1, graceful_shutdown_timeout_s=5,
                                                       health_check_period_s=2),
                         user_config=UserConfig(**(user_config or {})))
    url = deploy(str(ensemble), config, timeout_s=180)
    wait_replicas(replicas)
    return url


def bodies(sensors: list[str], rows: np.ndarray) -> list[bytes]:
    out = []
    for i in range(64):
        if i % 2:
            out.append(json.dumps({"readings": [dict(zip(sensors, map(float, rows[i])))]}).encode())
        else:
            part = rows[i:i + 16]
            out.append(json.dumps({"columns": {s: part[:, j].astype(float).tolist()
                                               for j, s in enumerate(sensors)}}).encode())
    return out


def kill_under_load(url: str, payloads: list[bytes], replicas: int, clients: int, total: int) -> dict:
    """``total`` POSTs from ``clients`` threads (no client retries); SIGKILL one replica after a third."""
    import httpx

    counter, lock = itertools.count(), threading.Lock()
    failures: Counter = Counter()
    ok = [0]
    killed: list[str] = []

    def worker() -> None:
        with httpx.Client(timeout=30) as http:
            while (i := next(counter)) < total:
                try:
                    response = http.post(f"{url}/v1/predict", content=payloads[i % len(payloads)],
                                         headers={"content-type": "application/json"})
                    kind = None if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                with lock:
                    if kind is None:
                        ok[0] += 1
                    else:
                        failures[kind] += 1

    before = wait_replicas(replicas)
    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    while ok[0] + sum(failures.values()) < total // 3:
        time.sleep(0.01)
    name, pid = sorted(before.items())[0]
    os.kill(pid, signal.SIGKILL)
    killed.append(name)
    killed_at = ok[0] + sum(failures.values())
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    replaced = wait_replicas(replicas, timeout_s=180)
    assert name not in replaced
    return {"replicas": replicas, "clients": clients, "requests": total, "ok": ok[0],
            "failed": sum(failures.values()), "failures": dict(failures), "killed_after": killed_at,
            "seconds": round(seconds, 1)}


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def memory_under_bad_bodies(url: str, big: int, slow: int, slow_s: float) -> dict:
    """The replica's RSS during ``big`` concurrent 60 MB chunked bodies, then ``slow`` bodies that trickle."""
    import httpx

    (pid,) = wait_replicas(1).values()
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.05)

    def oversized() -> str:
        chunk = b"[" + b"1.0," * 16383 + b"1]"

        def gen():
            for _ in range(60 * 2**20 // len(chunk)):
                yield chunk
        try:
            return str(httpx.post(f"{url}/v1/predict", content=gen(), timeout=60,
                                  headers={"content-type": "application/json"}).status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    def trickle() -> str:
        def gen():
            yield b'{"readings": [{"temperature": 1'
            deadline = time.monotonic() + slow_s
            while time.monotonic() < deadline:
                time.sleep(0.5)
                yield b"0"
        try:
            return str(httpx.post(f"{url}/v1/predict", content=gen(), timeout=slow_s + 30,
                                  headers={"content-type": "application/json"}).status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    def run(fn, n: int) -> tuple[dict, float, float, float]:
        samples.clear()
        base = rss_mb(pid)
        started = time.monotonic()
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(fn())) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return dict(Counter(results)), base, max(samples or [base]), time.monotonic() - started

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        big_status, big_base, big_peak, big_s = run(oversized, big)
        slow_status, slow_base, slow_peak, slow_s_taken = run(trickle, slow)
    finally:
        stop.set()
    return {"oversized": {"bodies": big, "mb_each": 60, "status": big_status, "rss_before_mb": round(big_base, 1),
                          "rss_peak_mb": round(big_peak, 1), "seconds": round(big_s, 1)},
            "slow": {"bodies": slow, "status": slow_status, "rss_before_mb": round(slow_base, 1),
                     "rss_peak_mb": round(slow_peak, 1), "seconds": round(slow_s_taken, 1)}}


def probe_requests(url: str, sensors: list[str], rows: np.ndarray) -> dict:
    """Malformed requests (each its 4xx) and extreme readings (each 200, flagged out_of_range, strict JSON)."""
    import httpx

    def strict(text: str):
        def refuse(token):
            raise ValueError(token)
        return json.loads(text, parse_constant=refuse)

    good = dict(zip(sensors, map(float, rows[0])))
    malformed = [b"", b"not json", b"[1, 2]", b'{"rows": []}', b'{"readings": []}', b'{"readings": [{}]}',
                 b'{"readings": [{"%s": NaN}]}' % sensors[0].encode(), b'{"columns": {"a": [Infinity]}}',
                 json.dumps({"readings": [{**good, sensors[1]: "7"}]}).encode(),
                 json.dumps({"readings": [{**good, "vibration": 1.0}]}).encode(),
                 json.dumps({"readings": [{**good, sensors[0]: 10 ** 400}]}).encode(),
                 json.dumps({"readings": [good], "columns": {}}).encode(),
                 json.dumps({"columns": {s: [1.0] * (i + 1) for i, s in enumerate(sensors)}}).encode(),
                 json.dumps({"readings": [good] * 5000}).encode(), b"\xff\xfe\x00", b'{"readings": [' * 5000]
    extreme = [1e19, -1e19, 3.5e38, 1e300, -1e300, 1.7976931348623157e308, 1e6, -1e6]
    out = {"malformed": {"tried": 0, "passed": 0, "failures": []}, "extreme": {"tried": 0, "passed": 0, "failures": []}}
    with httpx.Client(timeout=30) as http:
        for body in malformed:
            response = http.post(f"{url}/v1/predict", content=body, headers={"content-type": "application/json"})
            out["malformed"]["tried"] += 1
            try:
                passed = 400 <= response.status_code < 500 and strict(response.text)["detail"]
            except ValueError:
                passed = False
            out["malformed"]["passed"] += bool(passed)
            if not passed:
                out["malformed"]["failures"].append((body[:60].decode(errors="replace"), response.status_code))
        for value in extreme:
            for sensor in sensors:
                response = http.post(f"{url}/v1/predict", json={"readings": [{**good, sensor: value}]})
                out["extreme"]["tried"] += 1
                try:
                    (p,) = strict(response.text)["predictions"]
                    passed = (response.status_code == 200 and p["is_anomaly"] and p["reason"] == "out_of_range"
                              and p["sensors"] == [sensor] and np.isfinite(p["score"]))
                except (ValueError, KeyError):
                    passed = False
                out["extreme"]["passed"] += bool(passed)
                if not passed:
                    out["extreme"]["failures"].append((sensor, value, response.status_code, response.text[:120]))
    return out


def probe_files(ensemble: Path, sensors: list[str], rows: np.ndarray, workdir: Path) -> dict:
    """``raysys predict`` (``predict_file``) on corrupt data files: each must fail with a clean error."""
    import pandas as pd

    from raysys.ensemble.predict import predict_file

    frame = pd.DataFrame(rows[:50], columns=sensors)
    cases: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        cases[name] = workdir / name
        cases[name].write_bytes(data)

    frame.to_parquet(workdir / "good.parquet")
    whole = (workdir / "good.parquet").read_bytes()
    write("truncated.parquet", whole[: len(whole) // 2])
    write("garbage.parquet", os.urandom(4096))
    write("garbage.csv", os.urandom(4096))
    write("empty.csv", b"")
    write("header_only.csv", (",".join(sensors) + "\n").encode())
    write("missing_column.csv", frame.drop(columns=sensors[-1]).to_csv(index=False).encode())
    write("text_in_column.csv", frame.assign(**{sensors[0]: "high"}).to_csv(index=False).encode())
    write("nan_column.csv", frame.assign(**{sensors[1]: np.nan}).to_csv(index=False).encode())
    write("inf_value.csv", frame.assign(**{sensors[2]: np.inf}).to_csv(index=False).encode())
    out = {"tried": 0, "passed": 0, "failures": [], "errors": {}}
    for name, path in cases.items():
        out["tried"] += 1
        try:
            predict_file(ensemble, path, workdir / f"{name}.out.csv")
            out["failures"].append((name, "scored without an error"))
        except (ValueError, OSError) as exc:
            out["passed"] += 1
            out["errors"][name] = f"{type(exc).__name__}: {str(exc)[:160]}"
        except Exception as exc:  # an unexpected kind of failure counts as a failed probe
            out["failures"].append((name, f"{type(exc).__name__}: {str(exc)[:160]}"))
    return out


def markdown(result: dict) -> str:
    lines = ["| replicas | requests | ok | failed | failures by kind | killed after |", "|---|---|---|---|---|---|"]
    for k in result["kill"]:
        lines.append(f"| {k['replicas']} | {k['requests']} | {k['ok']} | {k['failed']} | {k['failures'] or '-'} | "
                     f"{k['killed_after']} |")
    big, slow = result["memory"]["oversized"], result["memory"]["slow"]
    lines += ["", "| bodies | status | replica RSS before | peak | seconds |", "|---|---|---|---|---|",
              f"| {big['bodies']} x 60 MB chunked | {big['status']} | {big['rss_before_mb']} MB | "
              f"{big['rss_peak_mb']} MB | {big['seconds']} |",
              f"| {slow['bodies']} slow (never finished) | {slow['status']} | {slow['rss_before_mb']} MB | "
              f"{slow['rss_peak_mb']} MB | {slow['seconds']} |", "",
              "| probe | tried | passed |", "|---|---|---|"]
    p = result["probes"]
    lines += [f"| malformed requests | {p['malformed']['tried']} | {p['malformed']['passed']} |",
              f"| extreme readings | {p['extreme']['tried']} | {p['extreme']['passed']} |",
              f"| corrupt data files | {p['files']['tried']} | {p['files']['passed']} |"]
    lines += [f"| replica kill, {k['replicas']} replica(s), requests | {k['requests']} | {k['ok']} |"
              for k in result["kill"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="rows of the generated dataset")
    parser.add_argument("--requests", type=int, default=4000, help="requests per replica-kill run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts of the kill runs")
    parser.add_argument("--big-bodies", type=int, default=4, help="concurrent 60 MB chunked bodies")
    parser.add_argument("--slow-bodies", type=int, default=32, help="concurrent slow bodies")
    parser.add_argument("--body-timeout-s", type=float, default=None,
                        help="the replica's body_timeout_s (default: raysys's)")
    parser.add_argument("--retry-on", default=None, help="HAProxy retry-on (default: raysys's)")
    parser.add_argument("--workdir", help="keep the data and ensemble here (default: a temp dir)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--smoke-test", action="store_true", help="small run: 600 requests, 1 big and 4 slow bodies")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.requests, args.big_bodies, args.slow_bodies = 600, 1, 4
    import ray
    from ray import serve

    from raysys.serve import ServeConfig, UserConfig, shutdown
    from raysys.serve.config import serve_env

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="raysys-reliability-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ensemble, sensors, rows = build(workdir, args.rows)
    retry_on = args.retry_on or ServeConfig().retry_on
    body_timeout_s = args.body_timeout_s or UserConfig().body_timeout_s
    haproxy = workdir / "haproxy"
    haproxy.mkdir(exist_ok=True)
    # HAProxy's other ports and files of its own: other Serve instances may run on this machine
    env = {"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
           "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
           "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
           "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
           "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
           "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options={
        "runtime_env": {"env_vars": {**env, **serve_env("haproxy", True, retry_on)}}})
    payloads = bodies(sensors, rows)
    result: dict = {"retry_on": retry_on, "body_timeout_s": body_timeout_s, "kill": []}
    try:
        url = deploy_fixed(ensemble, port, 1, {"body_timeout_s": body_timeout_s})
        result["probes"] = probe_requests(url, sensors, rows)
        result["probes"]["files"] = probe_files(ensemble, sensors, rows, workdir)
        result["memory"] = memory_under_bad_bodies(url, args.big_bodies, args.slow_bodies, body_timeout_s + 5)
        for replicas in args.replicas:
            url = deploy_fixed(ensemble, port, replicas, {"body_timeout_s": body_timeout_s})
            time.sleep(3)  # HAProxy has every replica in rotation
            result["kill"].append(kill_under_load(url, payloads, replicas, args.clients, args.requests))
            print(result["kill"][-1], flush=True)
    finally:
        shutdown(stop_serve=True)
        ray.shutdown()
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
