"""The served ensemble on a real Ray Serve instance (HTTP on 127.0.0.1), with a real registered model.

One module-scoped Serve application serves ``models:/raysys-detector@champion`` (a small AE + LSTM
ensemble built in-process and registered in a temporary MLflow store); tests run in file order and
the last one moves the champion and redeploys. A copy of that ensemble with score smoothing is tested
offline here too (the runtime's streaming contract), then served beside it.
"""

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, start_serve

httpx = pytest.importorskip("httpx")

from raysys.serve import (  # noqa: E402
    AutoscalingSettings,
    DeploymentSettings,
    ServeConfig,
    UserConfig,
    deploy,
    shutdown,
)

MODEL = "models:/raysys-detector@champion"
#: Faster autoscaling metrics than Serve's 10 s default, for the proxy and replicas of this test's Serve,
#: and 5 s instead of 30 s for a stopping replica to leave HAProxy's rotation before it stops accepting.
SERVE_ENV = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
             "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
             "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}
MAX_ROWS = 512


@dataclass
class Ensembles:
    tracking_uri: str
    builds: list = field(default_factory=list)
    sensors: list = field(default_factory=list)
    rows: np.ndarray | None = None


@pytest.fixture(scope="module")
def ensembles(small_dataset, tmp_path_factory) -> Ensembles:
    """Two real ensembles (AE + LSTM, ONNX) from detectors fitted here; the first is registered as champion."""
    from raysys.data import load_dataset
    from raysys.ensemble.build import build_ensemble
    from raysys.ensemble.gates import check_gates
    from raysys.ensemble.registry import register_ensemble
    from raysys.models import build_detector

    tmp = tmp_path_factory.mktemp("serve")
    dataset = load_dataset(small_dataset)
    X, y = dataset.features("train"), dataset.labels("train")
    out = Ensembles(f"sqlite:///{tmp / 'mlflow.db'}", sensors=dataset.sensors, rows=dataset.features("test"))
    for seed in (0, 1):
        detectors = {"ae": build_detector("ae", epochs=2, seed=seed).fit(X, y),
                     "lstm": build_detector("lstm", window=8, hidden_size=16, latent_dim=8, epochs=1,
                                            seed=seed).fit(X, y)}
        out.builds.append(build_ensemble(detectors, dataset, tmp / f"v{seed}" / "ensemble", iforest=False,
                                                  pca=False))
    registration = register_ensemble(out.builds[0], check_gates({}, {}), tracking_uri=out.tracking_uri)
    assert registration.version == "1"
    return out


@pytest.fixture(scope="module")
def served(ray_cluster, ensembles):
    """Serve on 127.0.0.1:<free port> with the champion deployed; Serve is shut down after the module."""
    from ray import serve

    port = start_serve(SERVE_ENV)
    config = ServeConfig(
        host="127.0.0.1", port=port, ingress="haproxy", throughput_optimized=True,
        tracking_uri=ensembles.tracking_uri,
        deployment=DeploymentSettings(num_cpus=0.1, max_ongoing_requests=32, graceful_shutdown_timeout_s=10,
                                      health_check_period_s=2),
        autoscaling_config=AutoscalingSettings(min_replicas=1, max_replicas=3, target_ongoing_requests=2,
                                               upscale_delay_s=1, downscale_delay_s=3, look_back_period_s=2),
        user_config=UserConfig(max_batch_size=16, batch_wait_timeout_s=0.002, max_request_rows=MAX_ROWS))
    try:
        url = deploy(MODEL, config, timeout_s=120)
        yield url, config
    finally:
        shutdown(stop_serve=True)
        serve.shutdown()


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def offline(ensembles):
    from raysys.ensemble.runtime import load_runtime

    return load_runtime("models:/raysys-detector/1", ensembles.tracking_uri)


def records(sensors, rows):
    return {"readings": [dict(zip(sensors, map(float, row))) for row in rows]}


def columns(sensors, rows):
    return {"columns": {s: rows[:, j].astype(float).tolist() for j, s in enumerate(sensors)}}


def replicas() -> list[str]:
    """Names of the AnomalyDetector replica actors alive now."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::raysys#AnomalyDetector#"))


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get("raysys")
    return app.deployments["AnomalyDetector"].replica_states.get("RUNNING", 0) if app else 0


def wait_for(condition, timeout_s: float, what: str, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class LoadResult:
    ok: int = 0
    failed: list = field(default_factory=list)
    retried: int = 0
    retry_reasons: Counter = field(default_factory=Counter)
    versions: list = field(default_factory=list)
    seconds: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)


def run_load(url: str, bodies: list[dict], clients: int, total: int, retries: int = 0, timeout_s: float = 180,
             during=None) -> LoadResult:
    """Up to ``total`` POSTs of ``bodies`` (round robin) from ``clients`` threads, until ``result.stop`` is
    set; a 5xx or a dropped connection is retried up to ``retries`` times. ``during(result)`` runs in
    this thread while the load runs."""
    result, lock, counter = LoadResult(), threading.Lock(), itertools.count()
    deadline = time.monotonic() + timeout_s

    def worker():
        with httpx.Client(timeout=20) as c:
            while time.monotonic() < deadline and not result.stop.is_set():
                i = next(counter)
                if i >= total:
                    return
                for attempt in range(retries + 1):
                    try:
                        response = c.post(f"{url}/v1/predict", json=bodies[i % len(bodies)])
                        status, error = response.status_code, None if response.status_code < 500 else response.text
                    except httpx.HTTPError as exc:
                        status, error = None, repr(exc)
                    if error is None or attempt == retries:
                        break
                    with lock:
                        result.retried += 1
                        result.retry_reasons[status or error.split("(")[0]] += 1
                    time.sleep(0.05)
                with lock:
                    if status == 200:
                        result.ok += 1
                        result.versions.append(response.json()["model"]["version"])
                    else:
                        result.failed.append((status, error or response.text[:200]))

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    if during is not None:
        during(result)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    result.seconds = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), f"load did not finish within {timeout_s}s"
    return result


# -- tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ensemble_dir(tmp_path_factory):
    """A one-member ONNX ensemble (sum of squares of a row) that loads in well under a second."""
    from onnx import TensorProto, helper, save

    directory = tmp_path_factory.mktemp("tiny") / "ensemble"
    directory.mkdir()
    graph = helper.make_graph([helper.make_node("ReduceSumSquare", ["x"], ["score"], axes=[1], keepdims=0)], "dense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
         str(directory / "dense.onnx"))
    member = {"name": "dense", "file": "dense.onnx", "output": "score", "window": 1, "center": 0.0, "scale": 1.0,
              "weight": 1.0}
    (directory / "ensemble.json").write_text(json.dumps({
        "format_version": 1, "name": "tiny", "sensors": ["a", "b"], "members": [member], "threshold": 10.0,
        "combination": "weighted_mean"}))
    return directory


def serve_subprocess(model_dir, port: int, tmp_path) -> subprocess.Popen:
    """``raysys serve`` on its own local Ray cluster, with HAProxy's other ports and files its own too (in a
    short directory: HAProxy's admin socket path must fit in 108 bytes)."""
    haproxy = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))
    env = {**os.environ, "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()), "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
           "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
           "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
           "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
           "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1", "RAY_ADDRESS": ""}
    return subprocess.Popen([sys.executable, "-m", "raysys.cli", "serve", "--model", str(model_dir), "--host",
                             "127.0.0.1", "--port", str(port), "--num-replicas", "1", "--num-cpus", "0.1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _post_or_none(url: str, body: dict):
    try:
        return httpx.post(url, json=body, timeout=10).json()
    except httpx.HTTPError:
        return None


def test_sigterm_stops_raysys_serve_like_ctrl_c(tiny_ensemble_dir, tmp_path):
    """SIGTERM (Kubernetes, on every rollout) drains, deletes the app, stops the local Ray and exits 0, with no
    traceback or Ray "SIGTERM received" dump."""
    port = free_port()
    process = serve_subprocess(tiny_ensemble_dir, port, tmp_path)
    try:
        for line in process.stdout:
            if "serving until Ctrl-C / SIGTERM" in line:
                break
        assert process.poll() is None, process.stderr.read()
        url = f"http://127.0.0.1:{port}/v1/predict"
        answer = wait_for(lambda: _post_or_none(url, {"readings": [{"a": 1, "b": 2}]}), 30, "the subprocess's Serve")
        assert answer["predictions"][0]["score"] == 5.0
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-3000:]
    assert "stopping the 'raysys' application" in out
    assert "Traceback" not in err and "SIGTERM received" not in err, err[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=5)


def test_a_held_port_fails_the_start_naming_port_and_holder(tiny_ensemble_dir, tmp_path):
    """When another process holds Serve's port, ``raysys serve`` fails with the port and that process (pid and
    name), not HAProxy's "Address already in use" inside a Ray traceback."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        process = serve_subprocess(tiny_ensemble_dir, port, tmp_path)
        try:
            out, err = process.communicate(timeout=150)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 1, (out, err[-3000:])
    assert f"Serve's HTTP port 127.0.0.1:{port} is already in use by pid {os.getpid()} (python" in err, err[-3000:]
    assert "Traceback" not in err


def test_model_card_health_and_readiness(served, client, ensembles):
    url, _ = served
    assert client.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = client.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["version"] == "1"
    card = client.get(f"{url}/v1/model").json()
    spec = ensembles.builds[0].spec
    assert card["name"] == "raysys-detector" and card["version"] == "1"
    assert card["source"]["alias"] == "champion" and card["source"]["uri"] == "models:/raysys-detector/1"
    assert card["sensors"] == ensembles.sensors
    assert card["threshold"] == pytest.approx(spec["threshold"])
    assert [m["name"] for m in card["members"]] == ["ae", "lstm"] and card["history"] == 7 and card["smoothing"] == 1
    assert card["gates"]["passed"] is True and "roc_auc" in card["test_metrics"]
    assert card["serving"]["max_request_rows"] == MAX_ROWS and card["serving"]["replica"]
    assert card["serving"]["ingress"] == "haproxy" and card["serving"]["throughput_optimized"] is True
    assert card["serving"]["retry_on"] == ServeConfig().retry_on
    assert card["serving"]["max_body_bytes"] == UserConfig().max_body_bytes


def strict_json(response):
    """The response body parsed by a strict JSON parser: a NaN or Infinity token fails."""
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token} in {response.text[:200]}")

    return json.loads(response.text, parse_constant=refuse)


def test_extreme_readings_are_answered_and_flagged_not_rejected(served, client, ensembles, offline):
    """Fail closed over HTTP: a reading far beyond the training range (and beyond float32) answers 200,
    flagged out_of_range with its sensor, every number finite; NaN and Infinity stay 422."""
    url, _ = served
    assert ensembles.sensors == ["temperature", "pressure", "flow_rate", "level", "quality"]
    body = {"readings": [{"temperature": 1e19, "pressure": 1, "flow_rate": 1, "level": 1, "quality": 1}]}
    response = client.post(f"{url}/v1/predict", json=body)
    assert response.status_code == 200, response.text
    (prediction,) = strict_json(response)["predictions"]
    assert prediction["is_anomaly"] is True and prediction["reason"] == "out_of_range"
    assert prediction["sensors"] == ["temperature"]
    usual = int(np.flatnonzero(offline.score(ensembles.rows[:50])["reason"] == "")[0])
    normal = dict(zip(ensembles.sensors, map(float, ensembles.rows[usual])))
    for value in (1e300, -1e300, 3.5e38, 1.7976931348623157e308):
        readings = [normal, {**normal, "pressure": value}, {**normal, "level": value, "quality": -value}]
        for form in (records, columns):
            got = strict_json(client.post(f"{url}/v1/predict", json=form(ensembles.sensors, np.array(
                [[r[s] for s in ensembles.sensors] for r in readings]))))
            reasons = [p["reason"] for p in got["predictions"]] if "predictions" in got else got["reason"]
            sensors = [p["sensors"] for p in got["predictions"]] if "predictions" in got else got["sensors"]
            assert reasons[1:] == ["out_of_range", "out_of_range"], (value, got)
            assert sensors[1:] == [["pressure"], ["level", "quality"]]
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        bad = client.post(f"{url}/v1/predict", content=b'{"readings": [{"temperature": %s, "pressure": 1, '
                          b'"flow_rate": 1, "level": 1, "quality": 1}]}' % token)
        assert bad.status_code == 422 and "NaN and infinite" in strict_json(bad)["detail"]


def test_served_answers_equal_raysys_predict_offline(served, client, ensembles, tmp_path):
    """The same rows, some far out of range, through ``raysys predict`` (``predict_file``, offline) and through
    HTTP: the same scores, flags, reasons and reason sensors."""
    import pandas as pd

    from raysys.ensemble.predict import predict_file

    url, _ = served
    sensors, rows = ensembles.sensors, ensembles.rows[:60].astype(np.float64).copy()
    rows[5, 0], rows[17, 2], rows[30, 3:] = 1e19, -1e30, 1e6  # within float32, which the file path reads
    pd.DataFrame(rows, columns=sensors).to_csv(tmp_path / "rows.csv", index=False)
    offline, _ = predict_file("models:/raysys-detector/1", tmp_path / "rows.csv", tmp_path / "scored.csv",
                              tracking_uri=ensembles.tracking_uri)
    got = strict_json(client.post(f"{url}/v1/predict", json=records(sensors, rows)))["predictions"]
    np.testing.assert_allclose([p["score"] for p in got], offline["score"], rtol=1e-5, atol=1e-6)
    assert [p["is_anomaly"] for p in got] == offline["is_anomaly"].tolist()
    assert [p["reason"] or "" for p in got] == offline["reason"].tolist()
    assert [",".join(p["sensors"]) for p in got] == offline["reason_sensors"].fillna("").tolist()
    assert {i for i, p in enumerate(got) if p["reason"] == "out_of_range"} >= {5, 17, 30}


def test_flagged_readings_are_counted_by_reason(served, client):
    """``ray_raysys_readings_flagged_total{reason="out_of_range"}`` counts flagged readings (no per-asset labels)."""
    url, _ = served
    before = serve_metric(client, "ray_raysys_readings_flagged_total", "raysys", reason="out_of_range")
    body = {"readings": [{"temperature": 1e19, "pressure": 1, "flow_rate": 1, "level": 1, "quality": 1}] * 3}
    assert client.post(f"{url}/v1/predict", json=body).status_code == 200
    wait_for(lambda: serve_metric(client, "ray_raysys_readings_flagged_total", "raysys",
                                  reason="out_of_range") >= before + 3, 60, "the flagged counter", every_s=1)
    lines = [line for line in metrics_text(client).splitlines()
             if line.startswith("ray_raysys_readings_flagged_total{")]
    assert lines and all('reason="' in line and "asset" not in line for line in lines)


def test_a_chunked_body_over_the_limit_is_refused_while_read(served, client):
    """A 60 MB ``Transfer-Encoding: chunked`` body (no Content-Length) gets 413 once it passes max_body_bytes,
    before any parsing, and the replica keeps answering."""
    url, _ = served
    sent = []

    def body():
        chunk = b"[" + b"1.0," * 16383 + b"1]"
        for _ in range(60 * 1024 * 1024 // len(chunk)):
            sent.append(len(chunk))
            yield chunk

    started = time.monotonic()
    try:
        with client.stream("POST", f"{url}/v1/predict", content=body(),
                           headers={"content-type": "application/json"}) as response:
            assert response.status_code == 413
            try:
                detail = json.loads(response.read())["detail"]
            except httpx.RemoteProtocolError:  # the 413 came, then the connection closed before its body
                detail = None
            assert detail is None or "max_body_bytes" in detail, detail
    except httpx.WriteError:  # the server closed the connection on a body it would not read
        pass
    print(f"\nchunked body refused after {sum(sent) / 2**20:.1f} MiB sent in {time.monotonic() - started:.1f}s")
    assert sum(sent) < 40 * 2**20
    assert client.post(f"{url}/v1/predict", json={"readings": [dict.fromkeys(
        ["temperature", "pressure", "flow_rate", "level", "quality"], 1.0)]}).status_code == 200


def test_served_scores_equal_offline_onnxruntime(served, client, ensembles, offline):
    """The same rows scored offline by onnxruntime (``EnsembleRuntime``) and through HTTP agree to float32
    rounding (onnxruntime's kernels may round differently for a different number of rows)."""
    url, _ = served
    sensors, rows = ensembles.sensors, ensembles.rows[:300]
    expected = offline.score(rows)
    body = client.post(f"{url}/v1/predict", json=records(sensors, rows)).json()
    assert body["model"] == {"name": "raysys-detector", "version": "1"}
    assert body["threshold"] == pytest.approx(offline.threshold)
    got = body["predictions"]
    np.testing.assert_allclose([p["score"] for p in got], expected["score"], rtol=1e-5, atol=1e-6)
    for name in ("ae", "lstm"):
        np.testing.assert_allclose([p["members"][name] for p in got], expected["members"][name], rtol=1e-5, atol=1e-6)
    assert [p["is_anomaly"] for p in got] == expected["is_anomaly"].tolist()
    assert [p["reason"] or "" for p in got] == expected["reason"].tolist()
    assert [p["sensors"] for p in got] == expected["reason_sensors"]

    col = client.post(f"{url}/v1/predict", json=columns(sensors, rows)).json()
    np.testing.assert_allclose(col["score"], expected["score"], rtol=1e-5, atol=1e-6)
    assert col["is_anomaly"] == expected["is_anomaly"].tolist()

    # history rows: context for the LSTM, not scored; equals the tail of scoring the whole series
    tail = client.post(f"{url}/v1/predict", json={**records(sensors, rows[290:]),
                                                  "history": records(sensors, rows[283:290])["readings"]}).json()
    np.testing.assert_allclose([p["score"] for p in tail["predictions"]], expected["score"][290:], rtol=1e-5, atol=1e-6)


def spec_copy(source: Path, target: Path, **changes) -> Path:
    """A copy of the ensemble directory ``source`` at ``target``, its ``ensemble.json`` keys updated by ``changes``."""
    import shutil

    from raysys.layout import ENSEMBLE_SPEC

    shutil.copytree(source, target)
    spec = json.loads((target / ENSEMBLE_SPEC).read_text())
    (target / ENSEMBLE_SPEC).write_text(json.dumps({**spec, **changes}))
    return target


SMOOTHING = 5
ALARM = {"k": 2, "n": 3, "clear_level": None, "off_delay": 4}


@pytest.fixture(scope="module")
def smoothed(ensembles, tmp_path_factory):
    """A copy of the champion's ensemble directory whose LSTM (sequence) member weighs as much as the AE,
    whatever weight selection gave it, with ``smoothing`` 5 and alarm events of 2 flagged rows in 3, held
    4 rows (:data:`ALARM`); and its runtime."""
    from raysys.ensemble.runtime import EnsembleRuntime

    build = ensembles.builds[0]
    directory = spec_copy(build.directory, tmp_path_factory.mktemp("smoothed") / "ensemble", smoothing=SMOOTHING,
                          members=[{**m, "weight": 0.5} for m in build.spec["members"]], alarm=ALARM)
    return directory, EnsembleRuntime.load(directory)


def test_trailing_mean_stays_in_its_series_and_skips_non_finite_values():
    from raysys.ensemble.runtime import trailing_mean

    values = np.array([1.0, 3.0, 5.0, 7.0, 9.0, 11.0])
    np.testing.assert_allclose(trailing_mean(values, 3), [1, 2, 3, 5, 7, 9])
    np.testing.assert_allclose(trailing_mean(values, 3, lengths=[2, 4]), [1, 2, 5, 6, 7, 9])  # never across
    # a non-finite value keeps its own place and is left out of the means after it
    np.testing.assert_allclose(trailing_mean(np.array([1.0, np.nan, 5.0, np.inf, 9.0]), 3),
                               [1, np.nan, 3, np.inf, 7])
    np.testing.assert_array_equal(trailing_mean(values, 1), values)
    with pytest.raises(ValueError, match="window must be an int >= 1, got 0"):
        trailing_mean(values, 0)


def test_smoothed_scores_stream_and_coalesce_like_one_batch(smoothed, ensembles, tmp_path):
    """Smoothing 5: one call over a series == one row at a time after ``history`` rows == ``score_many`` of
    coalesced series, each smoothed within itself; smoothing 1 is the unsmoothed ensemble, bit for bit."""
    from raysys.ensemble.runtime import EnsembleRuntime, trailing_mean

    directory, runtime = smoothed
    plain = EnsembleRuntime.load(spec_copy(directory, tmp_path / "plain", smoothing=1))
    window = max(m["window"] for m in runtime.spec["members"])
    assert (runtime.smoothing, runtime.history, plain.history) == (SMOOTHING, window - 1 + SMOOTHING - 1, window - 1)
    rows = ensembles.rows[:120]
    full, unsmoothed = runtime.score(rows), plain.score(rows)
    np.testing.assert_allclose(full["score"], trailing_mean(unsmoothed["score"], SMOOTHING), rtol=1e-12)
    for name in runtime.members:  # member scores are each row's own
        np.testing.assert_array_equal(full["members"][name], unsmoothed["members"][name])
    assert (full["is_anomaly"] == (full["score"] > runtime.threshold)).all()

    streamed, short = [], []
    for i in range(len(rows)):  # a streaming caller passes the last `history` rows before the new one
        streamed.append(runtime.score(rows[max(0, i - runtime.history):i + 1])["score"][-1])
        short.append(runtime.score(rows[max(0, i - runtime.history + 1):i + 1])["score"][-1])
    np.testing.assert_allclose(streamed, full["score"], rtol=1e-6, atol=1e-6)
    assert not np.allclose(short[runtime.history:], full["score"][runtime.history:], rtol=1e-6, atol=1e-6)

    parts = [rows[:1], rows[10:13], rows[20:60], rows[60:120]]
    for together, part in zip(runtime.score_many(parts), parts):
        alone = runtime.score(part)
        np.testing.assert_allclose(together["score"], alone["score"], rtol=1e-6, atol=1e-6)
        assert together["score"][0] == pytest.approx(plain.score(part[:1])["score"][0], rel=1e-6)  # nothing before

    base = EnsembleRuntime.load(ensembles.builds[0].directory)
    one = EnsembleRuntime.load(spec_copy(ensembles.builds[0].directory, tmp_path / "one", smoothing=1))
    for key in ("score", "is_anomaly", "reason"):
        np.testing.assert_array_equal(one.score(rows)[key], base.score(rows)[key])


def test_smoothing_keeps_fail_closed_rows_and_finite_scores(smoothed, ensembles, tmp_path):
    """A flagged row stays flagged (its reason is its own), a non-finite combined score is left out of the
    smoothed score of the rows after it, and every number stays finite."""
    from raysys.ensemble.runtime import EnsembleRuntime, trailing_mean

    directory, runtime = smoothed
    plain = EnsembleRuntime.load(spec_copy(directory, tmp_path / "plain", smoothing=1))
    rows = ensembles.rows[:60].astype(np.float64).copy()
    rows[30, 1] = 3e38  # the AE's squared error overflows: a non-finite combined score
    got, unsmoothed = runtime.score(rows), plain.score(rows)
    assert np.isfinite(got["score"]).all()
    assert (got["reason"] == unsmoothed["reason"]).all() and got["reason"][30] != ""
    assert got["is_anomaly"][got["reason"] != ""].all()
    combined = np.where(unsmoothed["score"] == np.finfo(np.float64).max, np.nan, unsmoothed["score"])
    assert np.isnan(combined[30])
    expected = np.where(np.isnan(combined), np.finfo(np.float64).max, trailing_mean(combined, SMOOTHING))
    np.testing.assert_allclose(got["score"], expected, rtol=1e-12)


@pytest.mark.parametrize("value", [0, -1, 2.5, "5", True, None])
def test_a_bad_smoothing_is_refused_naming_file_key_and_value(ensembles, tmp_path, value):
    from raysys.ensemble.runtime import EnsembleRuntime

    bad = spec_copy(ensembles.builds[0].directory, tmp_path / "bad", smoothing=value)
    with pytest.raises(ValueError, match=rf"{bad}/ensemble.json: smoothing must be an int >= 1 .*got {value!r}"):
        EnsembleRuntime.load(bad)


def test_format_version_1_loads_unsmoothed_and_refuses_smoothing(ensembles, tmp_path):
    from raysys.ensemble.runtime import FORMAT_VERSION, SUPPORTED_FORMAT_VERSIONS, EnsembleRuntime

    assert ensembles.builds[0].spec["format_version"] == FORMAT_VERSION == 2 and 1 in SUPPORTED_FORMAT_VERSIONS
    old = EnsembleRuntime.load(spec_copy(ensembles.builds[0].directory, tmp_path / "v1", format_version=1))
    assert old.smoothing == 1 and old.history == 7
    rows = ensembles.rows[:20]
    np.testing.assert_array_equal(old.score(rows)["score"],
                                  EnsembleRuntime.load(ensembles.builds[0].directory).score(rows)["score"])
    mixed = spec_copy(ensembles.builds[0].directory, tmp_path / "mixed", format_version=1, smoothing=3)
    with pytest.raises(ValueError, match="smoothing 3 needs format_version 2"):
        EnsembleRuntime.load(mixed)


def metrics_text(client) -> str:
    """The Prometheus text of the (only) Ray node's metrics export port."""
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    return client.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics").text


def serve_metric(client, name: str, application: str, **tags: str) -> float:
    """The sum over replicas of the Prometheus sample ``name`` of ``application`` with ``tags`` (0 if not
    exported yet)."""
    wanted = [f'application="{application}"', *(f'{k}="{v}"' for k, v in tags.items())]
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text(client).splitlines()
               if line.startswith(name + "{") and all(w in line for w in wanted))


def test_concurrent_requests_are_batched_but_scored_alone(served, client, ensembles, smoothed,
                                                           assert_same_top_sensors):
    """48 concurrent requests of 1 to 40 readings (some with history, records and columnar), coalesced by
    @serve.batch into batches of several requests, each get exactly the offline scores of their own rows:
    a sequence member whose weight is > 0 stays out of the score of every request's first window - 1 rows,
    and smoothing never reaches into another request; those sending ``history`` rows score as the whole series."""
    url, config = served
    directory, runtime = smoothed
    lstm = next(m for m in runtime.spec["members"] if m["name"] == "lstm")
    assert lstm["weight"] > 0 and lstm["window"] > 1
    name = "raysys-batched"  # a second application on the same Serve: one replica, batches that surely fill
    batched = config.model_copy(update={
        "app_name": name, "route_prefix": "/batched", "autoscaling_config": None, "num_replicas": 1,
        "user_config": UserConfig(max_batch_size=64, batch_wait_timeout_s=0.25, max_request_rows=MAX_ROWS),
        "deployment": config.deployment.model_copy(update={"max_ongoing_requests": 64})})
    sensors, rows = ensembles.sensors, ensembles.rows
    series = runtime.score(rows)
    rng = np.random.default_rng(11)
    requests = []  # (body, history rows, reading rows, first row)
    for i in range(48):
        n = int(rng.integers(1, 41))
        n_history = runtime.history if i % 8 == 7 else int(rng.integers(1, 11)) if i % 4 == 3 else 0
        start = int(rng.integers(0, len(rows) - n - n_history))
        past, now = rows[start:start + n_history], rows[start + n_history:start + n_history + n]
        body = (columns if i % 3 == 1 else records)(sensors, now)
        if n_history:
            body["history"] = (columns if i % 3 == 1 else records)(sensors, past)[
                "columns" if i % 3 == 1 else "readings"]
        if i % 5 == 2:  # some ask for per-sensor contributions: a batch explains, the others answer without
            body["explain"] = True
        requests.append((body, past, now, start))
    try:
        batched_url = deploy(str(directory), batched, timeout_s=120)
        # a new connection: one kept alive from before this app existed may still reach the old route table
        card = httpx.get(f"{batched_url}/v1/model", timeout=30).json()
        assert {m["name"]: m["weight"] for m in card["members"]}["lstm"] > 0 and card["smoothing"] == SMOOTHING
        assert card["history"] == runtime.history == lstm["window"] - 1 + SMOOTHING - 1
        barrier = threading.Barrier(len(requests))

        def ask(http, request):
            barrier.wait(30)  # all at once
            return http.post(f"{batched_url}/v1/predict", json=request[0])

        limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
        with httpx.Client(timeout=60, limits=limits) as many, ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(lambda request: ask(many, request), requests))
        for (body, past, now, start), answer in zip(requests, answers):
            assert answer.status_code == 200, answer.text
            explain = body.get("explain", False)
            expected = runtime.score(np.concatenate([past, now]), explain=explain)
            keep = slice(len(past), None)
            got = answer.json()
            if "columns" in body:
                score, flags, members = got["score"], got["is_anomaly"], got["members"]
                contributions, top = got.get("contributions"), got.get("top_sensors")
            else:
                score = [p["score"] for p in got["predictions"]]
                flags = [p["is_anomaly"] for p in got["predictions"]]
                members = {m: [p["members"][m] for p in got["predictions"]] for m in runtime.members}
                contributions = {s: [p["contributions"][s] for p in got["predictions"]] for s in sensors} \
                    if explain else got["predictions"][0].get("contributions")
                top = [p["top_sensors"] for p in got["predictions"]] if explain else None
            if explain:  # equal to offline, and summing to the served score
                offline = expected["contributions"][keep]
                for j, sensor in enumerate(sensors):
                    np.testing.assert_allclose(contributions[sensor], offline[:, j], rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(np.sum([contributions[s] for s in sensors], axis=0), score, rtol=1e-6,
                                           atol=1e-6)
                assert_same_top_sensors(top, expected["top_sensors"][keep], offline, sensors)
            else:
                assert contributions is None and top is None
            np.testing.assert_allclose(score, expected["score"][keep], rtol=1e-6, atol=1e-6)
            if len(past) == runtime.history:  # a streaming client: its readings score as in the whole series
                whole = slice(start + len(past), start + len(past) + len(now))
                np.testing.assert_allclose(score, series["score"][whole], rtol=1e-6, atol=1e-6)
            assert flags == expected["is_anomaly"][keep].tolist()
            for member in runtime.members:
                np.testing.assert_allclose(members[member], expected["members"][member][keep], rtol=1e-6, atol=1e-6)
        # Serve's own batch-size histogram: every request went through _score_batch, in fewer batches
        wait_for(lambda: serve_metric(client, "ray_serve_actual_batch_size_sum", name) >= len(requests), 60,
                 "the batch-size metric of all requests", every_s=1)
        batches = serve_metric(client, "ray_serve_actual_batch_size_count", name)
        print(f"\n{len(requests)} concurrent requests in {batches:.0f} batches")
        assert 1 <= batches < len(requests)
    finally:
        shutdown(name, stop_serve=False)


def test_alarm_events_are_the_same_offline_in_one_request_and_streamed(served, ensembles, smoothed):
    """The smoothed ensemble's alarm logic (2 of 3, held 4 rows) over a stretch holding anomalies: the
    ``alarm`` of each reading equals offline whether the stretch is sent in one request or one reading at a
    time with ``history`` and the previous ``alarm_state``; a lost state restarts and says so."""
    from raysys.ensemble.alarms import alarm_events

    url, config = served
    directory, runtime = smoothed
    sensors = ensembles.sensors
    first = int(np.argmax(runtime.score(ensembles.rows)["is_anomaly"]))
    rows = ensembles.rows[max(0, first - 20):first + 60]
    offline = runtime.score(rows)
    alarm = runtime.alarms(offline)[0]
    assert alarm.any() and (alarm != offline["is_anomaly"]).any()  # the logic differs from the row decision here
    name = "raysys-stream"
    streaming = config.model_copy(update={"app_name": name, "route_prefix": "/stream", "autoscaling_config": None,
                                          "num_replicas": 1})
    try:
        stream_url = deploy(str(directory), streaming, timeout_s=120)
        with httpx.Client(timeout=30) as http:  # a new connection, opened after the app exists
            card = http.get(f"{stream_url}/v1/model").json()
            assert card["alarm"] == ALARM and card["smoothing"] == SMOOTHING and "far_asked" in card
            whole = strict_json(http.post(f"{stream_url}/v1/predict", json=records(sensors, rows)))
            assert whole["alarm_restarted"] is True
            assert [p["alarm"] for p in whole["predictions"]] == alarm.tolist()
            streamed, state = [], None
            for i in range(len(rows)):
                body = records(sensors, rows[i:i + 1])
                body["history"] = records(sensors, rows[max(0, i - runtime.history):i])["readings"]
                if state is not None:
                    body["alarm_state"] = state
                answer = strict_json(http.post(f"{stream_url}/v1/predict", json=body))
                assert answer["alarm_restarted"] is (i == 0)
                streamed.append(answer["predictions"][0]["alarm"])
                state = answer["alarm_state"]
            assert streamed == alarm.tolist()
            assert alarm_events(np.array(streamed), offline["score"]) == alarm_events(alarm, offline["score"])
            # the state lost mid-event: the event restarts from this reading, and the answer says so
            on = int(np.argmax(alarm)) + 1
            lost = strict_json(http.post(f"{stream_url}/v1/predict", json=records(sensors, rows[on:on + 1])))
            assert lost["alarm_restarted"] is True
            bad = http.post(f"{stream_url}/v1/predict", json={**records(sensors, rows[:1]), "alarm_state": "forged"})
            assert bad.status_code == 422 and "alarm_state is not a token" in bad.json()["detail"]
    finally:
        shutdown(name, stop_serve=False)


def test_bad_requests_get_4xx_naming_the_problem(served, client, ensembles):
    url, _ = served
    sensors = ensembles.sensors
    good = dict.fromkeys(sensors, 1.0)
    first, missing = sensors[0], sensors[-1]
    cases = [
        (b"this is not json", 400, "not valid JSON"),
        (b"", 400, "request body is empty"),
        ({"readings": [{**good, "vibration": 1.0}]}, 422, "unknown sensor(s) 'vibration'"),
        ({"readings": [{k: v for k, v in good.items() if k != missing}]}, 422, f"missing sensor(s) '{missing}'"),
        ({"readings": [{**good, first: "high"}]}, 422, f'readings[0]["{first}"]: expected a number, got str'),
        (b'{"readings": [{"%s": NaN}]}' % first.encode(), 422, "NaN and infinite values are not allowed"),
        (b'{"columns": {"%s": [Infinity]}}' % first.encode(), 422, "NaN and infinite values are not allowed"),
        ({"readings": []}, 422, "empty batch"),
        ({"readings": [good] * (MAX_ROWS + 1)}, 413, f"exceed the maximum of {MAX_ROWS}"),
        ({"rows": [good]}, 422, "unknown field(s) 'rows'"),
    ]
    before = replicas()
    for body, status, message in cases:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = client.post(f"{url}/v1/predict", headers={"content-type": "application/json"}, **kwargs)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["detail"], response.json()
        ok = client.post(f"{url}/v1/predict", json={"readings": [good]})  # and it keeps answering
        assert ok.status_code == 200
    assert replicas() == before  # no replica was lost or replaced


def test_prometheus_metrics_cover_requests_latency_and_batches(served, client):
    """Serve's own metrics and raysys's counters, on the node's Prometheus endpoint."""
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    metrics_url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    wanted = {"ray_serve_num_http_requests_total", "ray_serve_http_request_latency_ms_bucket",
              "ray_serve_actual_batch_size_bucket", "ray_serve_batch_wait_time_ms_bucket",
              "ray_raysys_readings_scored_total", "ray_raysys_requests_rejected_total",
              "ray_raysys_readings_flagged_total",
              "ray_raysys_request_rows_bucket"}

    def exported():
        text = client.get(metrics_url).text
        return wanted <= {line.split("{")[0].split(" ")[0] for line in text.splitlines()} and text

    text = wait_for(exported, 60, f"metrics {sorted(wanted)}", every_s=1)
    assert 'application="raysys"' in text and 'deployment="AnomalyDetector"' in text


def test_user_config_from_a_redeploy_is_applied(served, client, ensembles):
    """A new user_config (batching, request limit) reaches the replicas' ``reconfigure``."""
    url, config = served
    good = records(ensembles.sensors, ensembles.rows[:65])
    smaller = config.model_copy(update={"user_config": UserConfig(max_batch_size=8, batch_wait_timeout_s=0.0,
                                                                  max_request_rows=64)})
    try:
        deploy(MODEL, smaller, timeout_s=60)
        wait_for(lambda: client.get(f"{url}/v1/model").json()["serving"]["max_request_rows"] == 64, 30,
                 "the new user_config")
        assert client.post(f"{url}/v1/predict", json=good).status_code == 413
    finally:
        deploy(MODEL, config, timeout_s=60)
        wait_for(lambda: client.get(f"{url}/v1/model").json()["serving"]["max_request_rows"] == MAX_ROWS, 30,
                 "the original user_config")
    assert client.post(f"{url}/v1/predict", json=good).status_code == 200


def load_bodies(ensembles) -> list[dict]:
    sensors, rows = ensembles.sensors, ensembles.rows
    return [records(sensors, rows[i:i + 1]) if i % 2 else columns(sensors, rows[i:i + 16]) for i in range(64)]


def test_concurrent_load_succeeds_and_autoscales_up_and_down(served, ensembles):
    """32 clients until the autoscaler has added a replica (and at least 2,400 requests), within 120 s."""
    url, config = served
    minimum = config.autoscaling_config.min_replicas
    wait_for(lambda: running_replicas() == minimum, 60, f"{minimum} replica before the load")
    seen = []

    def watch(result):
        deadline = time.monotonic() + 110
        while not result.stop.is_set() and time.monotonic() < deadline:
            seen.append(running_replicas())
            if max(seen) > minimum and result.ok + len(result.failed) >= 2400:
                result.stop.set()
            time.sleep(0.25)

    result = run_load(url, load_bodies(ensembles), clients=32, total=20_000, timeout_s=120, during=watch)
    print(f"\n32 clients, {result.ok} requests in {result.seconds:.1f}s ({result.ok / result.seconds:.0f} req/s), "
          f"replicas seen {Counter(seen)}")
    assert result.failed == [] and result.ok >= 2400
    assert max(seen) > minimum, f"replicas never rose above {minimum}: {Counter(seen)}"
    wait_for(lambda: running_replicas() == minimum, 90, f"scale-down to {minimum} replica after the load")


def test_killing_a_replica_during_load_loses_no_request(served, ensembles):
    import ray

    url, _ = served
    killed = []

    def kill_one(result):
        wait_for(lambda: result.ok >= 300, 60, "300 answered requests", every_s=0.05)
        name = replicas()[0]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        killed.append(name)

    result = run_load(url, load_bodies(ensembles), clients=32, total=1500, retries=5, timeout_s=180,
                      during=kill_one)
    print(f"\nkilled {killed[0]}: {result.ok} ok, {result.retried} retried {dict(result.retry_reasons)}, "
          f"{len(result.failed)} failed")
    assert result.failed == [] and result.ok == 1500
    assert result.retried <= 64, f"{result.retried} retried requests"
    restored = wait_for(lambda: running_replicas() >= 1 and killed[0] not in replicas() and replicas(), 90,
                        "Serve to replace the killed replica")
    assert killed[0] not in restored


def test_redeploy_switches_to_the_new_champion_without_failing_requests(served, ensembles, client):
    from raysys.ensemble.gates import check_gates
    from raysys.ensemble.registry import register_ensemble

    url, config = served
    registration = register_ensemble(ensembles.builds[1], check_gates({}, {}), tracking_uri=ensembles.tracking_uri)
    assert registration.version == "2"  # the champion alias moved to version 2
    switched = []

    def redeploy(result):
        wait_for(lambda: result.ok >= 200, 60, "200 answered requests", every_s=0.05)
        deploy(MODEL, config, timeout_s=120)  # the same alias, now resolved to version 2
        switched.append(result.ok)
        # keep the load on until the old replicas have drained and 200 answers in a row came from version 2
        wait_for(lambda: len(result.versions) > switched[0] + 200 and set(result.versions[-200:]) == {"2"}, 120,
                 "200 answers in a row from version 2", every_s=0.1)
        result.stop.set()

    result = run_load(url, load_bodies(ensembles), clients=16, total=100_000, retries=0, timeout_s=240,
                      during=redeploy)
    print(f"\nredeploy after {switched[0]} requests: {Counter(result.versions)}, {len(result.failed)} failed")
    assert result.failed == [] and result.ok > switched[0]
    assert result.versions[0] == "1" and result.versions[-1] == "2"
    assert set(result.versions) == {"1", "2"}
    card = client.get(f"{url}/v1/model").json()
    assert card["version"] == "2" and card["source"]["uri"] == "models:/raysys-detector/2"


def test_proxy_ingress_scores_the_same_and_the_running_settings_are_reported(served, ensembles, offline, client,
                                                                            caplog):
    """``ingress="proxy"``: deploy starts Serve with its Python proxy, which answers with the same scores;
    a later deploy asking for HAProxy keeps the running proxy and says so."""
    from ray import serve

    url, config = served
    shutdown(stop_serve=True)
    serve.shutdown()
    proxy_config = config.model_copy(update={"ingress": "proxy", "throughput_optimized": False, "port": free_port(),
                                             "autoscaling_config": None})
    proxy_url = deploy("models:/raysys-detector/1", proxy_config, timeout_s=120)
    serving = client.get(f"{proxy_url}/v1/model").json()["serving"]
    assert serving["ingress"] == "proxy" and serving["throughput_optimized"] is False
    rows = ensembles.rows[:50]
    body = client.post(f"{proxy_url}/v1/predict", json=columns(ensembles.sensors, rows)).json()
    np.testing.assert_allclose(body["score"], offline.score(rows)["score"], rtol=1e-5, atol=1e-6)

    with caplog.at_level("WARNING", logger="raysys.serve.deploy"):
        deploy("models:/raysys-detector/1", proxy_config.model_copy(update={"ingress": "haproxy"}), timeout_s=120)
    assert "Asked for ingress=haproxy, but Serve on this cluster already runs with ingress=proxy" in caplog.text
