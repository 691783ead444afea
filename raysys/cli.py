"""The ``raysys`` command line: one subcommand per stage, each a thin layer over a function."""

from __future__ import annotations

import argparse
import logging
import sys

from raysys import __version__
from raysys.data import DataValidationError
from raysys.data import cli as data_cli
from raysys.ensemble import cli as ensemble_cli
from raysys.jobs import cli as jobs_cli
from raysys.pipeline import cli as pipeline_cli
from raysys.serve import cli as serve_cli
from raysys.train import cli as train_cli
from raysys.tune import cli as tune_cli

STAGES = (data_cli, train_cli, tune_cli, ensemble_cli, serve_cli, pipeline_cli, jobs_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysys", description=__doc__)
    parser.add_argument("--version", action="version", version=f"raysys {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        stage.add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``raysys`` with ``argv``; returns the exit code (2 for bad input, with its message)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (DataValidationError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"raysys {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
