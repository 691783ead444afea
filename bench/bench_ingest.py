"""Benchmark: streamed training (Ray Data into Ray Train) against the in-memory loader (issue #16).

In one run, on one local Ray cluster, the same 2-worker autoencoder run (2 epochs, global batch 2048, 0.5 CPU per
worker so Ray Data keeps a CPU) on the same random-walk data (24 sensors, no labels) at 1x and 10x rows, each
way: ``--ingest memory`` (every worker loads the prepared directory) and ``--ingest stream`` (the training split
as a directory of Parquet files, streamed). From each worker's diagnostics:

- **peak memory per worker**: the worker process's peak RSS (``ru_maxrss``), the largest of the two workers.
  Target: streamed peak at 10x <= 1.3x streamed peak at 1x.
- **samples/s**: training samples (both workers, every epoch) over the epoch loop's wall time (training plus
  the hold-out loss; the slower worker). Target: streamed >= 0.8x in-memory.
- **run wall time**: ``raysys.train.train`` end to end (data checks, scaler pass, sample, Train start-up,
  evaluation).
- **waiting**: the seconds the streamed workers' epoch loop waited for training and hold-out batches (the rest
  of the loop is compute), to show whether a run is data-bound.
- the same pair for the LSTM (window 16) at 1x: a model whose compute per sample hides more of the reading.

    python bench/bench_ingest.py                          # 100,000 and 1,000,000 rows: about 15 minutes
    python bench/bench_ingest.py --rows 20000 --epochs 1  # a quick look

Results: a Markdown summary on stdout and ``--json``; written up in docs/benchmarks.md#ingest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENSORS = 24
FILES_PER_MILLION = 20  # files of the streamed training split: 50,000 rows each


def write_data(root: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """The same rows twice: a prepared directory (memory) and split directories of many files (stream)."""
    rng = np.random.default_rng(seed)
    names = [f"s{j}" for j in range(SENSORS)]
    frames = {}
    for split, n in (("train", rows), ("val", 5000), ("test", 5000)):
        values = np.cumsum(rng.normal(0, 0.1, (n, SENSORS)), axis=0)
        frame = pd.DataFrame(values, columns=names)
        start = pd.Timestamp("2024-01-01") + pd.Timedelta(seconds=sum(len(f) for f in frames.values()))
        frame.insert(0, "timestamp", pd.date_range(start, periods=n, freq="1s"))
        frames[split] = frame
    prepared, streamed = root / "prepared", root / "streamed"
    prepared.mkdir(parents=True)
    for split, frame in frames.items():
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, prepared / f"{split}.parquet")
        files = max(1, round(len(frame) * FILES_PER_MILLION / 1e6)) if split == "train" else 1
        (streamed / split).mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(len(frame)), files)):
            pq.write_table(table.take(part), streamed / split / f"part-{i:04d}.parquet")
    (prepared / "metadata.json").write_text(json.dumps({"sensors": names}))
    return prepared, streamed


def run(data: Path, ingest: str, family: str, epochs: int, out: Path) -> dict[str, float]:
    from raysys.train import TrainConfig, train

    cfg = TrainConfig(data=str(data), ingest=ingest, model=family,
                      params={"epochs": epochs, "patience": 100, "batch_size": 2048}, num_workers=2,
                      cpus_per_worker=0.5, storage_path=str(out / "runs"), run_name=ingest,
                      tracking_uri=f"sqlite:///{out / 'mlflow.db'}", experiment="bench-ingest")
    started = time.perf_counter()
    train(cfg, diagnostics_dir=str(out / "diagnostics"))
    wall = time.perf_counter() - started
    ranks = [json.loads(f.read_text()) for f in sorted((out / "diagnostics").glob("rank*.json"))]
    samples = sum(r["samples_per_epoch"] * r["epochs"] for r in ranks)
    waits = [sum(r["stream"]["wait_seconds"].values()) for r in ranks if r["stream"]]
    return {"peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
            "samples_per_s": samples / max(r["train_seconds"] for r in ranks),
            "samples": samples, "loop_s": max(r["train_seconds"] for r in ranks),
            "wait_s": max(waits) if waits else 0.0, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="training rows at 1x (10x is ten times that)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import ray

    from raysys.cluster import init_ray

    init_ray(num_cpus=2)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family, scale in (("ae", 1), ("ae", 10), ("lstm", 1)):
            rows, key = args.rows * scale, f"{family} {scale}x"
            data = write_data(Path(tmp) / key.replace(" ", "-"), rows, args.seed)
            for ingest, path in zip(("memory", "stream"), data):
                results.setdefault(key, {})[ingest] = run(path, ingest, family, args.epochs,
                                                          Path(tmp) / f"{key.replace(' ', '-')}-{ingest}")
                print(f"{key} ({rows:,} rows) {ingest}: {results[key][ingest]}", flush=True)
    ray.shutdown()

    one, ten, lstm = results["ae 1x"], results["ae 10x"], results["lstm 1x"]
    ratios = {"stream_peak_10x_over_1x": ten["stream"]["peak_rss_mb"] / one["stream"]["peak_rss_mb"],
              "memory_peak_10x_over_1x": ten["memory"]["peak_rss_mb"] / one["memory"]["peak_rss_mb"],
              **{f"stream_over_memory_samples_per_s_{key.replace(' ', '_')}":
                 r["stream"]["samples_per_s"] / r["memory"]["samples_per_s"] for key, r in results.items()}}
    print("\n| model, scale | rows | ingest | peak RSS / worker (MiB) | samples/s | epoch loop (s) | waiting for "
          "batches (s) | run wall (s) |\n|---|---|---|---|---|---|---|---|")
    for key, by_ingest in results.items():
        for ingest, r in by_ingest.items():
            rows = args.rows * int(key.split()[1][:-1])
            print(f"| {key} | {rows:,} | {ingest} | {r['peak_rss_mb']:.0f} | {r['samples_per_s']:,.0f} | "
                  f"{r['loop_s']:.1f} | {r['wait_s']:.1f} | {r['wall_s']:.1f} |")
    print()
    print(f"streamed peak memory 10x / 1x: {ratios['stream_peak_10x_over_1x']:.2f} (target <= 1.3); in memory: "
          f"{ratios['memory_peak_10x_over_1x']:.2f}")
    print("streamed / in-memory samples/s (target >= 0.8): " + ", ".join(
        f"{key} {r['stream']['samples_per_s'] / r['memory']['samples_per_s']:.2f}" for key, r in results.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
