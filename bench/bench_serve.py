"""Benchmark: the ONNX ensemble on Ray Serve against the seeds' design (PyTorch per request, one FastAPI process).

In one run, on one machine, with the same rows: p50 / p99 latency and throughput (readings/s) at
concurrency 1, 8 and 32, for single readings and for batches of 256 readings, for both servers, and
for Serve behind each ingress (Serve's Python proxy with its standard request path, as Ray Serve ships;
HAProxy with the throughput-optimized path, as ``raysys serve`` runs by default).
Targets (issue #5): p50 <= 10 ms for a single reading on Serve; >= 5x the baseline's throughput at
concurrency 32.

    python bench/bench_serve.py                      # about 7 minutes on 2 cores
    python bench/bench_serve.py --smoke-test

It fits the members (AE, VAE, LSTM) on a generated dataset, builds the ensemble with
``raysys.ensemble.build.build_ensemble`` (no Isolation Forest: the baseline has no PyTorch version
of it), starts the baseline (``bench/bench_serve_baseline.py``) in a subprocess and the
``raysys`` Serve application on a local Ray cluster, checks both give the same scores, then
alternates baseline and Serve per cell. Results: a Markdown table on stdout and ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = {"ae": {"epochs": 3}, "vae": {"epochs": 3}, "lstm": {"window": 16, "epochs": 1}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build(workdir: Path, rows: int) -> tuple[Path, dict[str, Path], list[str], np.ndarray]:
    """Fit the members, save them (for the baseline) and build the ONNX ensemble (for Serve).
    A ``workdir`` holding a finished build of the same size is reused; anything else there is replaced."""
    from raysys.data import generate_dataset, load_dataset
    from raysys.ensemble.build import build_ensemble
    from raysys.models import build_detector

    marker = workdir / "build.json"
    dirs = {name: workdir / "detectors" / name for name in MEMBERS}
    if marker.exists() and json.loads(marker.read_text()) == {"rows": rows, "members": MEMBERS}:
        dataset = load_dataset(workdir / "data")
        return workdir / "ensemble", dirs, dataset.sensors, dataset.features("test")
    for part in ("data", "detectors", "ensemble"):
        shutil.rmtree(workdir / part, ignore_errors=True)
    dataset = load_dataset(generate_dataset(workdir / "data", rows=rows, seed=7, overwrite=True))
    X, y = dataset.features("train"), dataset.labels("train")
    detectors = {}
    for name, params in MEMBERS.items():
        detectors[name] = build_detector(name, seed=0, **params).fit(X, y)
        detectors[name].save(dirs[name])
    # no Isolation Forest or PCA member: the baseline has no PyTorch version of them
    ensemble = build_ensemble(detectors, dataset, workdir / "ensemble", iforest=False, pca=False).directory
    marker.write_text(json.dumps({"rows": rows, "members": MEMBERS}))
    return ensemble, dirs, dataset.sensors, dataset.features("test")


def compute_only(ensemble: Path, detector_dirs: dict[str, Path], rows: np.ndarray, batches: list[int],
                 repeats: int = 200) -> list[dict]:
    """Model execution alone, in this process: onnxruntime ensemble vs the PyTorch detectors, per call."""
    from raysys.ensemble.build import source_ensemble_scores
    from raysys.ensemble.runtime import EnsembleRuntime
    from raysys.models import load_detector

    runtime = EnsembleRuntime.load(ensemble)
    models = {name: load_detector(path) for name, path in detector_dirs.items()}
    out = []
    for batch in batches:
        X = rows[:batch]
        for name, fn in (("pytorch", lambda: source_ensemble_scores(models, runtime.spec, X)),
                         ("onnxruntime", lambda: runtime.score(X))):
            fn()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            out.append({"engine": name, "batch": batch, "p50_ms": float(np.percentile(times, 50) * 1e3)})
    return out


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def bodies(sensors: list[str], rows: np.ndarray, batch: int, n: int = 64, columns: bool = False,
           explain: bool = False) -> list[bytes]:
    """``n`` request bodies of ``batch`` consecutive readings each, encoded once: records form, or the
    columnar form only Serve takes; with ``explain``, asking Serve for per-sensor contributions."""
    out = []
    for i in range(n):
        start = (i * batch) % max(1, len(rows) - batch)
        chunk = rows[start:start + batch]
        document = ({"columns": {s: chunk[:, j].astype(float).tolist() for j, s in enumerate(sensors)}} if columns
                    else {"readings": [dict(zip(sensors, map(float, r))) for r in chunk]})
        out.append(json.dumps({**document, "explain": True} if explain else document).encode())
    return out


async def load(url: str, payloads: list[bytes], concurrency: int, duration_s: float, warmup_s: float
               ) -> dict[str, float]:
    """Closed-loop load: ``concurrency`` clients, each sending its next request when the last one returns."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, end = start + warmup_s, start + warmup_s + duration_s

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = k
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            async with session.post(url, data=payloads[i % len(payloads)],
                                    headers={"content-type": "application/json"}) as response:
                await response.read()
                ok = response.status == 200
            done = time.perf_counter()
            if sent >= measure_from and done <= end:
                latencies.append(done - sent)
                errors += not ok
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(k, session) for k in range(concurrency)))
    ms = np.array(latencies) * 1e3
    return {"requests": len(ms), "errors": errors, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "requests_per_s": len(ms) / duration_s}


def scores(url: str, body: bytes) -> np.ndarray:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    return np.array(answer["score"] if "score" in answer else [p["score"] for p in answer["predictions"]])


def markdown(results: list[dict], meta: dict, compute: list[dict]) -> str:
    lines = [f"Machine: {meta['machine']}; Python {meta['python']}, Ray {meta['ray']}, onnxruntime {meta['ort']}, "
             f"torch {meta['torch']}. Serve: {meta['serve']}. {meta['duration_s']:g} s per cell after "
             f"{meta['warmup_s']:g} s warm-up; closed-loop aiohttp clients on the same machine; 1-minute load "
             f"average {meta['load_average'][0]:g} before, {meta['load_average'][1]:g} after.",
             "",
             "| readings / request | concurrency | server | p50 ms | p99 ms | requests/s | readings/s | x baseline |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = f"{r['ratio']:.1f}x" if r["server"] != "baseline" else ""
        lines.append(f"| {r['batch']} | {r['concurrency']} | {r['server']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['requests_per_s']:.0f} | {r['readings_per_s']:.0f} | {ratio} |")
    lines += ["", "Model execution alone (one call, in process, p50):", "",
              "| readings | PyTorch ms | onnxruntime ms |", "|---:|---:|---:|"]
    for batch in sorted({c["batch"] for c in compute}):
        by = {c["engine"]: c["p50_ms"] for c in compute if c["batch"] == batch}
        lines.append(f"| {batch} | {by['pytorch']:.2f} | {by['onnxruntime']:.2f} |")
    return "\n".join(lines)


def measure_serve(args: argparse.Namespace, ingress: str, ensemble: Path, sensors: list[str], rows: np.ndarray,
                  baseline_url: str, check: bytes, expected: np.ndarray) -> list[dict]:
    """Start Serve with ``ingress`` (and the request path ``--throughput-optimized`` gives), check its scores
    against the baseline's, then run every cell, the baseline right before Serve in each; Serve is shut
    down afterwards."""
    from raysys.serve import DeploymentSettings, ServeConfig, UserConfig, deploy, shutdown

    optimized = ingress == "haproxy" if args.throughput_optimized == "auto" else args.throughput_optimized == "on"
    config = ServeConfig(host="127.0.0.1", port=free_port(), ingress=ingress, throughput_optimized=optimized,
                         autoscaling_config=None,
                         num_replicas=args.replicas, intra_op_threads=args.intra_op_threads,
                         deployment=DeploymentSettings(num_cpus=args.num_cpus, max_ongoing_requests=128,
                                                       access_log=False),  # as the baseline's uvicorn
                         user_config=UserConfig(max_batch_size=args.max_batch_size,
                                                batch_wait_timeout_s=args.batch_wait_timeout_s,
                                                max_request_rows=4096))
    try:
        serve_url = f"{deploy(str(ensemble), config)}/v1/predict"
        got = scores(serve_url, check)
        parity = float(np.max(np.abs(expected - got)) / np.max(np.abs(expected)))  # robust z-scores, often ~0
        print(f"{ingress}: same rows, same scores: max |baseline - Serve| / max |baseline| = {parity:.2e}",
              flush=True)
        if parity > 1e-3:
            raise SystemExit("the two servers disagree: stale --workdir? (delete it)")
        name = f"Serve, {ingress}" + ("" if optimized == (ingress == "haproxy") else
                                      ", optimized path" if optimized else ", standard path")
        urls = {"baseline": baseline_url, name: serve_url, f"{name}, columnar body": serve_url,
                f"{name}, explain": serve_url}
        results = []
        for batch in args.batch_sizes:
            payloads = {"baseline": bodies(sensors, rows, batch), name: bodies(sensors, rows, batch)}
            if batch > 1:
                payloads[f"{name}, columnar body"] = bodies(sensors, rows, batch, columns=True)
            if args.explain:  # the same readings, each answered with its per-sensor contributions
                payloads[f"{name}, explain"] = bodies(sensors, rows, batch, explain=True)
            for concurrency in args.concurrency:
                cell = {}
                for server, server_payloads in payloads.items():
                    r = asyncio.run(load(urls[server], server_payloads, concurrency, args.duration, args.warmup))
                    r.update(server=server, ingress=ingress, batch=batch, concurrency=concurrency,
                             readings_per_s=r["requests_per_s"] * batch, parity=parity)
                    r["ratio"] = r["readings_per_s"] / max(cell["baseline"]["readings_per_s"], 1e-9) if cell else 1.0
                    cell[server] = r
                    results.append(r)
                print(f"{batch:>4} readings x {concurrency:>2} clients: " + " | ".join(
                    f"{server} p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms {r['readings_per_s']:.0f}/s"
                    + (f" ({r['ratio']:.1f}x)" if server != "baseline" else "") for server, r in cell.items()),
                    flush=True)
        return results
    finally:
        shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000, help="rows of the generated dataset")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--ingress", nargs="+", choices=["proxy", "haproxy"], default=["proxy", "haproxy"],
                        help="Serve ingresses to measure, one after the other (raysys serve --ingress)")
    parser.add_argument("--replicas", type=int, default=1, help="Serve replicas (fixed, no autoscaling)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per Serve replica")
    parser.add_argument("--intra-op-threads", type=int, default=1, help="onnxruntime threads per call")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.001)
    parser.add_argument("--throughput-optimized", choices=["auto", "on", "off"], default="auto",
                        help="Serve's throughput-optimized request path: auto = on behind HAProxy (raysys's "
                             "default), off behind the proxy (Serve's default)")
    parser.add_argument("--workdir", help="keep the data, detectors and ensemble here (default: a temp dir)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--explain", action="store_true",
                        help="also measure requests that ask for per-sensor contributions (\"explain\": true)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny run: 2 cells, 1 s each")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.rows, args.duration, args.warmup, args.concurrency, args.batch_sizes = 3000, 1.0, 0.5, [1, 8], [1]
    # Ray starts its workers (Serve's controller, proxy, replicas) at nice 15, below the baseline and the
    # clients; both servers run at the same priority here, as in bench_train.py.
    os.environ.setdefault("RAY_worker_niceness", "0")

    import onnxruntime
    import ray
    import torch

    from raysys.serve import shutdown

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-serve-"))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    ensemble, detector_dirs, sensors, rows = build(workdir, args.rows)
    print(f"built the ensemble in {time.perf_counter() - started:.0f}s: {ensemble}", flush=True)
    compute = compute_only(ensemble, detector_dirs, rows, args.batch_sizes)
    for c in compute:
        print(f"model execution only, {c['batch']:>4} readings, {c['engine']:>11}: p50 {c['p50_ms']:.2f} ms",
              flush=True)

    baseline_port = free_port()
    baseline = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bench_serve_baseline.py"), "--ensemble", str(ensemble),
         "--port", str(baseline_port), *[f"--detector={n}={d}" for n, d in detector_dirs.items()]], cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{baseline_port}/healthz")
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        baseline_url = f"http://127.0.0.1:{baseline_port}/v1/predict"
        check = bodies(sensors, rows, 256, n=1)[0]
        expected = scores(baseline_url, check)
        results = []
        for ingress in args.ingress:
            results += measure_serve(args, ingress, ensemble, sensors, rows, baseline_url, check, expected)
        errors = sum(r["errors"] for r in results)
        meta = {"machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
                "python": platform.python_version(), "ray": ray.__version__, "ort": onnxruntime.__version__,
                "torch": torch.__version__, "duration_s": args.duration, "warmup_s": args.warmup,
                "serve": (f"{args.replicas} replica(s) x {args.num_cpus:g} CPU, onnxruntime threads "
                          f"{args.intra_op_threads}, max_batch_size {args.max_batch_size}, "
                          f"batch_wait_timeout_s {args.batch_wait_timeout_s:g}"
                          + f", throughput-optimized path: {args.throughput_optimized}"
                          + f", Ray workers at nice {os.environ['RAY_worker_niceness']}"),
                "parity_max_rel_diff": max(r["parity"] for r in results if "parity" in r), "errors": errors,
                "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
        print("\n" + markdown(results, meta, compute))
        print()
        for r in results:
            if r["server"] != "baseline" and r["batch"] == 1 and r["concurrency"] == 1:
                print(f"{r['server']}: single reading p50 at concurrency 1: {r['p50_ms']:.1f} ms (target <= 10 ms)")
        for r in [r for r in results if r["server"] != "baseline" and r["concurrency"] == max(args.concurrency)]:
            print(f"{r['server']} throughput at concurrency {r['concurrency']}, {r['batch']} readings/request: "
                  f"{r['ratio']:.1f}x the baseline (target >= 5x)")
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "compute": compute}, indent=2))
        return 1 if errors else 0
    finally:
        shutdown()
        if ray.is_initialized():
            ray.shutdown()
        baseline.terminate()
        baseline.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
