"""``raysys pipeline``."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from raysys.cluster import init_ray
from raysys.data.profiles import PROFILES
from raysys.train.cli import data_args


def run(args: argparse.Namespace) -> int:
    from raysys.pipeline.config import load_pipeline_config
    from raysys.pipeline.runner import run_pipeline, summary_lines
    from raysys.pipeline.state import StageError
    from raysys.tracking import resolve_tracking_uri

    cfg = load_pipeline_config(args.config, data=args.data, ingest=args.ingest, storage_options=args.storage_options,
                               profile=args.profile, rows=args.rows, seed=args.seed,
                               quick=args.quick or None, serve=args.serve or None, output_dir=args.output_dir,
                               tracking_uri=args.mlflow_uri, model_name=args.name, assets=args.assets)
    init_ray(args.address)
    console = Console()
    try:
        result = run_pipeline(cfg, console)
    except StageError as exc:
        print(f"raysys pipeline: error: {exc}", file=sys.stderr)
        return 1
    console.rule("[bold]summary")
    for line in summary_lines(result, resolve_tracking_uri(cfg.tracking_uri)):
        console.print(line, highlight=False, soft_wrap=True)
    if cfg.serve:
        console.print("endpoint is up; press Ctrl+C to stop")
        from raysys.serve.deploy import block_until_interrupted

        block_until_interrupted()
    return 0 if result.model_uri else 1


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pipeline", help="end to end: data, sweep, ensemble, gates, registry, report")
    p.add_argument("--config", help="pipeline YAML: any fields of raysys.pipeline.PipelineConfig")
    source = p.add_mutually_exclusive_group()
    data_args(p, required=False, data_group=source, config_file=True)
    source.add_argument("--profile", choices=sorted(PROFILES), help="facility profile of generated data")
    p.add_argument("--rows", type=int, help="rows of generated data (per asset with --assets)")
    p.add_argument("--assets", type=int, metavar="N",
                   help="the fleet path: N generated assets, one detector set each (docs/fleet.md)")
    p.add_argument("--seed", type=int)
    p.add_argument("--quick", action="store_true", help="a few trials and epochs: minutes on 2 CPU cores")
    p.add_argument("--serve", action="store_true", help="then serve the champion and send one request")
    p.add_argument("--name", help="registered model name (default raysys-detector)")
    p.add_argument("--output-dir", help="parent of run directories (default runs/pipeline)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    p.set_defaults(func=run)
