"""The two ways to a prepared dataset directory: generate one, or bring your own file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysys.data.anomalies import AnomalyEvent
from raysys.data.io import (SPLIT_FRACTIONS, HeaderlessFormat, MissingValues, read_numeric_table, read_table,
                            split_bounds, validate_table, write_dataset)
from raysys.data.profiles import get_profile
from raysys.data.synthetic import TIMESTAMP, generate_with_events
from raysys.layout import SPLITS


def event_records(frame: pd.DataFrame, events: list[AnomalyEvent],
                  fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> list[dict[str, Any]]:
    """The events as ``metadata.json`` lists them (docs/data.md#generated-data): type, sensors, first
    and last labelled timestamp and row, the split of the first row, and the labelled row ranges."""
    bounds = split_bounds(len(frame), fractions)
    stamps = frame[TIMESTAMP]
    records = []
    for event in events:
        first, last = event.rows[0][0], event.rows[-1][1] - 1
        records.append({"type": event.kind, "sensors": list(event.sensors),
                        "start": str(stamps.iloc[first]), "end": str(stamps.iloc[last]),
                        "start_row": first, "end_row": last,
                        "split": SPLITS[int(np.searchsorted(bounds, first, side="right"))],
                        "rows": [[a, b] for a, b in event.rows]})
    return records


def generate_dataset(out_dir: str | os.PathLike, profile: str = "water_treatment", rows: int = 20_000,
                     seed: int = 0, anomaly_rate: float = 0.05,
                     fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
                     overwrite: bool = False, difficulty: str = "easy") -> Path:
    """Generate a synthetic dataset for ``profile`` at ``difficulty`` and write it as a prepared dataset."""
    frame, events = generate_with_events(profile, rows, seed, anomaly_rate, difficulty=difficulty)
    prof = get_profile(profile)
    meta = {"source": "synthetic", "profile": profile, "seed": seed, "anomaly_rate": anomaly_rate,
            "difficulty": difficulty, "units": prof.units, "fractions": list(fractions),
            "events": event_records(frame, events, fractions)}
    return write_dataset(frame, prof.sensors, out_dir, meta, fractions, overwrite)


def prepare_dataset(input_path: str | os.PathLike, out_dir: str | os.PathLike, timestamp_col: str = "timestamp",
                    label_col: str | None = "is_anomaly",
                    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
                    overwrite: bool = False, missing: MissingValues = MissingValues(),
                    headerless: HeaderlessFormat | None = None) -> Path:
    """Validate a user's file and write it as a prepared dataset.

    The file is CSV or Parquet with a timestamp column, or with ``headerless`` a file of numbers
    only (no header, no timestamps, no labels; e.g. the Tennessee Eastman ``.dat`` files).
    ``missing`` bounds how much of each sensor column may be interpolated (past it, an error).
    """
    if headerless is None:
        frame = read_table(input_path)
    else:
        frame = read_numeric_table(input_path, headerless.transpose, headerless.sample_interval, headerless.columns)
        timestamp_col, label_col = TIMESTAMP, None
    table = validate_table(frame, str(input_path), timestamp_col, label_col, missing=missing)
    meta = {"source": str(input_path), "profile": "custom", "units": {s: "" for s in table.sensors},
            "interpolated": table.interpolated, "time_gaps": table.time_gaps, "fractions": list(fractions)}
    if headerless is not None:
        meta.update(sample_interval=headerless.sample_interval, transposed=headerless.transpose)
    return write_dataset(table.frame, table.sensors, out_dir, meta, fractions, overwrite)
