"""Where a Parquet data set lives: a local directory, or an object store (``s3://``, ``gs://``, ``abfs://``)
through pyarrow's filesystems, and its splits read as Ray Data datasets.

A data set's splits are ``<root>/<split>.parquet`` (a prepared data set) or ``<root>/<split>/`` (a directory
of Parquet files, Hive-partitioned or not, e.g. a fleet's ``asset_id=<id>/`` folders); Parquet files with no
split layout are split by time (``SPLIT_FRACTIONS`` of their time span, :meth:`DataSource.split_window`).
Credentials and endpoints come from the standard environment variables of each store (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``...) or from ``storage_options`` (the keyword
arguments of the store's pyarrow filesystem, e.g. ``{"endpoint_override": "http://minio:9000"}``). The
filesystem object itself is handed to Ray Data, so workers never depend on environment variables set
after ``ray.init``. docs/data.md#data-in-object-storage.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysys.data.io import LABEL, RESERVED, SPLIT_FRACTIONS, DataValidationError, SensorDataset, validate_table
from raysys.data.synthetic import TIMESTAMP
from raysys.layout import ASSET_ID, DATASET_METADATA, SPLITS

#: Rows of each split that stages needing a split in memory (evaluation, threshold calibration, the ensemble's
#: classical members, the report) read from a streamed data set: :meth:`DataSource.sample`.
SAMPLE_ROWS = 200_000
#: The column Ray Data adds to every row: the file it came from.
PATH = "path"

#: pyarrow filesystem class per URI scheme (what ``storage_options`` are passed to).
FILESYSTEMS = {"s3": pafs.S3FileSystem, "gs": pafs.GcsFileSystem, "gcs": pafs.GcsFileSystem,
               "abfs": getattr(pafs, "AzureFileSystem", None), "abfss": getattr(pafs, "AzureFileSystem", None)}


@dataclass
class DataSource:
    """A data set root on a filesystem.

    Args:
        uri: As the user gave it (``s3://bucket/plant``, ``/data/plant``).
        filesystem: The pyarrow filesystem to read it with.
        root: The root's path on that filesystem (no scheme).
        storage_options: What built ``filesystem`` (kept to rebuild it elsewhere).
    """

    uri: str
    filesystem: pafs.FileSystem = field(repr=False)
    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def split_files(self, split: str) -> list[str]:
        """The Parquet files of ``split``: ``<root>/<split>.parquet``, or every ``.parquet`` file under
        ``<root>/<split>/`` (sorted, so a run reads them in a fixed order); for a data set without splits
        (:meth:`split_window`), every ``.parquet`` file under the root.

        Raises:
            FileNotFoundError: no split layout and no Parquet files, naming the URI.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        single, folder = f"{self.root}/{split}.parquet", f"{self.root}/{split}"
        info = self.filesystem.get_file_info([single, folder])
        if info[0].type == pafs.FileType.File:
            return [single]
        if info[1].type == pafs.FileType.Directory:
            files = self._parquet_files(folder)
            if files:
                return files
            raise FileNotFoundError(f"{self.uri}: {split}/ holds no .parquet files")
        if self.time_split:
            return self._parquet_files(self.root)
        raise FileNotFoundError(f"{self.uri}: no {split} split (neither {split}.parquet nor {split}/) and no "
                                ".parquet files to split by time")

    def _parquet_files(self, folder: str) -> list[str]:
        if self.filesystem.get_file_info(folder).type == pafs.FileType.File:
            return [folder]
        return sorted(f.path for f in self.filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
                      if f.type == pafs.FileType.File and f.path.endswith(".parquet"))

    @functools.cached_property
    def time_split(self) -> bool:
        """Whether the data set has no split layout (no ``<split>.parquet`` or ``<split>/`` at all) but Parquet
        files: its splits are then made by time (:meth:`split_window`)."""
        paths = [p for s in SPLITS for p in (f"{self.root}/{s}.parquet", f"{self.root}/{s}")]
        if any(info.type != pafs.FileType.NotFound for info in self.filesystem.get_file_info(paths)):
            return False
        return bool(self._parquet_files(self.root))

    @functools.cached_property
    def _time_bounds(self) -> list[pd.Timestamp]:
        """The split boundaries of a data set made by time: the ``SPLIT_FRACTIONS`` cuts of its time span (from
        the Parquet footers' ``timestamp`` statistics, no rows read) between two open ends."""
        lows, highs = [], []
        for path in self._parquet_files(self.root):
            meta = self._parquet(path).metadata
            names = meta.schema.to_arrow_schema().names
            if TIMESTAMP not in names:
                raise DataValidationError(f"{self.display(path)}: no {TIMESTAMP!r} column to split the data set "
                                          "by time")
            column = names.index(TIMESTAMP)
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(column).statistics
                if stats is None or not stats.has_min_max:
                    raise DataValidationError(f"{self.display(path)}: row group {g} has no {TIMESTAMP!r} statistics "
                                              "to split the data set by time; write it with statistics, or give "
                                              "train/ val/ test/ splits")
                lows.append(pd.Timestamp(stats.min))
                highs.append(pd.Timestamp(stats.max))
        start, end = min(lows), max(highs)
        cuts = np.cumsum(SPLIT_FRACTIONS)[:-1]
        return [None, *(start + (end - start) * float(c) for c in cuts), None]

    def split_window(self, split: str) -> tuple[pd.Timestamp | None, pd.Timestamp | None] | None:
        """``[start, end)`` of ``split`` in a data set made by time (the ``SPLIT_FRACTIONS`` of its time span, in
        order, as ``raysys prepare`` splits a table; None: open, the first split's start and the last one's
        end); None for a data set with splits of its own."""
        if not self.time_split:
            return None
        i = SPLITS.index(split)
        return self._time_bounds[i], self._time_bounds[i + 1]

    def display(self, path: str) -> str:
        """``path`` as the user would write it (with the URI's scheme)."""
        scheme = self.uri.split("://", 1)[0] + "://" if "://" in self.uri else ""
        return f"{scheme}{path}"

    def check_files(self, files: list[str], sensors: list[str]) -> pa.Schema:
        """Read every file's Parquet footer (not its rows) and check it holds ``sensors`` as numbers, before
        any training starts; returns the first file's schema.

        Raises:
            DataValidationError: naming the file and what is wrong (not Parquet / corrupt, a missing sensor,
                a sensor column that is not numeric, a schema unlike the first file's).
        """
        first: pa.Schema | None = None
        for path in files:
            try:
                schema = pq.read_schema(path, filesystem=self.filesystem)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataValidationError(f"{self.display(path)}: not a readable Parquet file ({exc})") from None
            missing = [s for s in sensors if s not in schema.names]
            if missing:
                raise DataValidationError(f"{self.display(path)}: no sensor column(s) {missing} "
                                          f"(columns: {schema.names})")
            bad = {s: str(schema.field(s).type) for s in sensors
                   if not (pa.types.is_floating(schema.field(s).type) or pa.types.is_integer(schema.field(s).type))}
            if bad:
                raise DataValidationError(f"{self.display(path)}: sensor column(s) not numeric: {bad}")
            if first is not None:
                mismatch = {s: (str(first.field(s).type), str(schema.field(s).type)) for s in sensors
                            if first.field(s).type != schema.field(s).type}
                if mismatch:
                    raise DataValidationError(f"{self.display(path)}: sensor types differ from {self.display(files[0])}"
                                              f" (expected, got): {mismatch}")
            first = first or schema
        if first is None:
            raise DataValidationError(f"{self.uri}: no files to read")
        return first

    def metadata(self) -> dict[str, Any]:
        """The data set's ``metadata.json`` when it has one; otherwise ``{"sensors": [...]}`` with every numeric
        column of the first training file other than the timestamp, the label and partition keys."""
        path = f"{self.root}/{DATASET_METADATA}"
        if self.filesystem.get_file_info(path).type == pafs.FileType.File:
            with self.filesystem.open_input_stream(path) as stream:
                try:
                    metadata = json.loads(stream.read())
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise DataValidationError(f"{self.display(path)}: not valid JSON: {exc}") from None
            if not isinstance(metadata, dict) or not metadata.get("sensors"):
                raise DataValidationError(f"{self.display(path)}: missing key 'sensors' (the list of sensor columns)")
            return metadata
        first = self.split_files("train")[0]
        schema = self.check_files([first], [])
        sensors = [f.name for f in schema if f.name not in (TIMESTAMP, LABEL, ASSET_ID, PATH, *RESERVED)
                   and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
        if not sensors:
            raise DataValidationError(f"{self.display(first)}: no numeric sensor columns (columns: {schema.names})")
        return {"sensors": sensors}

    def labelled(self, split: str) -> bool:
        """Whether ``split`` has a label column (its first file's schema says)."""
        return LABEL in self.check_files(self.split_files(split)[:1], []).names

    def row_counts(self, files: list[str]) -> list[int]:
        """Rows of each file, from its Parquet footer."""
        return [self._parquet(path).metadata.num_rows for path in files]

    def _parquet(self, path: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.filesystem.open_input_file(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataValidationError(f"{self.display(path)}: not a readable Parquet file ({exc})") from None

    def sample_split(self, split: str, sensors: list[str], max_rows: int = SAMPLE_ROWS) -> pd.DataFrame:
        """At most ``max_rows`` rows of ``split``, validated: all of it when it is smaller, else whole Parquet row
        groups evenly spaced over its files in order (each a run of consecutive rows, so the sample spans the
        split's whole time range). Each row group is validated as a table of its own, naming its file."""
        files, window = self.split_files(split), self.split_window(split)
        groups = [(path, g, meta.row_group(g).num_rows) for path in files
                  for meta in [self._parquet(path).metadata] for g in range(meta.num_row_groups)
                  if window is None or _overlaps(meta, g, window)]
        total = sum(n for *_, n in groups)
        keep = min(len(groups), int(len(groups) * max_rows / max(total, 1)) + 1)  # about the budget, then fit it
        while keep > 1 and sum(n for *_, n in _evenly(groups, keep)) > max_rows:
            keep -= 1
        parts = [validate_table(_within(self._parquet(path).read_row_group(group).to_pandas(), window),
                                self.display(path), min_rows=1).frame for path, group, _ in _evenly(groups, keep)]
        return pd.concat(parts, ignore_index=True).iloc[:max_rows]  # one row group can exceed the budget

    def sample(self, max_rows: int = SAMPLE_ROWS) -> SensorDataset:
        """The data set as a :class:`SensorDataset` of at most ``max_rows`` rows per split (:meth:`sample_split`):
        what a streamed run evaluates, calibrates and reports on."""
        metadata = self.metadata()
        splits = {name: self.sample_split(name, metadata["sensors"], max_rows) for name in SPLITS}
        files = sorted({path for name in SPLITS for path in self.split_files(name)})  # once each (time splits)
        rows = metadata.get("rows") or sum(self.row_counts(files))
        metadata = {**metadata, "rows": rows, "source": self.uri,
                    "sample": {"max_rows": max_rows, **{k: len(v) for k, v in splits.items()}}}
        return SensorDataset(self.uri, splits["train"], splits["val"], splits["test"], metadata)

    def read(self, split: str, sensors: list[str], check: bool = True, **read_args: Any) -> Any:
        """Split ``split`` as a Ray Data dataset (streamed, block by block), after :meth:`check_files` (unless
        the caller has checked them); each row carries the ``path`` of its file (windows must not cross files)."""
        import ray

        files = self.split_files(split)
        if check:
            self.check_files(files, sensors)
        rows = ray.data.read_parquet(files, filesystem=self.filesystem, include_paths=True, **read_args)
        window = self.split_window(split)
        if window is None:
            return rows
        from ray.data.expressions import col, lit

        start, end = window
        if start is not None:
            rows = rows.filter(expr=col(TIMESTAMP) >= lit(start))
        return rows if end is None else rows.filter(expr=col(TIMESTAMP) < lit(end))


#: Words that mark a storage option as a secret: never written to a run record, MLflow or a log.
SECRET_WORDS = ("key", "secret", "token", "password", "credential", "sas")


def public_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the ones whose name holds a :data:`SECRET_WORDS` word (``access_key``,
    ``secret_key``, ``session_token``, ``account_key``...)."""
    return {k: v for k, v in options.items() if not any(w in k.lower() for w in SECRET_WORDS)}


def _overlaps(meta: pq.FileMetaData, group: int, window: tuple[pd.Timestamp | None, pd.Timestamp | None]) -> bool:
    """Whether row group ``group``'s timestamps (its footer statistics) reach into ``window``."""
    stats = meta.row_group(group).column(meta.schema.to_arrow_schema().names.index(TIMESTAMP)).statistics
    start, end = window
    return (end is None or pd.Timestamp(stats.min) < end) and (start is None or pd.Timestamp(stats.max) >= start)


def _within(frame: pd.DataFrame, window: tuple[pd.Timestamp | None, pd.Timestamp | None] | None) -> pd.DataFrame:
    """The rows of ``frame`` in ``window`` (all of them without one)."""
    if window is None:
        return frame
    times, (start, end) = pd.to_datetime(frame[TIMESTAMP]), window
    keep = np.ones(len(frame), dtype=bool)
    if start is not None:
        keep &= (times >= start).to_numpy()
    if end is not None:
        keep &= (times < end).to_numpy()
    return frame[keep].reset_index(drop=True)


def _evenly(items: list, k: int) -> list:
    """``k`` of ``items``, evenly spaced from the first to the last."""
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))]


def open_source(uri: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> DataSource:
    """The data set at ``uri`` (a local path, or ``s3://`` / ``gs://`` / ``abfs://`` URI).

    Raises:
        FileNotFoundError: the root does not exist, naming the URI. OSError: the store cannot be reached,
            naming the URI and the store's error.
    """
    text = os.fspath(uri)
    options = dict(storage_options or {})
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in FILESYSTEMS:
        cls = FILESYSTEMS[scheme]
        if cls is None:
            raise ValueError(f"{text}: this pyarrow has no filesystem for {scheme}://")
        path = text.split("://", 1)[1].rstrip("/")
        if scheme == "s3" and "endpoint_override" not in options and os.environ.get("AWS_ENDPOINT_URL"):
            options["endpoint_override"] = os.environ["AWS_ENDPOINT_URL"]
        filesystem = cls(**options)
    elif scheme in ("", "file"):
        if options:
            raise ValueError(f"{text}: storage options are for object stores, not local paths")
        filesystem, path = pafs.LocalFileSystem(), os.path.abspath(text.split("://", 1)[-1])
    else:
        raise ValueError(f"{text}: unsupported scheme {scheme}://; use a local path, s3://, gs:// or abfs://")
    try:
        info = filesystem.get_file_info(path)
    except OSError as exc:
        raise OSError(f"{text}: cannot reach the store: {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{text}: no such data set")
    return DataSource(text, filesystem, path, options)


#: The robust scaler's median and quartiles come from Ray Data's ``ApproximateQuantile``, a KLL sketch of
#: ``QUANTILE_PRECISION`` (k): each is the value at a rank within ``QUANTILE_RANK_ERROR`` of the rows of the
#: true one, at 99% confidence (datasketches' ``get_normalized_rank_error(800, False)``: 0.345%).
QUANTILE_PRECISION = 800
QUANTILE_RANK_ERROR = 0.0035


def streaming_scaler(dataset: Any, sensors: list[str], kind: str, label: str | None = "is_anomaly") -> Any:
    """A fitted scikit-learn scaler of ``kind`` from one streaming pass over ``dataset`` (a Ray Data dataset):
    its normal rows only (``label`` 0, when the column is there). ``standard`` and ``minmax`` are exact (Ray
    Data's Mean / Std / Min / Max aggregates); ``robust`` uses ``ApproximateQuantile`` (a rank error of
    :data:`QUANTILE_RANK_ERROR`)."""
    from ray.data.aggregate import ApproximateQuantile, Count, Max, Mean, Min, Std
    from ray.data.expressions import col

    from raysys.data.preprocessing import scaler_from_dict

    if label and label in dataset.schema().names:
        dataset = dataset.filter(expr=col(label) == 0)
    n = len(sensors)
    base = {"kind": kind, "params": {}, "n_features_in": n}
    if kind == "standard":
        stats = dataset.aggregate(Count(), *(Mean(s, alias_name=f"mean_{s}") for s in sensors),
                                  *(Std(s, ddof=0, alias_name=f"std_{s}") for s in sensors))
        mean = np.array([stats[f"mean_{s}"] for s in sensors])
        var = np.array([stats[f"std_{s}"] for s in sensors]) ** 2
        scale = np.where(var > 0, np.sqrt(var), 1.0)
        data = {**base, "params": {"copy": True, "with_mean": True, "with_std": True}, "mean_": mean, "var_": var,
                "scale_": scale, "n_samples_seen_": stats["count()"]}
    elif kind == "minmax":
        stats = dataset.aggregate(Count(), *(Min(s, alias_name=f"min_{s}") for s in sensors),
                                  *(Max(s, alias_name=f"max_{s}") for s in sensors))
        lo, hi = (np.array([stats[f"{k}_{s}"] for s in sensors], dtype=np.float64) for k in ("min", "max"))
        span = hi - lo
        scale = 1.0 / np.where(span > 0, span, 1.0)
        data = {**base, "params": {"clip": False, "copy": True, "feature_range": [0, 1]}, "min_": -lo * scale,
                "scale_": scale, "data_min_": lo, "data_max_": hi, "data_range_": span,
                "n_samples_seen_": stats["count()"]}
    elif kind == "robust":
        stats = dataset.aggregate(*(ApproximateQuantile(s, [0.25, 0.5, 0.75], QUANTILE_PRECISION,
                                                        alias_name=f"q_{s}") for s in sensors))
        q = np.array([stats[f"q_{s}"] for s in sensors], dtype=np.float64)
        iqr = q[:, 2] - q[:, 0]
        data = {**base, "params": {"copy": True, "quantile_range": [25.0, 75.0], "unit_variance": False,
                                   "with_centering": True, "with_scaling": True},
                "center_": q[:, 1], "scale_": np.where(iqr > 0, iqr, 1.0)}
    else:
        raise ValueError(f"scaler must be standard, minmax or robust, got {kind!r}")
    return scaler_from_dict({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in data.items()},
                            "streamed scaler")
