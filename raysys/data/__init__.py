"""Sensor data: synthetic generation, loading and validation, splits, scalers, windows."""

from raysys.data.anomalies import (
    ALL_TYPES,
    ANOMALY_SENSORS,
    ANOMALY_TYPES,
    DIFFICULTIES,
    NORMAL,
    SUBTLE_TYPES,
    AnomalyEvent,
    inject_anomalies,
    inject_events,
)
from raysys.data.io import (
    ANOMALY_TYPE,
    LABEL,
    RESERVED,
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
from raysys.data.fleet import FleetDataset, generate_fleet, load_fleet
from raysys.data.prepare import generate_dataset, prepare_dataset
from raysys.data.preprocessing import fit_scaler, scaler_affine, sliding_windows, window_scores_to_rows
from raysys.data.profiles import PROFILES, get_profile
from raysys.data.synthetic import TIMESTAMP, generate, generate_with_events

__all__ = [
    "ALL_TYPES", "ANOMALY_SENSORS", "ANOMALY_TYPE", "ANOMALY_TYPES", "DIFFICULTIES", "LABEL", "NORMAL", "PROFILES",
    "RESERVED", "SPLITS", "SUBTLE_TYPES", "TIMESTAMP",
    "AnomalyEvent", "DataValidationError", "FleetDataset", "generate_fleet", "load_fleet", "HeaderlessFormat", "MissingValues", "SensorDataset", "SensorTable", "fit_scaler", "generate", "generate_dataset", "generate_with_events",
    "get_profile", "inject_anomalies", "inject_events", "load_dataset", "load_table", "prepare_dataset", "read_numeric_table", "scaler_affine",
    "sliding_windows", "split_by_time", "window_scores_to_rows", "write_dataset",
]
