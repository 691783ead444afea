"""Latency and throughput of an ensemble in onnxruntime, by batch size and thread count.

    python bench/bench_ensemble.py --model runs/ensemble/TIME/ensemble --data data/default
    python bench/bench_ensemble.py --model models:/raysys-detector@champion --data data/default --threads 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from raysys.data import load_dataset
from raysys.ensemble.runtime import load_runtime


def bench(runtime, X: np.ndarray, batch: int, seconds: float = 2.0) -> dict[str, float]:
    """Milliseconds per call (p50, p95) and rows per second for batches of ``batch`` rows."""
    runtime.score(X[:batch])
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        offset = np.random.randint(0, len(X) - batch + 1)
        t = time.perf_counter()
        runtime.score(X[offset:offset + batch])
        times.append(time.perf_counter() - t)
    p50 = float(np.percentile(times, 50))
    return {"p50_ms": p50 * 1e3, "p95_ms": float(np.percentile(times, 95)) * 1e3, "rows_per_s": batch / p50}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="ensemble directory or MLflow model URI")
    parser.add_argument("--data", required=True, help="prepared dataset (its test split is scored)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 2048])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args(argv)
    X = load_dataset(args.data).features("test")
    print(f"{'threads':>7} {'batch':>6} {'p50 ms':>9} {'p95 ms':>9} {'rows/s':>10}")
    for threads in args.threads:
        runtime = load_runtime(args.model, intra_op_threads=threads)
        for batch in args.batches:
            r = bench(runtime, X, min(batch, len(X)), args.seconds)
            print(f"{threads:>7} {batch:>6} {r['p50_ms']:>9.3f} {r['p95_ms']:>9.3f} {r['rows_per_s']:>10.0f}")


if __name__ == "__main__":
    main()
