"""Where a Parquet data set lives: a local directory, or an object store (``s3://``, ``gs://``, ``abfs://``)
through pyarrow's filesystems, and its splits read as Ray Data datasets.

A data set's splits are ``<root>/<split>.parquet`` (a prepared data set) or ``<root>/<split>/`` (a directory
of Parquet files, Hive-partitioned or not, e.g. a fleet's ``asset_id=<id>/`` folders). Credentials and
endpoints come from the standard environment variables of each store (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``...) or from ``storage_options`` (the keyword
arguments of the store's pyarrow filesystem, e.g. ``{"endpoint_override": "http://minio:9000"}``). The
filesystem object itself is handed to Ray Data, so workers never depend on environment variables set
after ``ray.init``. docs/data.md#data-in-object-storage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysys.data.io import DataValidationError
from raysys.layout import SPLITS

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
        ``<root>/<split>/`` (sorted, so a run reads them in a fixed order).

        Raises:
            FileNotFoundError: neither exists, naming both.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        single, folder = f"{self.root}/{split}.parquet", f"{self.root}/{split}"
        info = self.filesystem.get_file_info([single, folder])
        if info[0].type == pafs.FileType.File:
            return [single]
        if info[1].type == pafs.FileType.Directory:
            files = sorted(f.path for f in self.filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
                           if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
            if files:
                return files
            raise FileNotFoundError(f"{self.uri}: {split}/ holds no .parquet files")
        raise FileNotFoundError(f"{self.uri}: no {split} split (neither {split}.parquet nor {split}/)")

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

    def read(self, split: str, sensors: list[str], **read_args: Any) -> Any:
        """Split ``split`` as a Ray Data dataset (streamed, block by block), after :meth:`check_files`; each
        row carries the ``path`` of its file (windows must not cross files)."""
        import ray

        files = self.split_files(split)
        self.check_files(files, sensors)
        return ray.data.read_parquet(files, filesystem=self.filesystem, include_paths=True, **read_args)


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
