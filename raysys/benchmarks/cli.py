"""``raysys benchmark tep`` and ``raysys benchmark attribution``: thin layers over :mod:`raysys.benchmarks.tep`
and :mod:`raysys.benchmarks.attribution`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

#: The summary ``raysys --help`` shows (``raysys.cli.COMMANDS`` repeats it).
SUMMARY = "run a benchmark: Tennessee Eastman (public data, standard protocol) or sensor attribution (generated data)"


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def run_tep(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from raysys.benchmarks import tep

    detectors = tep.check_detectors(args.detectors or list(tep.DEFAULT_DETECTORS))
    data = tep.load_tep(args.data)  # bad data fails here, before anything is fitted
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("TEP benchmark", total=len(detectors) * args.seeds)
        started = [False]

        def step(description: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, description=f"fitting {description}")

        result = tep.run_benchmark(data, detectors, args.target_far, args.seeds, on_step=step)
        progress.advance(task)
    console.print(tep.results_table(result))
    if result["recommended"]:
        console.print(f"recommended: {result['recommended']} ({tep.DETECTORS[result['recommended']][0]})")
    _write_outputs(args, console, result, tep.log_to_mlflow,
                   {"data": str(args.data), "detectors": ",".join(detectors), "target_far": args.target_far,
                    "seeds": args.seeds})
    return 0


def run_attribution(args: argparse.Namespace) -> int:
    import tempfile

    from rich.console import Console

    from raysys.benchmarks import attribution

    console = Console()
    with tempfile.TemporaryDirectory() as tmp, console.status("attribution benchmark") as status:
        result = attribution.run_attribution(args.data, Path(args.out or tmp) / "ensemble", args.families,
                                             seed=args.seed, on_step=lambda what: status.update(what))
    console.print(attribution.results_table(result))
    _write_outputs(args, console, result, attribution.log_to_mlflow,
                   {"data": str(args.data), "families": ",".join(args.families), "seed": args.seed})
    return 0


def _write_outputs(args: argparse.Namespace, console: Any, result: dict[str, Any],
                   log_to_mlflow: Callable[..., str], params: dict[str, Any]) -> None:
    """The ``--json`` file and, unless ``--no-mlflow``, the MLflow run of a benchmark's ``result``."""
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.json}")
    if not args.no_mlflow:
        console.print(f"MLflow run {log_to_mlflow(result, args.mlflow_uri, args.experiment, params=params)}")


def _outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    parser.add_argument("--experiment", default="raysys", help="MLflow experiment")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("benchmark", help=SUMMARY, description=SUMMARY)
    which = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    t = which.add_parser("tep", help="Tennessee Eastman process: fit on d00.dat, test on d01_te..d21_te and d00_te",
                         description="Fit every detector on d00.dat only; thresholds from d00.dat alone (out-of-fold "
                                     "scores, tail model); report detection rate per fault, false alarms and delay, "
                                     "mean and spread across seeds.")
    t.add_argument("--data", required=True,
                   help="directory with d00.dat, d00_te.dat, d01_te.dat ... d21_te.dat "
                        "(github.com/camaramm/tennessee-eastman-profBraatz)")
    t.add_argument("--detectors", type=_names,
                   help="comma-separated names from docs/detection.md#detectors, e.g. pca_t2, pca_spe, dpca_spe, "
                        "iforest, ae, lstm, cva (the recommended one) (default: all)")
    t.add_argument("--target-far", type=float, default=0.01, help="false-alarm rate asked for (default 0.01)")
    t.add_argument("--seeds", type=int, default=3, help="runs per detector, seeds 0..N-1 (default 3)")
    _outputs(t)
    t.set_defaults(func=run_tep)

    from raysys.benchmarks.attribution import DEFAULT_FAMILIES  # torch-free: --help stays fast

    a = which.add_parser("attribution", help="do alarms name the sensors their event touched? (generated data)",
                         description="Fit the families on a generated dataset's training split, build the ensemble, "
                                     "and measure on its test split how often the top sensor of each detected "
                                     "event's peak row is one the event touched (top-1, top-3), per event type.")
    a.add_argument("--data", required=True, help="a dataset written by `raysys generate` (any --difficulty)")
    a.add_argument("--families", type=_names, default=list(DEFAULT_FAMILIES),
                   help=f"comma-separated deep families to fit (default: {','.join(DEFAULT_FAMILIES)})")
    a.add_argument("--seed", type=int, default=0, help="random state of every model (default 0)")
    a.add_argument("--out", help="keep the ensemble in OUT/ensemble (default: a temporary directory)")
    _outputs(a)
    a.set_defaults(func=run_attribution)
