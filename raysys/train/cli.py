"""``raysys train`` and ``raysys evaluate``."""

from __future__ import annotations

import argparse
import json

import yaml
from rich.console import Console

from raysys.cluster import init_ray
from raysys.evaluation import THRESHOLD_METHODS
from raysys.models import FAMILY_NAMES, with_spellings
from raysys.train.ingest import INGEST_MODES


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` (the value read as YAML: numbers, booleans, lists) for ``--param``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def storage_options(text: str) -> dict[str, object]:
    """``--storage-options``: a JSON object of the object store's pyarrow filesystem arguments."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def data_args(parser: argparse.ArgumentParser, required: bool = True,
              data_group: argparse._ActionsContainer | None = None, config_file: bool = False) -> None:
    """``--data`` (in ``data_group`` when given), ``--ingest`` and ``--storage-options``: where a training run
    reads its data, and how. ``config_file``: no defaults, so a command's config file can set them."""
    (data_group or parser).add_argument("--data", required=required, metavar="URI", help=(
        "data set: a prepared directory, a directory of Parquet splits (train/ val/ test/, Hive-partitioned or "
        "not), or the same under s3:// gs:// abfs://"))
    parser.add_argument("--ingest", choices=INGEST_MODES, default=None if config_file else "auto",
                        help="load the data set into every worker (memory), stream it through Ray Data (stream), or "
                             "choose by where it is and its size (auto; docs/data.md#streaming-training)")
    parser.add_argument("--storage-options", type=storage_options, default=None if config_file else {}, metavar="JSON",
                        help='object-store filesystem arguments, e.g. \'{"endpoint_override": "http://minio:9000"}\'; '
                             "pass credentials through the store's environment variables, not here")


def run_train(args: argparse.Namespace) -> int:
    from raysys.train.config import TrainConfig
    from raysys.train.driver import train
    from raysys.train.ingest import check_training_data

    params = with_spellings(dict(args.param), max_epochs=args.max_epochs, patience=args.patience)
    cfg = TrainConfig(data=args.data, ingest=args.ingest, storage_options=args.storage_options, model=args.model,
                      params=params, num_workers=args.num_workers, use_gpu=args.gpu,
                      cpus_per_worker=args.cpus_per_worker, storage_path=args.storage_path,
                      run_name=args.run_name, threshold_method=args.threshold, percentile=args.percentile,
                      target_far=args.target_far, tracking_uri=args.mlflow_uri, experiment=args.experiment)
    check_training_data(cfg.data, cfg.ingest, cfg.storage_options)  # bad data fails here, before any Ray work
    init_ray(args.address)
    result = train(cfg, resume=args.resume)
    print(f"run {result.run_name}: MLflow run {result.run_id}, {result.epochs} epochs")
    print(f"detector: {result.detector_dir}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from raysys.data import load_dataset
    from raysys.evaluation import metrics_table
    from raysys.models import load_detector
    from raysys.train.evaluate import evaluate_detector

    evaluation = evaluate_detector(load_detector(args.detector), load_dataset(args.data), args.threshold,
                                   args.percentile, args.target_far)
    Console().print(metrics_table(evaluation.metrics))
    return 0


def _threshold_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", choices=THRESHOLD_METHODS, default=None,
                        help="threshold on validation: best F1, a percentile of normal scores, or a false-alarm rate "
                             "(default: best_f1 with labels, far without)")
    parser.add_argument("--percentile", type=float, default=99.0)
    parser.add_argument("--target-far", type=float, default=0.01)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    tr = subparsers.add_parser("train", help="train a detector with Ray Train, tracked in MLflow")
    data_args(tr)
    tr.add_argument("--model", choices=sorted(FAMILY_NAMES), default="ae")
    tr.add_argument("--num-workers", type=int, default=2)
    tr.add_argument("--gpu", action="store_true", help="one GPU per worker")
    tr.add_argument("--cpus-per-worker", type=float, default=1.0,
                    help="CPUs each worker holds (fractions allowed; streaming leaves Ray Data one CPU)")
    tr.add_argument("--max-epochs", type=int, help="the detector's epochs parameter (default 30)")
    tr.add_argument("--patience", type=int, help="the detector's early-stopping patience in epochs (default 5)")
    tr.add_argument("--param", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                    help="detector parameter, e.g. --param latent_dim=4 --param 'hidden_dims=[32,16]'")
    tr.add_argument("--run-name", help="Ray Train run name (default: MODEL-TIMESTAMP)")
    tr.add_argument("--resume", metavar="RUN", help="continue RUN from its latest checkpoint")
    tr.add_argument("--storage-path", default="runs/train", help="Ray Train storage (shared storage on a cluster)")
    tr.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    tr.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    tr.add_argument("--experiment", default="raysys", help="MLflow experiment")
    _threshold_args(tr)
    tr.set_defaults(func=run_train)

    ev = subparsers.add_parser("evaluate", help="score a saved detector on a dataset's test split")
    ev.add_argument("--detector", required=True, help="detector directory (a training run's detector/)")
    ev.add_argument("--data", required=True, help="prepared dataset directory")
    _threshold_args(ev)
    ev.set_defaults(func=run_evaluate)
