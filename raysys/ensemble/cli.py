"""``raysys ensemble`` (build, gate, register), ``raysys predict`` (offline batch scoring) and
``raysys recalibrate`` (a new threshold on new normal data, registered as a new version)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from raysys.ensemble.gates import DEFAULT_GATES
from raysys.ensemble.registry import DEFAULT_MODEL_NAME
from raysys.evaluation import THRESHOLD_METHODS

#: Exit code of ``raysys ensemble`` when a quality gate failed (nothing registered).
GATE_FAILED = 1


def run_ensemble_command(args: argparse.Namespace) -> int:
    from raysys.ensemble.gates import parse_gates
    from raysys.ensemble.workflow import run_ensemble  # torch is imported only when building
    from raysys.evaluation import metrics_table

    result = run_ensemble(args.data, sweep=args.sweep, run_ids=args.run_id, detector_dirs=args.detector,
                          out_dir=args.out, name=args.name, gates=parse_gates(args.gate),
                          threshold_method=args.threshold_method, target_far=args.target_far,
                          percentile=args.percentile, iforest=not args.no_iforest, pca=not args.no_pca,
                          cva=args.cva,
                          smoothing=args.smoothing, alarm=args.alarm,
                          register=not args.no_register,
                          tracking_uri=args.mlflow_uri, experiment=args.experiment, seed=args.seed)
    console = Console()
    metrics = result.build.ensemble_metrics
    console.print(metrics_table(metrics, "Ensemble test metrics"))
    console.print(f"ensemble test: {result.summary()}", markup=False)
    console.print(f"latency (one row): p50 {result.build.latency_ms['p50']:.2f} ms, "
                  f"p95 {result.build.latency_ms['p95']:.2f} ms")
    console.print(f"ensemble: {result.ensemble_dir}\nevaluation: {result.evaluation_dir}")
    console.print(result.gates.summary(), markup=False)
    if result.registration is not None:
        console.print(f"MLflow run {result.registration.run_id}")
    if not result.gates.passed:
        console.print("nothing registered", style="bold red")
        return GATE_FAILED
    if result.version is not None:
        console.print(f"registered {args.name} version {result.version} as @champion "
                      f"(models:/{args.name}@champion)")
    return 0


def _alarm_logic(text: str):
    from raysys.ensemble.alarms import AlarmLogic

    try:
        return AlarmLogic.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_predict_command(args: argparse.Namespace) -> int:
    from raysys.ensemble.predict import events_path, predict_file

    model = args.model
    if args.asset:
        from raysys.fleet.source import asset_model

        model = asset_model(args.model, args.asset, args.mlflow_uri)
    scored, events = predict_file(model, args.input, args.output, args.mlflow_uri, args.threads, args.explain)
    print(f"scored {len(scored)} rows, {int(scored['is_anomaly'].sum())} flagged as anomalies, {len(events)} alarm "
          f"events -> {args.output}, {events_path(args.output)}")
    return 0


def run_recalibrate_command(args: argparse.Namespace) -> int:
    from raysys.ensemble.recalibrate import recalibrate

    result = recalibrate(args.model, args.data, args.input, target_far=args.target_far, name=args.name,
                         tracking_uri=args.mlflow_uri, experiment=args.experiment, force=args.force)
    print(result.summary())
    print(f"registered {result.name} version {result.version} as @champion (models:/{result.name}@champion); "
          f"the version it left keeps @previous. MLflow run {result.run_id}")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Add ``ensemble``, ``predict`` and ``recalibrate`` to ``subparsers`` (from ``add_subparsers()``)."""
    ens = subparsers.add_parser(
        "ensemble", help="export the best detectors to an ONNX ensemble, gate it and register it in MLflow",
        description="Export members to ONNX, add an Isolation Forest and a PCA detector (T2 and SPE), calibrate "
                    "weights and threshold on the validation split, check the quality gates on the test split and, "
                    "if all pass, register the ensemble in MLflow and move the alias 'champion' to it. Exits 1 "
                    "when a gate fails.")
    ens.add_argument("--data", required=True, help="prepared dataset directory the members were trained on")
    source = ens.add_argument_group("members (at least one, unless --cva)")
    source.add_argument("--sweep", metavar="SWEEP_DIR", help="sweep directory with best.json")
    source.add_argument("--run-id", action="append", default=[], metavar="ID",
                        help="MLflow training run whose 'detector' artifact is a member (repeatable)")
    source.add_argument("--detector", action="append", default=[], metavar="DIR",
                        help="saved detector directory (repeatable)")
    ens.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name (default %(default)s)")
    ens.add_argument("--threshold-method", choices=THRESHOLD_METHODS, default=None,
                     help="threshold on validation: best F1, a false-alarm rate, or a percentile of normal scores "
                          "(default: best_f1 with labels, far without)")
    ens.add_argument("--target-far", type=float, default=0.01, help="false-alarm rate for --threshold-method far")
    ens.add_argument("--percentile", type=float, default=99.0, help="for --threshold-method percentile")
    ens.add_argument("--gate", action="append", default=[], metavar="NAME=LIMIT",
                     help="override a quality gate, or NAME=off to drop it (repeatable); defaults: "
                          + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_GATES.items()))
    ens.add_argument("--smoothing", type=int, default=1, metavar="ROWS",
                     help="rows in the trailing mean of the ensemble score, calibrated and served alike (default 1: none)")
    ens.add_argument("--alarm", type=_alarm_logic, metavar="k=INT,n=INT,off_delay=INT,clear_level=X",
                     help="how flagged rows become alarm events (docs/ensemble.md#alarm-events; default "
                          "k=1,n=1,off_delay=0: an event per run of flagged rows)")
    ens.add_argument("--no-iforest", action="store_true", help="leave the Isolation Forest member out")
    ens.add_argument("--no-pca", action="store_true", help="leave the PCA members (pca_t2, pca_spe) out")
    ens.add_argument("--cva", action="store_true",
                     help="add the CVA member (cva): canonical variate analysis, for processes under feedback control "
                          "(docs/detection.md)")
    ens.add_argument("--no-register", action="store_true", help="build and check the gates only")
    ens.add_argument("--out", help="work directory for ensemble/ and evaluation/ (default runs/ensemble/TIME)")
    ens.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    ens.add_argument("--experiment", default="raysys", help="MLflow experiment")
    ens.add_argument("--seed", type=int, default=0, help="Isolation Forest random state")
    ens.set_defaults(func=run_ensemble_command)

    pred = subparsers.add_parser("predict", help="score a CSV/Parquet file with an ensemble (batch inference)")
    pred.add_argument("--model", required=True, metavar="URI_OR_DIR",
                      help="ensemble directory or MLflow URI, e.g. models:/raysys-detector@champion; with --asset, "
                           "a fleet: its directory or models:/raysys-fleet@champion")
    pred.add_argument("--asset", metavar="ID", help="score with this asset's ensemble from the fleet --model")
    pred.add_argument("--input", required=True, help="CSV or Parquet file with the sensor columns, in time order")
    pred.add_argument("--output", required=True, help="output file (.parquet or .csv)")
    pred.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    pred.add_argument("--threads", type=int, help="onnxruntime threads (default: onnxruntime's choice)")
    pred.add_argument("--explain", action="store_true",
                      help="add each sensor's part of the score (contribution_<sensor>) and top_sensors")
    pred.set_defaults(func=run_predict_command)

    from raysys.evaluation.calibration import GATE_FACTOR, HOLDOUT_FRACTION

    rec = subparsers.add_parser(
        "recalibrate", help="move a registered ensemble's threshold to new normal data, without retraining",
        description="Score new normal data with a registered ensemble, set the threshold for a false-alarm rate on "
                    f"it, and register the result as a new version (ONNX files unchanged) that becomes 'champion'. "
                    f"The threshold comes from the first {1 - HOLDOUT_FRACTION:.0%} of the rows in time order; the "
                    f"false-alarm rate is measured on the last {HOLDOUT_FRACTION:.0%}, and above {GATE_FACTOR:g} x "
                    "--target-far nothing is registered (exit 2) unless --force.")
    rec.add_argument("--model", required=True, metavar="URI",
                     help="registered model, e.g. models:/raysys-detector@champion or models:/raysys-detector/3")
    data = rec.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", metavar="DIR", help="prepared dataset directory: its rows not labelled anomalous")
    data.add_argument("--input", metavar="FILE", help="CSV or Parquet file of normal operation, in time order")
    rec.add_argument("--target-far", type=float, default=0.01, help="false-alarm rate asked for (default %(default)s)")
    rec.add_argument("--name", help="registered model name of the new version (default: the source model's)")
    rec.add_argument("--force", action="store_true",
                     help=f"register even when the held-out false-alarm rate exceeds {GATE_FACTOR:g} x --target-far")
    rec.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    rec.add_argument("--experiment", default="raysys", help="MLflow experiment")
    rec.set_defaults(func=run_recalibrate_command)
