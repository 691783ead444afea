"""Reading and validating users' files, interpolating gaps, and writing datasets atomically."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raysys.data import (
    DataValidationError,
    MissingValues,
    generate,
    generate_dataset,
    get_profile,
    load_dataset,
    load_table,
    prepare_dataset,
    write_dataset,
)

SENSORS = get_profile("water_treatment").sensors


def sensor_frame(rows: int = 300, seed: int = 3) -> pd.DataFrame:
    """A valid raw table as a user would bring it: timestamp, sensors, a 0/1 label."""
    return generate("water_treatment", rows=max(rows, 500), seed=seed).iloc[:rows].drop(
        columns=["anomaly_type", "anomaly_sensors"])


def _missing_timestamp(df):
    return df.rename(columns={"timestamp": "time"})


def _non_numeric(df):
    df["pressure"] = df["pressure"].astype(str)  # numbers as text, as some exports write them
    df.loc[17, "pressure"] = "fault"
    return df


def _all_nan(df):
    df["level"] = np.nan
    return df


def _unsorted(df):
    return df.iloc[[*range(0, 40), 41, 40, *range(42, len(df))]].reset_index(drop=True)


def _duplicated(df):
    df.loc[30, "timestamp"] = df.loc[29, "timestamp"]
    return df


def _too_few_rows(df):
    return df.iloc[:50]


def _bad_label(df):
    df.loc[5, "is_anomaly"] = 7
    return df


# (case, how to spoil a valid table, fragments the error must contain besides the file name)
BAD_TABLES = [
    ("missing_timestamp", _missing_timestamp, ["missing timestamp column 'timestamp'", "'time'"]),
    ("non_numeric", _non_numeric, ["column 'pressure' must be numeric", "'fault'", "row 17"]),
    ("all_nan", _all_nan, ["column 'level' is all NaN"]),
    ("unsorted", _unsorted, ["column 'timestamp' is not sorted ascending", "row 41"]),
    ("duplicated", _duplicated, ["column 'timestamp' has 1 duplicated timestamps"]),
    ("too_few_rows", _too_few_rows, ["too few rows: expected at least 100, got 50"]),
    ("bad_label", _bad_label, ["label column 'is_anomaly' must hold only 0 and 1"]),
]


def write_table(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(("case", "spoil", "fragments"), BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_load_table_names_file_and_column(tmp_path, suffix, case, spoil, fragments):
    path = write_table(spoil(sensor_frame()), tmp_path / f"{case}{suffix}")
    with pytest.raises(DataValidationError) as info:
        load_table(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("garbage.parquet", b"this is not parquet", "cannot be read as parquet"),
    ("empty.csv", b"", "cannot be read as csv"),
    ("readings.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
    ("missing.csv", None, "file not found"),
])
def test_load_table_rejects_unreadable_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataValidationError, match=fragment) as info:
        load_table(path)
    assert str(info.value).startswith(f"{path}: ")


def test_gaps_are_interpolated_and_reported(tmp_path, caplog):
    df = sensor_frame()
    expected_level = df["level"].copy()
    df.loc[10:12, "level"] = np.nan
    df.loc[0, "flow_rate"] = np.nan
    df.loc[50, "quality"] = np.inf
    path = write_table(df, tmp_path / "gaps.csv")
    with pytest.raises(DataValidationError, match="column 'quality' has 1 infinite values.*--inf-as-missing"):
        load_table(path)
    with caplog.at_level(logging.WARNING, logger="raysys.data.io"):
        table = load_table(path, missing=MissingValues(inf_as_missing=True))
    assert table.interpolated == {"level": 3, "flow_rate": 1, "quality": 1}
    assert not table.frame[SENSORS].isna().any().any()
    # linear between the neighbours, and the leading gap takes the first value
    np.testing.assert_allclose(table.frame.loc[10:12, "level"],
                               np.linspace(expected_level[9], expected_level[13], 5)[1:4], rtol=1e-9)
    assert table.frame.loc[0, "flow_rate"] == table.frame.loc[1, "flow_rate"]
    assert any(str(path) in r.getMessage() and "'level': 3" in r.getMessage() for r in caplog.records)
    # and what was filled is recorded with the prepared dataset
    out = prepare_dataset(path, tmp_path / "prepared", missing=MissingValues(inf_as_missing=True))
    assert json.loads((out / "metadata.json").read_text())["interpolated"] == {"level": 3, "flow_rate": 1,
                                                                              "quality": 1}


def _mostly_infinite(df):
    df.loc[: len(df) // 2, "flow_rate"] = np.inf
    return df


def _long_gap(df):
    df.loc[100:140, "level"] = np.nan
    return df


def _many_missing(df):
    df.loc[::10, "pressure"] = np.nan
    return df


def _numeric_anomaly_type(df):
    df["anomaly_type"] = 3.0
    return df.drop(columns="is_anomaly")


@pytest.mark.parametrize(("spoil", "fragments"), [
    (_mostly_infinite, ["column 'flow_rate' has 151 infinite values"]),
    (_long_gap, ["column 'level' has a run of 41 consecutive missing values, longer than the 30", "--max-missing-run"]),
    (_many_missing, ["column 'pressure' has 30 of 300 values missing (10.0%), more than the 5.0%",
                     "--max-missing-fraction"]),
    (_numeric_anomaly_type, ["column 'anomaly_type' is reserved for anomaly type names (text), got float64"]),
])
def test_data_errors_instead_of_silent_repairs(tmp_path, spoil, fragments):
    path = write_table(spoil(sensor_frame()), tmp_path / "spoiled.parquet")
    with pytest.raises(DataValidationError) as info:
        prepare_dataset(path, tmp_path / "out")
    assert str(info.value).startswith(f"{path}: ")
    assert all(f in str(info.value) for f in fragments), str(info.value)
    assert not (tmp_path / "out").exists()


def test_interpolation_bounds_are_configurable(tmp_path):
    path = write_table(_many_missing(_long_gap(sensor_frame())), tmp_path / "gappy.parquet")
    table = load_table(path, missing=MissingValues(max_fraction=0.2, max_run=50))
    assert table.interpolated == {"pressure": 30, "level": 41}


@pytest.mark.parametrize(("content", "fragment"), [
    ("{sensors: [1]}", "metadata.json: not valid JSON"),
    ('{"profile": "x"}', "metadata.json: missing key 'sensors'"),
    ('{"sensors": "temperature"}', "metadata.json: 'sensors' must be a non-empty list"),
])
def test_bad_metadata_names_the_file_and_the_key(tmp_path, content, fragment):
    out = generate_dataset(tmp_path / "ds", rows=600)
    (out / "metadata.json").write_text(content)
    with pytest.raises(DataValidationError, match=fragment) as info:
        load_dataset(out)
    assert str(out / "metadata.json") in str(info.value)


def test_time_gaps_are_counted(tmp_path):
    df = sensor_frame().drop(index=[100, 101, 102, 200]).reset_index(drop=True)
    table = load_table(write_table(df, tmp_path / "holes.parquet"))
    assert table.time_gaps == 2


def test_prepare_dataset_round_trip_without_labels(tmp_path):
    df = sensor_frame(400).drop(columns="is_anomaly").rename(columns={"timestamp": "ts"})
    out = prepare_dataset(write_table(df, tmp_path / "plant.csv"), tmp_path / "plant", timestamp_col="ts",
                          label_col=None)
    ds = load_dataset(out)
    assert ds.sensors == SENSORS
    assert (len(ds.train), len(ds.val), len(ds.test)) == (280, 60, 60)
    np.testing.assert_allclose(np.concatenate([ds.features(n) for n in ("train", "val", "test")]),
                               df[SENSORS].to_numpy(dtype=np.float32))
    with pytest.raises(DataValidationError, match="no 'is_anomaly' column"):
        ds.labels("test")


@pytest.mark.parametrize("column", ["anomaly_type", "anomaly_sensors"])
def test_reserved_columns_must_be_text(tmp_path, column):
    df = sensor_frame()
    df[column] = 1.5  # a sensor that happens to have a reserved name
    path = write_table(df, tmp_path / "plant.parquet")
    with pytest.raises(DataValidationError, match=f"{path}: column '{column}' is reserved for .*(text).*float64.*"
                                                  "rename the column if it is a sensor"):
        load_table(path)


# (an all-empty anomaly_sensors column, as on normal data, reads back from CSV as all-NaN floats)
@pytest.mark.parametrize(("column", "value"), [("anomaly_type", "spike"), ("anomaly_sensors", "")])
def test_reserved_columns_without_labels_are_ignored_with_a_warning(tmp_path, caplog, column, value):
    df = sensor_frame().drop(columns="is_anomaly")
    df[column] = value
    path = write_table(df, tmp_path / "plant.csv")
    with caplog.at_level(logging.WARNING, logger="raysys.data.io"):
        table = load_table(path)
    assert table.sensors == SENSORS and column not in table.frame.columns
    assert f"column '{column}' is ignored: there is no label column 'is_anomaly'" in caplog.text


def test_prepare_keeps_anomaly_sensors_and_never_takes_them_as_a_sensor(tmp_path):
    generated = generate("water_treatment", rows=600, seed=2, anomaly_rate=0.1)
    out = prepare_dataset(write_table(generated, tmp_path / "plant.csv"), tmp_path / "plant")
    ds = load_dataset(out)
    assert ds.sensors == SENSORS
    rows = sum((ds.anomaly_sensors(n) for n in ("train", "val", "test")), [])
    expected = generated["anomaly_sensors"].fillna("")
    assert [",".join(r) for r in rows] == expected.tolist()
    # user data without attribution: the accessor says it does not know
    plain = prepare_dataset(write_table(sensor_frame(400), tmp_path / "plain.csv"), tmp_path / "plain")
    assert load_dataset(plain).anomaly_sensors("test") is None
    # normal rows only: the empty column comes back from CSV as NaN, and still as no sensors
    normal = generate("water_treatment", rows=500, seed=2, anomaly_rate=0.0)
    ds = load_dataset(prepare_dataset(write_table(normal, tmp_path / "normal.csv"), tmp_path / "normal"))
    assert ds.sensors == SENSORS and ds.anomaly_sensors("val") == [[]] * len(ds.val)


# --------------------------------------------------------------------------- atomic writes


def _unwritable_frame() -> pd.DataFrame:
    """A table whose test split pyarrow cannot convert: the train and val files get written first."""
    frame = generate("water_treatment", rows=1000, seed=1)
    frame["note"] = None
    frame.loc[950, "note"] = object()
    return frame


def test_failure_during_write_leaves_nothing_behind(tmp_path):
    out = tmp_path / "datasets" / "broken"
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_dataset(_unwritable_frame(), SENSORS, out, {"source": "test"})
    assert not out.exists()
    assert list((tmp_path / "datasets").iterdir()) == []  # no temporary directory either


def test_failure_during_overwrite_keeps_the_previous_dataset(tmp_path):
    out = generate_dataset(tmp_path / "ds", rows=600, seed=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_dataset(_unwritable_frame(), SENSORS, out, {"source": "test"}, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_write_refuses_a_non_empty_directory_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(out, rows=600)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    generate_dataset(out, rows=600, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "test.parquet", "train.parquet",
                                                     "val.parquet"]
    # an existing empty directory is fine without overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_dataset(generate_dataset(empty, rows=600)).metadata["rows"] == 600


def test_load_dataset_requires_a_prepared_directory(tmp_path):
    with pytest.raises(DataValidationError, match="no metadata.json"):
        load_dataset(tmp_path)
    out = generate_dataset(tmp_path / "ds", rows=600)
    (out / "val.parquet").unlink()
    with pytest.raises(DataValidationError, match="val.parquet: file not found"):
        load_dataset(out)
