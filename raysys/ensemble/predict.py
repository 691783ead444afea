"""Offline batch inference: score a CSV or Parquet file with an ensemble, write scores, flags and alarm events."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from raysys.data.io import read_table, validate_table
from raysys.data.synthetic import TIMESTAMP
from raysys.ensemble.alarms import alarm_events
from raysys.ensemble.runtime import load_runtime

OUTPUT_SUFFIXES = (".parquet", ".csv")


def events_path(output_path: str | os.PathLike) -> Path:
    """Where :func:`predict_file` writes the alarm events beside ``output_path``: ``<stem>_events<suffix>``."""
    output = Path(output_path)
    return output.with_name(f"{output.stem}_events{output.suffix}")


def _write(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix.lower() == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def predict_file(model: str | os.PathLike, input_path: str | os.PathLike, output_path: str | os.PathLike,
                 tracking_uri: str | None = None, intra_op_threads: int | None = None,
                 explain: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every row of ``input_path`` (one series, in time order) and write the result to ``output_path``
    (.parquet or .csv), and its alarm events to :func:`events_path` (same format); return both.

    Args:
        model: Ensemble directory, or MLflow URI such as ``models:/raysys-detector@champion``.
        input_path: CSV or Parquet file with the model's sensor columns (others are ignored). With a
            ``timestamp`` column, rows must be in time order and missing values are interpolated.
        output_path: Gets ``timestamp`` (when the input has it), ``score``, ``is_anomaly``, ``alarm``,
            ``reason``, ``reason_sensors`` and ``score_<member>`` per row. The events file gets one row per
            alarm event: ``start``, ``end`` (timestamps, or row numbers without them), ``rows``,
            ``peak_score``, ``peak`` and, with ``explain``, the peak row's ``top_sensors``.
        tracking_uri: MLflow tracking URI for URIs (default: ``$MLFLOW_TRACKING_URI`` or ./mlruns).
        intra_op_threads: onnxruntime threads (None: onnxruntime's default).
        explain: Also write ``contribution_<sensor>`` per sensor (a row's sum to its score) and
            ``top_sensors`` (docs/attribution.md).
    """
    output = Path(output_path)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"{output}: output must end in one of {OUTPUT_SUFFIXES}, got {output.suffix!r}")
    runtime = load_runtime(model, tracking_uri, intra_op_threads)
    frame = read_table(input_path)
    if frame.empty:
        raise ValueError(f"{input_path}: no rows to score")
    if TIMESTAMP in frame.columns:
        keep = [c for c in (TIMESTAMP, *runtime.sensors) if c in frame.columns]
        frame = validate_table(frame[keep], str(input_path), label_col=None, min_rows=1).frame
    scored = runtime.score_frame(frame, explain)
    index = frame[TIMESTAMP].to_numpy() if TIMESTAMP in frame.columns else None
    if index is not None:
        scored.insert(0, TIMESTAMP, index)
    top = scored["top_sensors"].str.split(",").tolist() if explain else None
    events = pd.DataFrame(alarm_events(scored["alarm"].to_numpy(), scored["score"].to_numpy(), index, top),
                          columns=["start", "end", "rows", "peak_score", "peak", *(["top_sensors"] if explain else [])])
    if explain:
        events["top_sensors"] = events["top_sensors"].map(",".join)
    output.parent.mkdir(parents=True, exist_ok=True)
    _write(scored, output)
    _write(events, events_path(output))
    return scored, events
