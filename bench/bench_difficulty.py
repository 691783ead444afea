"""How well each family separates generated data at each difficulty: test F1 and VUS-PR, default parameters.

For each ``--difficulty`` level, one dataset (``raysys generate`` with that level, ``--rows``, ``--seed``)
and, fitted in-process on its training split (known anomalies left out, as ``raysys train`` does): each
deep family with its default parameters, the PCA detector (SPE), and the trivial baseline ``max |z|``
(the largest absolute z-score of a row against the normal training rows). Threshold: ``best_f1`` on the
validation split; test F1 at it, and the threshold-free test VUS-PR. A tuned sweep (``raysys tune``)
does better than these defaults; the hard level is meant to leave room for it (docs/data.md).

    python bench/bench_difficulty.py                           # 20,000 rows, easy / medium / hard
    python bench/bench_difficulty.py --rows 6000 --families ae --smoke-test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from raysys.data import DIFFICULTIES, generate_dataset, load_dataset
from raysys.evaluation import calibrate_threshold, detection_metrics
from raysys.models import build_detector
from raysys.models.pca import PCADetector


def max_abs_z(train: np.ndarray):
    """The trivial detector: a row's largest absolute z-score against ``train``."""
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-12
    return lambda X: np.abs((X - mean) / std).max(axis=1)


def measure(dataset, name: str, score) -> dict[str, float]:
    """Test F1 at the validation split's best-F1 threshold, and test VUS-PR."""
    threshold = calibrate_threshold("best_f1", dataset.labels("val"), score(dataset.features("val")))
    metrics = detection_metrics(dataset.labels("test"), score(dataset.features("test")), threshold)
    return {"detector": name, "f1": metrics["f1"], "vus_pr": metrics["vus_pr"], "pr_auc": metrics["pr_auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", nargs="+", choices=DIFFICULTIES, default=list(DIFFICULTIES))
    parser.add_argument("--families", nargs="+", default=["ae", "vae", "lstm", "conv"])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--smoke-test", action="store_true", help="1 epoch per family")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            dataset = load_dataset(generate_dataset(Path(tmp) / level, rows=args.rows, seed=args.seed,
                                                    difficulty=level))
            X, y = dataset.features("train"), dataset.labels("train")
            normal = dataset.features("train", normal_only=True)
            rows = [measure(dataset, "max |z|", max_abs_z(normal)),
                    measure(dataset, "pca (spe)", PCADetector().fit(normal).decision_function)]
            for family in args.families:
                started = time.perf_counter()
                params = {"epochs": 1} if args.smoke_test else {}
                detector = build_detector(family, seed=args.seed, **params).fit(X, y)
                rows.append({**measure(dataset, family, detector.decision_function),
                             "fit_s": round(time.perf_counter() - started, 1)})
            results += [{"level": level, **r} for r in rows]
            print(f"{level}: " + ", ".join(f"{r['detector']} F1 {r['f1']:.3f} VUS-PR {r['vus_pr']:.3f}" for r in rows),
                  flush=True)
    table = Table(title=f"Generated data, {args.rows:,} rows, seed {args.seed}: test F1 / VUS-PR (default parameters)")
    for column in ("level", "detector", "F1", "VUS-PR", "PR AUC"):
        table.add_column(column)
    for r in results:
        table.add_row(r["level"], r["detector"], f"{r['f1']:.3f}", f"{r['vus_pr']:.3f}", f"{r['pr_auc']:.3f}")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
