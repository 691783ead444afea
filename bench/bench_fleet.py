"""Benchmark: training and serving a fleet of small assets (issue #15).

In one run, on one local Ray cluster, with the same generated fleet:

- **overhead**: the fleet's wall time with 1 and with 2 asset tasks at once, against the summed in-process
  time of the same per-asset work (:func:`raysys.fleet.asset.train_asset`, called in this process, one
  thread, on a sample of the assets, scaled to the fleet). ``overhead = wall x workers / in-process - 1``;
  speed-up ``= wall(1) / wall(2)``. Targets: overhead <= 20%, speed-up >= 1.7.
- **how**: the same per-asset function run as plain Ray tasks (raysys's way), as Ray Tune trials (one
  per asset) and through Ray Data ``groupby("asset_id").map_groups`` on a smaller fleet, wall time each.
- **driver memory**: the driver's peak RSS while training the fleet (the tasks read their own data).
- **serving**: p50 of one request of 10 readings to a warm asset, to a cold asset (its load included) and
  to the single-model endpoint serving that same asset's ensemble. Target: warm <= 1.2x single.

    python bench/bench_fleet.py                     # 1,000 assets: about 20 minutes on 2 cores
    python bench/bench_fleet.py --assets 40 --sample 10 --compare 10   # a quick look

Results: a Markdown summary on stdout and ``--json``; written up in docs/benchmarks.md#fleet.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Samples this process's RSS every 50 ms (peak over a phase, unlike ``ru_maxrss`` which never falls)."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0.0, threading.Event()

    def __enter__(self) -> "RssSampler":
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss / 2**20)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def in_process(data: Path, assets: list[str], config) -> float:
    """Seconds to train ``assets`` one after another in this process (one torch thread)."""
    import torch

    from raysys.fleet.asset import FAILED, train_asset

    torch.set_num_threads(1)
    started = time.perf_counter()
    for asset in assets:
        result = train_asset(data, asset, config)
        assert result.status != FAILED, result.reason
    return time.perf_counter() - started


def fleet_wall(data: Path, out: Path, config, tracking_uri: str) -> tuple[float, float, float]:
    """(training wall s, wall s including MLflow logging and registration, driver peak RSS MiB)."""
    from raysys.fleet.train import train_fleet

    started = time.perf_counter()
    with RssSampler() as rss:
        run = train_fleet(data, out, config, tracking_uri=tracking_uri, progress=False)
    total = time.perf_counter() - started
    assert run.manifest.counts()["failed"] == 0, run.summary()
    return run.wall_s, total, rss.peak


def tune_wall(data: Path, assets: list[str], config, storage: Path) -> float:
    """Wall seconds for the same per-asset work as one Ray Tune trial per asset."""
    from ray import tune

    from raysys.fleet.asset import train_asset

    def trial(params: dict) -> dict:
        result = train_asset(params["data"], params["asset_id"], config)
        return {"status": result.status}

    trainable = tune.with_resources(trial, {"cpu": config.num_cpus})
    tuner = tune.Tuner(trainable, param_space={"data": str(data), "asset_id": tune.grid_search(assets)},
                       tune_config=tune.TuneConfig(max_concurrent_trials=2),
                       run_config=tune.RunConfig(storage_path=str(storage), name="bench-tune", verbose=0))
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    assert not results.errors, results.errors
    return wall


def map_groups_wall(data: Path, config) -> float:
    """Wall seconds for the same per-asset work through ``read_parquet(train).groupby("asset_id").map_groups``
    (each group's rows move through the object store; the function trains that asset)."""
    import pandas as pd
    import ray

    from raysys.fleet.asset import train_asset

    def fit_group(group: pd.DataFrame) -> pd.DataFrame:
        asset = str(group["asset_id"].iloc[0])
        return pd.DataFrame({"asset_id": [asset], "status": [train_asset(data, asset, config).status]})

    started = time.perf_counter()
    out = (ray.data.read_parquet(str(data / "train"))  # Hive partitions by default
           .groupby("asset_id").map_groups(fit_group, batch_format="pandas", num_cpus=config.num_cpus)
           .to_pandas())
    wall = time.perf_counter() - started
    assert len(out) and (out["status"] != "FAILED").all()
    return wall


def serve_latencies(fleet_dir: Path, sensors: list[str], rows: np.ndarray, tracking_uri: str, cold: int,
                    requests: int) -> dict[str, float]:
    """p50 ms: warm asset, cold assets (first request each), and the single-model endpoint on the same ensemble."""
    import httpx
    from ray import serve

    from raysys.fleet.manifest import read_manifest
    from raysys.serve import DeploymentSettings, ServeConfig, UserConfig, deploy

    manifest = read_manifest(fleet_dir)
    assets = manifest.servable()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = ServeConfig(host="127.0.0.1", port=port, tracking_uri=tracking_uri, autoscaling_config=None,
                       num_replicas=1, max_models_per_replica=max(cold + 2, 16),
                       deployment=DeploymentSettings(num_cpus=0.1),
                       user_config=UserConfig(batch_wait_timeout_s=0.0))
    fleet_url = deploy(str(fleet_dir), base.model_copy(update={"app_name": "fleet", "route_prefix": "/fleet"}))
    single_url = deploy(str(fleet_dir / "assets" / assets[0]),
                        base.model_copy(update={"app_name": "single", "route_prefix": "/single"}))
    body = {"columns": {s: rows[:, j].tolist() for j, s in enumerate(sensors)}}

    def timed(client: httpx.Client, url: str) -> float:
        started = time.perf_counter()
        response = client.post(url, json=body)
        elapsed = (time.perf_counter() - started) * 1e3
        assert response.status_code == 200, response.text
        return elapsed

    with httpx.Client(timeout=60) as client:
        cold_ms = [timed(client, f"{fleet_url}/v1/assets/{a}/predict") for a in assets[1:cold + 1]]
        warm_url, single = f"{fleet_url}/v1/assets/{assets[0]}/predict", f"{single_url}/v1/predict"
        for url in (warm_url, single):
            for _ in range(20):
                timed(client, url)
        warm, single_ms = [], []
        for _ in range(requests):  # alternate, so drift on a noisy machine hits both alike
            warm.append(timed(client, warm_url))
            single_ms.append(timed(client, single))
    serve.delete("fleet")
    serve.delete("single")
    return {"warm_p50_ms": statistics.median(warm), "cold_p50_ms": statistics.median(cold_ms),
            "single_p50_ms": statistics.median(single_ms), "warm_over_single": statistics.median(warm) /
            statistics.median(single_ms)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=600, help="rows per asset (70%% train)")
    parser.add_argument("--sample", type=int, default=100, help="assets timed in-process (scaled to the fleet)")
    parser.add_argument("--compare", type=int, default=40, help="assets for the tasks / Tune / map_groups comparison")
    parser.add_argument("--cold", type=int, default=20, help="cold assets requested once each")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import ray

    from raysys.data.fleet import generate_fleet, load_fleet
    from raysys.fleet.config import FleetConfig

    config = FleetConfig(params={"epochs": 5, "hidden_dims": [16], "latent_dim": 4}, gates={})
    results: dict = {"assets": args.assets, "rows_per_asset": args.rows, "config": config.model_dump()}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        data = generate_fleet(work / "data", args.assets, rows=args.rows, seed=0)
        results["generate_s"] = time.perf_counter() - started
        tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        walls = {}
        for workers in (1, 2):
            wall, total, rss = fleet_wall(data, work / f"fleet-{workers}", config.model_copy(
                update={"max_concurrent": workers}), tracking_uri)
            walls[workers] = wall
            results[f"workers_{workers}"] = {"wall_s": wall, "wall_with_tracking_s": total, "driver_peak_rss_mib": rss}
            print(f"{workers} worker(s): {wall:.1f}s training, {total:.1f}s with MLflow; driver peak RSS {rss:.0f} MiB",
                  flush=True)
        sample = [f"asset-{i:04d}" for i in range(0, args.assets, max(1, args.assets // args.sample))][:args.sample]
        per_asset = in_process(data, sample, config) / len(sample)
        baseline = per_asset * args.assets
        results["in_process"] = {"sampled_assets": len(sample), "per_asset_s": per_asset, "fleet_s": baseline}
        for workers in (1, 2):
            results[f"workers_{workers}"]["overhead"] = walls[workers] * workers / baseline - 1
        results["speedup_2_over_1"] = walls[1] / walls[2]
        compare = [f"asset-{i:04d}" for i in range(args.compare)]
        small = generate_fleet(work / "small", args.compare, rows=args.rows, seed=1)
        two = config.model_copy(update={"max_concurrent": 2})
        results["how"] = {"assets": args.compare,
                          "tasks_s": fleet_wall(small, work / "cmp-tasks", two, tracking_uri)[0],
                          "tune_s": tune_wall(small, compare, two, work / "tune"),
                          "map_groups_s": map_groups_wall(small, two)}
        fleet = load_fleet(data)
        rows = fleet.asset(fleet.assets[0]).test[fleet.sensors].to_numpy()[:10]
        results["serve"] = serve_latencies(work / "fleet-2", fleet.sensors, rows, tracking_uri, args.cold,
                                           args.requests)
        ray.shutdown()
    print(json.dumps(results, indent=2, default=str))
    print(f"\n| | value | target |\n|---|---|---|\n"
          f"| overhead, 1 worker | {results['workers_1']['overhead']:+.1%} | <= 20% |\n"
          f"| overhead, 2 workers | {results['workers_2']['overhead']:+.1%} | <= 20% |\n"
          f"| 2 workers over 1 | {results['speedup_2_over_1']:.2f}x | >= 1.7x |\n"
          f"| warm p50 over single-model p50 | {results['serve']['warm_over_single']:.2f}x | <= 1.2x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
