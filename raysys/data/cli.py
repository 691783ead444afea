"""``raysys generate`` and ``raysys prepare``."""

from __future__ import annotations

import argparse
import json

from raysys.data.anomalies import ALL_TYPES, DIFFICULTIES
from raysys.data.io import SPLIT_FRACTIONS, HeaderlessFormat, MissingValues
from raysys.data.profiles import PROFILES
from raysys.layout import DATASET_METADATA


def _fractions(text: str) -> tuple[float, float, float]:
    parts = tuple(float(p) for p in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated fractions like 0.7,0.15,0.15, got {text!r}")
    return parts  # type: ignore[return-value]


def _summary(path) -> int:
    meta = json.loads((path / DATASET_METADATA).read_text())
    print(f"wrote {path}: {meta['rows']} rows, sensors {meta['sensors']}")
    print("anomalous rows by type: " + (", ".join(f"{k}={v}" for k, v in meta["anomaly_counts"].items()) or "none"))
    return 0


def run_generate(args: argparse.Namespace) -> int:
    if args.assets:
        from raysys.data.fleet import generate_fleet

        path = generate_fleet(args.out, args.assets, args.profile, args.rows, args.seed, args.anomaly_rate,
                              args.splits, args.overwrite, args.difficulty)
        meta = json.loads((path / DATASET_METADATA).read_text())
        print(f"wrote {path}: {len(meta['assets'])} assets x {args.rows} rows, sensors {meta['sensors']}, "
              "Hive-partitioned by asset_id")
        return 0
    from raysys.data.prepare import generate_dataset

    return _summary(generate_dataset(args.out, args.profile, args.rows, args.seed, args.anomaly_rate,
                                     args.splits, args.overwrite, args.difficulty))


def run_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raysys.data.prepare import prepare_dataset

    missing = MissingValues(args.max_missing_fraction, args.max_missing_run, args.inf_as_missing)
    if args.asset_column or Path(args.input).is_dir():
        from raysys.data.fleet import prepare_fleet

        if args.no_header:
            raise ValueError("--no-header files carry no asset column: prepare each asset's file alone")
        path = prepare_fleet(args.input, args.out, args.asset_column or "asset_id", args.timestamp_column,
                             args.label_column or None, args.splits, args.overwrite, missing)
        meta = json.loads((path / DATASET_METADATA).read_text())
        print(f"wrote {path}: {len(meta['assets'])} assets, sensors {meta['sensors']}, Hive-partitioned by asset_id")
        return 0
    if (args.transpose or args.columns) and not args.no_header:
        raise ValueError("--transpose and --columns describe a headerless numeric file: add --no-header")
    headerless = (HeaderlessFormat(args.transpose, args.sample_interval,
                                   [c.strip() for c in args.columns.split(",")] if args.columns else None)
                  if args.no_header else None)
    return _summary(prepare_dataset(args.input, args.out, args.timestamp_column, args.label_column or None,
                                    args.splits, args.overwrite, missing, headerless))


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output dataset directory")
    common.add_argument("--splits", type=_fractions, default=SPLIT_FRACTIONS,
                        help="train,val,test fractions in time order (default 0.7,0.15,0.15)")
    common.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    gen = subparsers.add_parser("generate", parents=[common], help="generate synthetic labelled sensor data",
                                description=f"Anomaly types: {', '.join(ALL_TYPES)}; which ones, and how large, "
                                            "depends on --difficulty (docs/data.md#generated-data).")
    gen.add_argument("--profile", choices=sorted(PROFILES), default="water_treatment")
    gen.add_argument("--rows", type=int, default=20_000, help="rows (per asset with --assets; default 20000)")
    gen.add_argument("--assets", type=int, metavar="N",
                     help="a fleet of N machines, each with its own operating point, noise, load phase and events, "
                          "written Hive-partitioned by asset_id (docs/data.md#fleet-datasets)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--anomaly-rate", type=float, default=0.05, help="share of anomalous rows (default 0.05)")
    gen.add_argument("--difficulty", choices=DIFFICULTIES, default="easy",
                     help="easy: the six classic types, large (default); medium: smaller, subtle types mixed in; "
                          "hard: mostly subtle types, magnitudes near the noise")
    gen.set_defaults(func=run_generate)

    prep = subparsers.add_parser("prepare", parents=[common], help="validate your CSV/Parquet file and split it")
    prep.add_argument("--input", required=True,
                      help="CSV or Parquet file with a timestamp column; for a fleet, a file with an asset column "
                           "(--asset-column) or a directory of files, one per asset (named by the asset id)")
    prep.add_argument("--asset-column", metavar="NAME",
                      help="the file holds many assets, named in column NAME: write a fleet dataset "
                           "(docs/data.md#fleet-datasets)")
    prep.add_argument("--timestamp-column", default="timestamp")
    prep.add_argument("--label-column", default="is_anomaly", help="0/1 label column if present ('' for none)")
    defaults = MissingValues()
    prep.add_argument("--max-missing-fraction", type=float, default=defaults.max_fraction,
                      help="largest share of a column that may be missing and interpolated "
                           f"(default {defaults.max_fraction}); more is an error")
    prep.add_argument("--max-missing-run", type=int, default=defaults.max_run,
                      help=f"longest run of missing values that may be interpolated (default {defaults.max_run})")
    prep.add_argument("--inf-as-missing", action="store_true",
                      help="treat infinite values as missing (interpolated) instead of an error")
    prep.add_argument("--no-header", action="store_true",
                      help="the input is numbers only, whitespace- or comma-separated, no header and no timestamps "
                           "(e.g. the Tennessee Eastman .dat files); rows are timestamped every --sample-interval")
    prep.add_argument("--transpose", action="store_true",
                      help="with --no-header: the file holds one sensor per line (samples in columns)")
    prep.add_argument("--sample-interval", default="3min",
                      help="with --no-header: time between samples, e.g. 3min, 1s (default 3min)")
    prep.add_argument("--columns", help="with --no-header: comma-separated sensor names (default x1..xN)")
    prep.set_defaults(func=run_prepare)
