"""Sensor data: synthetic generation, loading and validation, splits, scalers, windows."""

from raysys.data.anomalies import ANOMALY_TYPES, NORMAL, inject_anomalies
from raysys.data.io import (
    ANOMALY_TYPE,
    LABEL,
    SPLITS,
    DataValidationError,
    HeaderlessFormat,
    MissingValues,
    SensorDataset,
    SensorTable,
    load_dataset,
    load_table,
    read_numeric_table,
    split_by_time,
    write_dataset,
)
from raysys.data.prepare import generate_dataset, prepare_dataset
from raysys.data.preprocessing import fit_scaler, scaler_affine, sliding_windows, window_scores_to_rows
from raysys.data.profiles import PROFILES, get_profile
from raysys.data.synthetic import TIMESTAMP, generate

__all__ = [
    "ANOMALY_TYPE", "ANOMALY_TYPES", "LABEL", "NORMAL", "PROFILES", "SPLITS", "TIMESTAMP",
    "DataValidationError", "HeaderlessFormat", "MissingValues", "SensorDataset", "SensorTable", "fit_scaler", "generate", "generate_dataset",
    "get_profile", "inject_anomalies", "load_dataset", "load_table", "prepare_dataset", "read_numeric_table", "scaler_affine",
    "sliding_windows", "split_by_time", "window_scores_to_rows", "write_dataset",
]
