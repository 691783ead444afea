"""``raysys tune``: a hyperparameter sweep over the detector families with Ray Tune."""

from __future__ import annotations

import argparse
import logging
import sys

from raysys.cluster import init_ray
from raysys.train.cli import data_args
from raysys.tune.config import QUICK, SCHEDULERS, SEARCHERS, SweepConfig, default_config_path, load_sweep_config

logger = logging.getLogger(__name__)

#: flag destination -> SweepConfig field, for flags that override the config file
_OVERRIDES = {"num_samples": "num_samples", "max_concurrent": "max_concurrent",
              "workers_per_trial": "workers_per_trial", "gpus_per_worker": "gpus_per_worker",
              "cpus_per_worker": "cpus_per_worker", "time_budget": "time_budget_s", "max_epochs": "max_epochs",
              "scheduler": "scheduler", "search": "search", "seed": "seed", "name": "name",
              "storage_path": "storage_path", "mlflow_uri": "tracking_uri", "experiment": "experiment"}


def sweep_config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The config file (default: the packaged one; ``--quick``: a tiny sweep) with flag overrides."""
    overrides = {field: getattr(args, dest) for dest, field in _OVERRIDES.items() if getattr(args, dest) is not None}
    return load_sweep_config(args.config or default_config_path(), **{**(QUICK if args.quick else {}), **overrides})


def run_tune(args: argparse.Namespace) -> int:
    from raysys.train.ingest import check_training_data
    from raysys.tune.sweep import run_sweep

    if args.resume:
        if args.config or args.data:
            logger.warning("--resume continues the sweep with its own config and data; --config/--data ignored")
        init_ray(args.address)
        result = run_sweep(None, resume=args.resume, storage_options=args.storage_options)
    else:
        config = sweep_config_from_args(args)  # a malformed config fails here, before any Ray work
        if args.print_config:
            print(config.to_yaml(), end="")
            return 0
        if not args.data:
            raise ValueError("--data is required (a data set) unless --resume or --print-config")
        check_training_data(args.data, args.ingest, args.storage_options)  # bad data fails before any Ray work
        init_ray(args.address)
        result = run_sweep(config, args.data, ingest=args.ingest, storage_options=args.storage_options)
    print(f"sweep {result.sweep_dir}: MLflow parent run {result.parent_run_id}, "
          f"{len(result.leaderboard)} trials, {result.total_trial_epochs} trial-epochs")
    print(f"best per family: {result.sweep_dir / 'best.json'}")
    return 0 if result.finished else 1


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    tu = subparsers.add_parser(
        "tune", help="hyperparameter sweep over ae / vae / lstm / conv with Ray Tune (each trial a Ray Train run)",
        description="Ray Tune sweep; each trial is a Ray Train run tracked as an MLflow child run. Writes "
                    "leaderboard.csv, leaderboard.png and best.json (best trial per family) into the sweep directory.")
    data_args(tu, required=False)
    tu.add_argument("--config", help=f"sweep config, YAML or JSON (default: {default_config_path()})")
    tu.add_argument("--quick", action="store_true",
                    help="tiny sweep: 3 trials (one per family), 2 epochs, 1 worker per trial (flags still override)")
    tu.add_argument("--print-config", action="store_true", help="print the resolved sweep config and exit")
    tu.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep (Tuner.restore)")
    tu.add_argument("--num-samples", type=int, help="trials in total, over all families")
    tu.add_argument("--max-concurrent", type=int, help="trials running at once")
    tu.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial")
    tu.add_argument("--gpus-per-worker", type=float, help="GPUs per Train worker (0: CPU)")
    tu.add_argument("--cpus-per-worker", type=float, help="CPUs per Train worker")
    tu.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop the sweep after this long")
    tu.add_argument("--max-epochs", type=int, help="epochs per trial at most")
    tu.add_argument("--scheduler", choices=SCHEDULERS,
                    help="asha (early stopping), asha_family (ASHA within each family) or fifo")
    tu.add_argument("--search", choices=SEARCHERS, help="random or optuna (TPE)")
    tu.add_argument("--seed", type=int, help="searcher seed")
    tu.add_argument("--name", help="sweep name (default: sweep-TIMESTAMP)")
    tu.add_argument("--storage-path", help="where Tune and Train keep the sweep (shared storage on a cluster)")
    tu.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    tu.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    tu.add_argument("--experiment", help="MLflow experiment")
    tu.set_defaults(func=run_tune)


def main(argv: list[str] | None = None) -> int:
    """``raysys tune`` on its own (``python -m raysys.tune``); exit code 2 for bad input."""
    from raysys.data import DataValidationError

    parser = argparse.ArgumentParser(prog="raysys")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tune", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (DataValidationError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"raysys tune: error: {exc}", file=sys.stderr)
        return 2
