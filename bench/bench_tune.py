"""Benchmark: ASHA early stopping vs running every trial to the end (FIFO), in one run.

Both sweeps use the same data, search space and searcher seed, so they draw the same trial
configs in the same order; only the scheduler differs. Reported per sweep: trial-epochs (the
compute: epochs Tune saw, and epochs the Train runs actually checkpointed, which can be more
when a worker finishes an epoch between ASHA's decision and the trial's end), the best
validation PR AUC (what ranks trials), and wall time.

Target (issue #3): ASHA's best within 2% of FIFO's best at <= 40% of FIFO's trial-epochs.

    python bench/bench_tune.py                     # default dataset (20,000 rows), 18 trials
    python bench/bench_tune.py --smoke-test        # 6 tiny trials, a minute or two
    python bench/bench_tune.py --address auto      # on a running cluster
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def _configs(sweep_dir: str) -> list[dict]:
    """The trial configs of a sweep directory, in the order the searcher drew them."""
    from ray.tune import ExperimentAnalysis

    from raysys.tune.leaderboard import build_leaderboard

    board = build_leaderboard(ExperimentAnalysis(sweep_dir).trials, Path(sweep_dir) / "train", "val_pr_auc", "max")
    return [json.loads(p) for p in board.sort_values("trial")["params"]]


def run(args: argparse.Namespace) -> dict:
    from raysys.cluster import init_ray
    from raysys.data import generate_dataset
    from raysys.tune import SweepConfig, run_sweep

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_tune_"))
    data = Path(args.data) if args.data else generate_dataset(work / "data", rows=args.rows, seed=args.data_seed)
    init_ray(args.address, num_cpus=args.num_cpus)
    import ray

    base = SweepConfig.default(
        num_samples=args.num_samples, max_epochs=args.max_epochs, patience=args.patience,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor, search="random", seed=args.seed,
        max_concurrent=args.max_concurrent, workers_per_trial=1, storage_path=str(work / "runs"),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}", experiment="bench-tune")
    results = {}
    if args.fifo_from:  # FIFO of an earlier run with the same data, space and seed
        results["fifo"] = json.loads(Path(args.fifo_from).read_text())["fifo"]
        results["fifo"].setdefault("configs", _configs(results["fifo"]["sweep_dir"]))
    for scheduler in args.schedulers.split(","):
        if scheduler in results:
            continue
        config = base.replace(scheduler=scheduler, name=f"{scheduler}-{time.strftime('%Y%m%d-%H%M%S')}")
        start = time.perf_counter()
        result = run_sweep(config, data)
        wall = time.perf_counter() - start
        board = result.leaderboard
        per_family = board.groupby("family")["val_pr_auc"].max().to_dict()
        results[scheduler] = {
            "sweep_dir": str(result.sweep_dir), "wall_s": round(wall, 1), "trials": len(board),
            "trial_epochs_seen": int(board["epochs"].sum()), "trial_epochs_run": int(board["epochs_run"].sum()),
            "stopped_early": int((board["status"] == "stopped").sum()),
            "best_val_pr_auc": float(board["val_pr_auc"].max()),
            "best_family": board.iloc[0]["family"], "best_trial_params": json.loads(board.iloc[0]["params"]),
            "best_val_pr_auc_per_family": {k: round(float(v), 4) for k, v in per_family.items()},
            "exported_val_pr_auc": {k: round(v["metric"], 4) for k, v in result.best.items()},
            "configs": [json.loads(p) for p in board.sort_values("trial")["params"]],
        }
    fifo = results["fifo"]
    summary = {}
    for name, early in results.items():
        if name == "fifo":
            continue
        gaps = {family: round(100 * (fifo["best_val_pr_auc_per_family"][family] - value)
                              / fifo["best_val_pr_auc_per_family"][family], 2)
                for family, value in early["best_val_pr_auc_per_family"].items()
                if family in fifo["best_val_pr_auc_per_family"]}
        summary[name] = {
            "same_configs": early["configs"] == fifo["configs"],
            "best_gap_pct": round(100 * (fifo["best_val_pr_auc"] - early["best_val_pr_auc"])
                                  / fifo["best_val_pr_auc"], 2),
            "best_gap_pct_per_family": gaps,
            "epochs_seen_pct": round(100 * early["trial_epochs_seen"] / fifo["trial_epochs_seen"], 1),
            "epochs_run_pct": round(100 * early["trial_epochs_run"] / fifo["trial_epochs_run"], 1),
        }
        summary[name]["target_met"] = (summary[name]["best_gap_pct"] <= 2.0
                                       and summary[name]["epochs_run_pct"] <= 40.0)
    return {"settings": {k: v for k, v in vars(args).items() if k not in ("out",)} | {"data": str(data)},
            "machine": {"platform": platform.platform(), "cpus": ray.cluster_resources().get("CPU"),
                        "python": sys.version.split()[0], "ray": ray.__version__},
            **results, "summary": summary}


def markdown(report: dict) -> str:
    names = [n for n in ("asha", "asha_family", "fifo") if n in report]
    rows = [("trials", "trials"), ("stopped early", "stopped_early"), ("trial-epochs (Tune saw)", "trial_epochs_seen"),
            ("trial-epochs (trained)", "trial_epochs_run"), ("wall time (s)", "wall_s")]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(str(report[n][key]) for n in names) + " |" for label, key in rows]
    lines.append("| best val PR AUC | " + " | ".join(
        f"{report[n]['best_val_pr_auc']:.4f} ({report[n]['best_family']})" for n in names) + " |")
    for family in ("ae", "vae", "lstm"):
        lines.append(f"| best {family} | " + " | ".join(
            f"{report[n]['best_val_pr_auc_per_family'].get(family, float('nan')):.4f}" for n in names) + " |")
    lines.append("")
    for name, s in report["summary"].items():
        lines.append(f"{name}: {s['epochs_run_pct']}% of FIFO's trained trial-epochs ({s['epochs_seen_pct']}% of "
                     f"those Tune saw), best {s['best_gap_pct']}% below FIFO's (per family: "
                     f"{s['best_gap_pct_per_family']}); same configs: {s['same_configs']}; "
                     f"target met: {s['target_met']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="prepared dataset (default: generate --rows rows)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=18, help="trials per sweep (over all families)")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=float, default=3)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="searcher seed (same configs in both sweeps)")
    parser.add_argument("--address", help="Ray cluster (default: a local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local cluster")
    parser.add_argument("--work-dir", help="where data, sweeps and MLflow go (default: a temp dir)")
    parser.add_argument("--out", help="also write the full report as JSON here")
    parser.add_argument("--schedulers", default="asha,fifo",
                        help="comma-separated sweeps to run: asha, asha_family, fifo (fifo is the reference)")
    parser.add_argument("--fifo-from", metavar="REPORT",
                        help="take FIFO from an earlier report (same data, space and seed) instead of running it")
    parser.add_argument("--smoke-test", action="store_true", help="6 trials of 2 epochs on 3,000 rows")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.rows, args.num_samples, args.max_epochs, args.patience = 3000, 6, 2, 2
    report = run(args)
    print(markdown(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
