"""Reading, validating, splitting and writing sensor tables.

A prepared dataset is a directory with ``train.parquet``, ``val.parquet``,
``test.parquet`` (time-ordered splits) and ``metadata.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raysys.data.anomalies import ANOMALY_SENSORS, NORMAL, SENSOR_SEPARATOR
from raysys.data.synthetic import TIMESTAMP
from raysys.layout import DATASET_METADATA, SPLITS, split_file

logger = logging.getLogger(__name__)

LABEL = "is_anomaly"
ANOMALY_TYPE = "anomaly_type"
#: Columns that are never sensors: text columns describing the labels (kept only with a label column).
RESERVED: tuple[str, ...] = (ANOMALY_TYPE, ANOMALY_SENSORS)
MIN_ROWS = 100
#: Shares of the rows (a table) or of the time span (a streamed data set without splits) in train, val, test.
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
#: A time gap: an interval longer than this many times the median sampling interval (counted by validation;
#: a streamed training run starts new windows after one).
GAP_FACTOR = 1.5


class DataValidationError(ValueError):
    """A data file does not hold what raysys needs; the message names file and column."""


@dataclass(frozen=True)
class MissingValues:
    """How much of a sensor column validation may fill in by linear interpolation; past it, an error.

    Args:
        max_fraction: Largest share of a column's values that may be missing.
        max_run: Longest run of consecutive missing values that may be filled.
        inf_as_missing: Treat infinite values as missing (filled like NaN); by default they are an
            error naming the column and the count, since a sensor reporting infinity is broken, not silent.
    """

    max_fraction: float = 0.05
    max_run: int = 30
    inf_as_missing: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.max_fraction < 1:
            raise ValueError(f"max_fraction must be in [0, 1), got {self.max_fraction!r}")
        if self.max_run < 0:
            raise ValueError(f"max_run must be >= 0, got {self.max_run!r}")


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in ``mask``."""
    if not mask.any():
        return 0
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def _fill_missing(values: pd.Series, col: str, source: str, policy: MissingValues) -> tuple[pd.Series, int]:
    """``values`` with NaN (and, if allowed, infinite) values interpolated; how many were filled."""
    infinite = np.isinf(values.to_numpy())
    if infinite.any() and not policy.inf_as_missing:
        raise DataValidationError(f"{source}: column {col!r} has {int(infinite.sum())} infinite values (first at row "
                                  f"{int(np.argmax(infinite))}); fix the source, or treat them as missing values "
                                  "(--inf-as-missing)")
    values = values.replace([np.inf, -np.inf], np.nan)
    missing = values.isna().to_numpy()
    if missing.all():
        raise DataValidationError(f"{source}: column {col!r} is all NaN")
    count = int(missing.sum())
    if not count:
        return values, 0
    run = _longest_run(missing)
    if run > policy.max_run:
        raise DataValidationError(f"{source}: column {col!r} has a run of {run} consecutive missing values, longer "
                                  f"than the {policy.max_run} that may be interpolated (--max-missing-run)")
    if count > policy.max_fraction * len(values):
        raise DataValidationError(f"{source}: column {col!r} has {count} of {len(values)} values missing "
                                  f"({count / len(values):.1%}), more than the {policy.max_fraction:.1%} that may be "
                                  "interpolated (--max-missing-fraction)")
    return values.interpolate(limit_direction="both"), count


@dataclass
class SensorTable:
    """A validated sensor table and what validation found.

    Args:
        frame: Rows sorted by timestamp; sensor columns float64, labels if present.
        sensors: Sensor column names in order.
        interpolated: Sensor name to the number of missing values filled by interpolation.
        time_gaps: Number of intervals longer than ``GAP_FACTOR`` times the median sampling interval.
    """

    frame: pd.DataFrame
    sensors: list[str]
    interpolated: dict[str, int] = field(default_factory=dict)
    time_gaps: int = 0


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or Parquet file, naming the file in any error."""
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path).to_pandas()
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path)
    except Exception as exc:  # the parser's own message, with the file named
        raise DataValidationError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from exc
    raise DataValidationError(f"{path}: unsupported file type {suffix!r}; expected .csv or .parquet")


#: Separators between the values of a headerless numeric file: commas, whitespace, or both.
_NUMERIC_SEPARATORS = re.compile(r"[,\s]+")
#: The first timestamp given to a headerless file's rows (they carry none of their own).
NUMERIC_START = "2000-01-01"


@dataclass(frozen=True)
class HeaderlessFormat:
    """How to read a headerless numeric file (:func:`read_numeric_table`).

    Args:
        transpose: The file holds one sensor per line (samples in columns).
        sample_interval: Time between samples (``"3min"``, ``"1s"``): the rows' timestamps.
        columns: Sensor names (default ``x1 .. xN``).
    """

    transpose: bool = False
    sample_interval: str = "3min"
    columns: list[str] | None = None


def read_numeric_table(path: str | os.PathLike, transpose: bool = False, sample_interval: str = "3min",
                       columns: list[str] | None = None, start: str = NUMERIC_START) -> pd.DataFrame:
    """Read a headerless numeric file (no timestamps) into a raw table for :func:`validate_table`.

    Values are separated by whitespace and/or commas, one sample per line, or one sensor per line
    with ``transpose`` (as the Tennessee Eastman ``d00.dat``). Rows get timestamps ``start``,
    ``start + sample_interval``, ...; sensor columns are named ``columns`` or ``x1 .. xN``.

    Raises:
        DataValidationError: naming the file, and the line for a non-numeric value or a line whose
            number of values differs from the first line's.
    """
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{path}: file not found")
    try:
        step = pd.Timedelta(sample_interval)
    except (ValueError, TypeError) as exc:
        raise DataValidationError(f"{path}: sample interval {sample_interval!r} is not a duration such as '3min' "
                                  f"or '1s': {exc}") from exc
    if step <= pd.Timedelta(0):
        raise DataValidationError(f"{path}: sample interval must be positive, got {sample_interval!r}")
    lines: list[list[float]] = []
    width = 0
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{path}: not a text file of numbers: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = [t for t in _NUMERIC_SEPARATORS.split(line.strip()) if t]
        if not tokens:
            continue
        if not width:
            width = len(tokens)
        elif len(tokens) != width:
            raise DataValidationError(f"{path}: line {number} has {len(tokens)} values, expected {width} "
                                      "as on the first line")
        try:
            lines.append([float(t) for t in tokens])
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise DataValidationError(f"{path}: non-numeric value {bad!r} on line {number} "
                                      f"(value {tokens.index(bad) + 1}); expected numbers only, no header "
                                      "(a file with a header row is a CSV: drop --no-header)") from None
    if not lines:
        raise DataValidationError(f"{path}: no numbers in the file")
    values = np.asarray(lines, dtype=np.float64)
    if transpose:
        values = values.T
    n_rows, n_sensors = values.shape
    if columns is None:
        columns = [f"x{i}" for i in range(1, n_sensors + 1)]
    elif len(columns) != n_sensors:
        raise DataValidationError(f"{path}: {len(columns)} column names given for {n_sensors} sensors "
                                  f"({n_rows} samples x {n_sensors} sensors{', transposed' if transpose else ''})")
    if TIMESTAMP in columns:
        raise DataValidationError(f"{path}: column name {TIMESTAMP!r} is reserved for the timestamps made here")
    frame = pd.DataFrame(values, columns=list(columns))
    frame.insert(0, TIMESTAMP, pd.Timestamp(start) + step * np.arange(n_rows))
    return frame


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def validate_table(frame: pd.DataFrame, source: str, timestamp_col: str = TIMESTAMP,
                   label_col: str | None = LABEL, min_rows: int = MIN_ROWS,
                   missing: MissingValues = MissingValues()) -> SensorTable:
    """Check a raw table and return it cleaned: parsed timestamps, float sensors, gaps filled
    within the bounds of ``missing``.

    Raises:
        DataValidationError: naming ``source`` and the offending column.
    """
    if timestamp_col not in frame.columns:
        raise DataValidationError(
            f"{source}: missing timestamp column {timestamp_col!r}; columns are {list(frame.columns)}")
    if len(frame) < min_rows:
        raise DataValidationError(f"{source}: too few rows: expected at least {min_rows}, got {len(frame)}")
    try:
        ts = pd.to_datetime(frame[timestamp_col])
    except (ValueError, TypeError) as exc:
        raise DataValidationError(f"{source}: column {timestamp_col!r} is not parseable as timestamps: {exc}") from exc
    if ts.isna().any():
        raise DataValidationError(f"{source}: column {timestamp_col!r} has {int(ts.isna().sum())} empty timestamps")
    if ts.duplicated().any():
        first = ts[ts.duplicated()].iloc[0]
        raise DataValidationError(
            f"{source}: column {timestamp_col!r} has {int(ts.duplicated().sum())} duplicated timestamps (first {first})")
    if not ts.is_monotonic_increasing:
        bad = int(np.argmax(np.diff(ts.to_numpy().astype("int64")) < 0)) + 1
        raise DataValidationError(
            f"{source}: column {timestamp_col!r} is not sorted ascending (row {bad}: {ts.iloc[bad]} after {ts.iloc[bad - 1]})")
    for col, what in ((ANOMALY_TYPE, "anomaly type names"), (ANOMALY_SENSORS, "the sensors an anomaly touched")):
        if col not in frame.columns:
            continue
        text = frame[col]
        if col == ANOMALY_SENSORS and text.isna().all():
            pass  # every row normal: a CSV reads the empty strings back as an all-NaN column
        elif not (pd.api.types.is_object_dtype(text) or pd.api.types.is_string_dtype(text)) or \
                not text.dropna().map(lambda v: isinstance(v, str)).all():
            raise DataValidationError(f"{source}: column {col!r} is reserved for {what} (text), "
                                      f"got {text.dtype} values; rename the column if it is a sensor")
        if not (label_col and label_col in frame.columns):
            logger.warning("%s: column %r is ignored: there is no label column %r", source, col, label_col)
    label_cols = [c for c in (label_col, *RESERVED) if c and c in frame.columns]
    sensors = [c for c in frame.columns if c not in (timestamp_col, *label_cols)]
    if not sensors:
        raise DataValidationError(f"{source}: no sensor columns besides {timestamp_col!r} and labels")
    out = pd.DataFrame({TIMESTAMP: ts.to_numpy()})
    interpolated: dict[str, int] = {}
    for col in sensors:
        raw = frame[col]
        if not (pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw)):
            values = pd.to_numeric(raw, errors="coerce")
            bad = raw[values.isna() & raw.notna()]
            if len(bad):
                raise DataValidationError(
                    f"{source}: column {col!r} must be numeric, got non-numeric value {bad.iloc[0]!r} "
                    f"at row {bad.index[0]}")
        else:
            values = raw.astype("float64")
        values, filled = _fill_missing(values.astype("float64"), col, source, missing)
        if filled:
            interpolated[col] = filled
        out[col] = values.to_numpy()
    if label_col and label_col in frame.columns:
        labels = pd.to_numeric(frame[label_col], errors="coerce")
        if labels.isna().any() or not labels.isin([0, 1]).all():
            raise DataValidationError(f"{source}: label column {label_col!r} must hold only 0 and 1")
        out[LABEL] = labels.astype("int8").to_numpy()
        out[ANOMALY_TYPE] = (frame[ANOMALY_TYPE].astype(str).to_numpy() if ANOMALY_TYPE in frame.columns
                             else np.where(out[LABEL] == 1, "unknown", NORMAL))
        if ANOMALY_SENSORS in frame.columns:
            touched = frame[ANOMALY_SENSORS]
            out[ANOMALY_SENSORS] = np.where(touched.isna(), "", touched.astype(str)).astype(str)
    steps = np.diff(ts.to_numpy().astype("int64"))
    gaps = int((steps > GAP_FACTOR * np.median(steps)).sum()) if len(steps) else 0
    if interpolated:
        logger.warning("%s: interpolated missing values %s", source, interpolated)
    if gaps:
        logger.warning("%s: %d gaps in the timestamps longer than %gx the median interval", source, gaps, GAP_FACTOR)
    return SensorTable(out, sensors, interpolated, gaps)


def load_table(path: str | os.PathLike, timestamp_col: str = TIMESTAMP, label_col: str | None = LABEL,
               min_rows: int = MIN_ROWS, missing: MissingValues = MissingValues()) -> SensorTable:
    """Read and validate a user's CSV or Parquet file."""
    return validate_table(read_table(path), str(path), timestamp_col, label_col, min_rows, missing)


def split_bounds(n_rows: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> tuple[int, int]:
    """The first row of ``val`` and of ``test`` when ``n_rows`` rows are split by :func:`split_by_time`."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    a = int(round(fractions[0] * n_rows))
    return a, a + int(round(fractions[1] * n_rows))


def split_by_time(frame: pd.DataFrame, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
                  ) -> dict[str, pd.DataFrame]:
    """Split rows in time order, so no future row leaks into an earlier split."""
    a, b = split_bounds(len(frame), fractions)
    return {"train": frame.iloc[:a].reset_index(drop=True),
            "val": frame.iloc[a:b].reset_index(drop=True),
            "test": frame.iloc[b:].reset_index(drop=True)}


def anomaly_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Anomalous rows per ``anomaly_type`` (empty without the column)."""
    if ANOMALY_TYPE not in frame.columns:
        return {}
    types = frame.loc[frame[ANOMALY_TYPE] != NORMAL, ANOMALY_TYPE]
    return {str(k): int(v) for k, v in types.value_counts().sort_index().items()}


def write_dataset(frame: pd.DataFrame, sensors: list[str], out_dir: str | os.PathLike,
                  metadata: dict[str, Any], fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
                  overwrite: bool = False) -> Path:
    """Split ``frame`` by time and write the splits and ``metadata.json`` to ``out_dir``.

    Written into a temporary sibling directory and renamed at the end, so a failure
    never leaves a half-written dataset behind.
    """
    splits = split_by_time(frame, fractions)
    with atomic_directory(out_dir, overwrite) as tmp:
        for name, part in splits.items():
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), split_file(tmp, name))
        meta = dict(metadata)
        meta.update({
            "sensors": sensors,
            "rows": int(len(frame)),
            "splits": {name: {"rows": len(part), "start": str(part[TIMESTAMP].iloc[0]),
                              "end": str(part[TIMESTAMP].iloc[-1]), "anomaly_counts": anomaly_counts(part)}
                       for name, part in splits.items()},
            "anomaly_counts": anomaly_counts(frame),
        })
        if "events" in meta:  # the long per-event list last, after the summary
            meta["events"] = meta.pop("events")
        (tmp / DATASET_METADATA).write_text(json.dumps(meta, indent=2, default=str))
    return Path(out_dir)


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to write into; renamed to ``out_dir`` when the block ends
    without an error, removed otherwise, so a failure never leaves a half-written directory.

    Raises:
        FileExistsError: ``out_dir`` is a file, or a non-empty directory and not ``overwrite``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: output path exists and is a file, not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: output directory exists and is not empty (pass overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class SensorDataset:
    """A prepared dataset directory loaded into memory (or a streamed data set's bounded sample:
    ``raysys.data.source.DataSource.sample``, whose ``path`` is its URI)."""

    path: Path | str
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    metadata: dict[str, Any]

    @property
    def sensors(self) -> list[str]:
        return list(self.metadata["sensors"])

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    def features(self, name: str, normal_only: bool = False) -> np.ndarray:
        """Sensor values of a split as float32, optionally only the normal rows."""
        frame = self.split(name)
        if normal_only and LABEL in frame.columns:
            frame = frame[frame[LABEL] == 0]
        return frame[self.sensors].to_numpy(dtype=np.float32)

    def labelled(self, name: str) -> bool:
        """Whether split ``name`` has a label column (raysys works without one: see docs/detection.md)."""
        return LABEL in self.split(name).columns

    def labels(self, name: str) -> np.ndarray:
        """The split's 0/1 labels; ``DataValidationError`` when it has none (see :meth:`known_labels`)."""
        frame = self.split(name)
        if LABEL not in frame.columns:
            raise DataValidationError(f"{self.path}/{name}.parquet: no {LABEL!r} column; labels are needed here")
        return frame[LABEL].to_numpy(dtype=np.int64)

    def known_labels(self, name: str) -> np.ndarray | None:
        """The split's labels, or None when it has no label column (every row is taken as normal)."""
        return self.labels(name) if self.labelled(name) else None

    def anomaly_types(self, name: str) -> np.ndarray:
        return self.split(name)[ANOMALY_TYPE].to_numpy(dtype=str)

    def anomaly_sensors(self, name: str) -> list[list[str]] | None:
        """Per row of split ``name``, the sensors its anomaly touched (``[]`` on normal rows); None when
        the split does not say (no ``anomaly_sensors`` column: user data, or data generated before it)."""
        frame = self.split(name)
        if ANOMALY_SENSORS not in frame.columns:
            return None
        return [v.split(SENSOR_SEPARATOR) if v else [] for v in frame[ANOMALY_SENSORS].astype(str)]


def read_metadata(path: Path) -> dict[str, Any]:
    """A dataset's ``metadata.json``; ``DataValidationError`` naming the file and what is wrong."""
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise DataValidationError(f"{path}: expected a JSON object, got {type(metadata).__name__}")
    sensors = metadata.get("sensors")
    if sensors is None:
        raise DataValidationError(f"{path}: missing key 'sensors' (the list of sensor columns)")
    if not (isinstance(sensors, list) and sensors and all(isinstance(s, str) for s in sensors)):
        raise DataValidationError(f"{path}: 'sensors' must be a non-empty list of column names, got {sensors!r}")
    return metadata


def open_metadata(root: Path, missing: str) -> tuple[Path, dict[str, Any]]:
    """``(path, content)`` of ``root``'s ``metadata.json`` (:func:`read_metadata`); without one, a
    ``DataValidationError`` saying ``<root>: <missing>``."""
    meta_path = root / DATASET_METADATA
    if not meta_path.exists():
        raise DataValidationError(f"{root}: {missing}")
    return meta_path, read_metadata(meta_path)


def load_dataset(path: str | os.PathLike) -> SensorDataset:
    """Load a prepared dataset directory, validating each split."""
    root = Path(path)
    meta_path, metadata = open_metadata(root, "not a prepared dataset (no metadata.json); run `raysys generate` "
                                              "or `raysys prepare` first")
    parts = {name: read_split(split_file(root, name), metadata["sensors"], meta_path) for name in SPLITS}
    return SensorDataset(root, parts["train"], parts["val"], parts["test"], metadata)


def read_split(file: Path, sensors: list[str], meta_path: Path, source: str | None = None) -> pd.DataFrame:
    """One split file of a prepared dataset, validated, holding every sensor ``meta_path`` lists;
    ``source`` names it in errors (default: the file)."""
    source = source or str(file)
    table = validate_table(read_table(file), source, min_rows=1)
    missing = [s for s in sensors if s not in table.sensors]
    if missing:
        raise DataValidationError(f"{source}: missing sensor columns {missing} listed in {meta_path}")
    return table.frame
