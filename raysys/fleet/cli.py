"""``raysys fleet train`` and ``raysys fleet promote``."""

from __future__ import annotations

import argparse
from typing import Any

from raysys.models.params import FAMILY_NAMES


def _assets(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~raysys.fleet.config.FleetConfig` of ``raysys fleet train``'s flags."""
    from raysys.ensemble.gates import parse_gates
    from raysys.fleet.config import FLEET_GATES, FleetConfig

    params = dict(args.param)
    if args.max_epochs is not None:
        params["epochs"] = args.max_epochs
    return FleetConfig(families=args.model or ["ae"], classical=args.ensemble,
                       params=params, threshold_method=args.threshold_method, target_far=args.target_far,
                       gates=parse_gates(args.gate, FLEET_GATES), seed=args.seed, num_cpus=args.cpus_per_asset,
                       num_gpus=args.gpus_per_asset, max_concurrent=args.max_concurrent, max_retries=args.max_retries)


def run_train(args: argparse.Namespace) -> int:
    from raysys.cluster import init_ray
    from raysys.fleet.manifest import read_manifest
    from raysys.fleet.train import train_fleet

    out, data = args.resume or args.out, args.data
    if not out:
        raise ValueError("give --out DIR (a new fleet) or --resume DIR (a fleet to finish)")
    if args.resume and data is None:
        data = read_manifest(args.resume).data
    if data is None:
        raise ValueError("give --data DIR (a fleet dataset: raysys generate --assets N, or raysys prepare "
                         "--asset-column)")
    init_ray(args.address)
    run = train_fleet(data, out, config_from_args(args), assets=args.assets, resume=bool(args.resume),
                      tracking_uri=args.mlflow_uri, experiment=args.experiment,
                      register="" if args.no_register else args.name, per_asset_runs=args.per_asset_runs)
    print(run.summary())
    if run.version:
        print(f"registered {args.name} version {run.version} (alias champion): "
              f"raysys serve --model models:/{args.name}@champion")
    return 0 if run.manifest.servable() else 1  # a fleet with nothing to serve fails its job


def run_promote(args: argparse.Namespace) -> int:
    from raysys.fleet.tracking import promote_asset

    version = promote_asset(args.asset, args.source, args.name, args.mlflow_uri, args.experiment)
    print(f"{args.name} version {version} is champion: asset {args.asset} from {args.source}, the others unchanged")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    from raysys.cli import COMMANDS
    from raysys.evaluation import THRESHOLD_METHODS
    from raysys.fleet.tracking import DEFAULT_FLEET_MODEL
    from raysys.train.cli import key_value

    fleet = subparsers.add_parser("fleet", help=COMMANDS["fleet"][1],
                                  description="A fleet: one detector set per asset (machine), trained in parallel "
                                              "as Ray tasks, one MLflow run, one registered model (docs/fleet.md).")
    commands = fleet.add_subparsers(dest="fleet_command", required=True, metavar="SUBCOMMAND")
    tr = commands.add_parser("train", help="train every asset's detector and threshold in parallel")
    tr.add_argument("--data", help="fleet dataset directory (raysys generate --assets N / prepare --asset-column)")
    tr.add_argument("--out", help="new fleet directory (fleet.json, assets.csv, plots/, assets/<id>/)")
    tr.add_argument("--resume", metavar="DIR", help="finish the fleet in DIR: train only its missing or failed assets")
    tr.add_argument("--model", action="append", choices=sorted(FAMILY_NAMES),
                    help="deep family per asset (repeat for several; default ae)")
    tr.add_argument("--ensemble", action="store_true", help="add the Isolation Forest and PCA members per asset")
    tr.add_argument("--max-epochs", type=int, help="the detectors' epochs parameter")
    tr.add_argument("--param", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                    help="a detector parameter, for every family")
    tr.add_argument("--assets", type=_assets, metavar="ID,ID", help="only these assets (default: all)")
    tr.add_argument("--threshold-method", choices=THRESHOLD_METHODS, default="far",
                    help="per-asset threshold rule (default far: the false-alarm rate asked for)")
    tr.add_argument("--target-far", type=float, default=0.01, help="false-alarm rate asked for, per asset")
    tr.add_argument("--gate", action="append", default=[], metavar="NAME=LIMIT",
                    help="per-asset gate (NAME=off drops one; default roc_auc, false_alarm_rate, heldout_far_ratio)")
    tr.add_argument("--cpus-per-asset", type=float, default=1.0, help="CPUs per asset task (default 1)")
    tr.add_argument("--gpus-per-asset", type=float, default=0.0, help="GPUs per asset task (default 0: CPU)")
    tr.add_argument("--max-concurrent", type=int, help="most asset tasks at once (default: what the cluster fits)")
    tr.add_argument("--max-retries", type=int, default=1, help="retries of an asset whose worker died (default 1)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--name", default=DEFAULT_FLEET_MODEL, help="registered fleet model (default %(default)s)")
    tr.add_argument("--no-register", action="store_true", help="log the fleet run, register nothing")
    tr.add_argument("--per-asset-runs", action="store_true", help="also one child MLflow run per asset (small fleets)")
    tr.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    tr.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    tr.add_argument("--experiment", default="raysys", help="MLflow experiment")
    tr.set_defaults(func=run_train)

    pr = commands.add_parser("promote", help="make one asset's newly trained model the champion's, others unchanged")
    pr.add_argument("--asset", required=True, help="the asset to replace")
    pr.add_argument("--source", required=True, metavar="FLEET_DIR",
                    help="fleet directory holding the asset's new model (e.g. fleet train --assets ID --out DIR)")
    pr.add_argument("--name", default=DEFAULT_FLEET_MODEL, help="registered fleet model (default %(default)s)")
    pr.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    pr.add_argument("--experiment", default="raysys", help="MLflow experiment")
    pr.set_defaults(func=run_promote)
