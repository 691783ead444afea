"""The ``raysys`` command line: one subcommand per stage, each a thin layer over a function."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from raysys import __version__
from raysys.cluster import VERBOSE_ENV
from raysys.interrupts import EXIT_INTERRUPTED

#: Every command, in the order ``raysys --help`` lists them: name -> (module whose ``add_parsers`` adds it,
#: one-line summary). The summaries live here, not in the stage modules, so that listing the commands
#: imports no stage (and so none of Ray, torch, MLflow, pandas): a stage's module is imported, and its
#: ``add_parsers`` called, only when its command is used.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("raysys.data.cli", "generate synthetic labelled sensor data"),
    "prepare": ("raysys.data.cli", "validate your CSV/Parquet file and split it"),
    "train": ("raysys.train.cli", "train a detector with Ray Train, tracked in MLflow"),
    "evaluate": ("raysys.train.cli", "score a saved detector on a dataset's test split"),
    "tune": ("raysys.tune.cli",
             "hyperparameter sweep over ae / vae / lstm / conv with Ray Tune (each trial a Ray Train run)"),
    "ensemble": ("raysys.ensemble.cli",
                 "export the best detectors to an ONNX ensemble, gate it and register it in MLflow"),
    "predict": ("raysys.ensemble.cli", "score a CSV/Parquet file with an ensemble (batch inference)"),
    "recalibrate": ("raysys.ensemble.cli",
                    "move a registered ensemble's threshold to new normal data, without retraining"),
    "serve": ("raysys.serve.cli", "serve the ensemble over HTTP with Ray Serve (autoscaling, dynamic batching)"),
    "fleet": ("raysys.fleet.cli", "train, register and promote one detector set per asset of a fleet (Ray tasks)"),
    "pipeline": ("raysys.pipeline.cli", "end to end: data, sweep, ensemble, gates, registry, report"),
    "submit": ("raysys.jobs.cli", "submit a job to a Ray cluster and follow its logs"),
    "benchmark": ("raysys.benchmarks.cli",
                  "run a benchmark: Tennessee Eastman (public data, standard protocol) or sensor attribution (generated data)"),
}


class _LazySubcommands(argparse._SubParsersAction):
    """The ``COMMAND`` argument: lists :data:`COMMANDS` and lets a stage add its parser on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, (_, summary) in COMMANDS.items():
            self._choices_actions.append(self._ChoicesPseudoAction(name, (), summary))
            self._name_parser_map[name] = None  # a known choice; its parser comes from load()

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if self._name_parser_map.get(name, ...) is None:  # listed already, with its summary
            del self._name_parser_map[name]
            kwargs.pop("help", None)
        return super().add_parser(name, **kwargs)

    def load(self, name: str) -> argparse.ArgumentParser:
        """The parser of command ``name``, importing its stage module the first time."""
        if self._name_parser_map[name] is None:
            importlib.import_module(COMMANDS[name][0]).add_parsers(self)
        return self._name_parser_map[name]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: list[str],
                 option_string: str | None = None) -> None:
        self.load(values[0])
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    """The ``raysys`` parser; a command's own parser is built (its stage imported) when it is parsed."""
    parser = argparse.ArgumentParser(prog="raysys", description=__doc__)
    parser.add_argument("--version", action="version", version=f"raysys {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and Ray's own logs on the console (else in Ray's session log files)")
    parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=_LazySubcommands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``raysys`` with ``argv``; returns the exit code (2 for bad input, with its message)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by raysys.cluster.init_ray
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:  # DataValidationError is a ValueError
        print(f"raysys {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (raysys.interrupts): the run is marked interrupted
        print(f"raysys {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
