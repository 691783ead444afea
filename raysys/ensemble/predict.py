"""Offline batch inference: score a CSV or Parquet file with an ensemble, write scores and flags."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from raysys.data.io import read_table, validate_table
from raysys.data.synthetic import TIMESTAMP
from raysys.ensemble.runtime import load_runtime

OUTPUT_SUFFIXES = (".parquet", ".csv")


def predict_file(model: str | os.PathLike, input_path: str | os.PathLike, output_path: str | os.PathLike,
                 tracking_uri: str | None = None, intra_op_threads: int | None = None,
                 explain: bool = False) -> pd.DataFrame:
    """Score every row of ``input_path`` and write the result to ``output_path`` (.parquet or .csv).

    Args:
        model: Ensemble directory, or MLflow URI such as ``models:/raysys-detector@champion``.
        input_path: CSV or Parquet file with the model's sensor columns (others are ignored). With a
            ``timestamp`` column, rows must be in time order and missing values are interpolated.
        output_path: Gets ``timestamp`` (when the input has it), ``score``, ``is_anomaly``, ``reason``,
            ``reason_sensors`` and ``score_<member>`` per row.
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
    if TIMESTAMP in frame.columns:
        scored.insert(0, TIMESTAMP, frame[TIMESTAMP].to_numpy())
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".parquet":
        scored.to_parquet(output, index=False)
    else:
        scored.to_csv(output, index=False)
    return scored
