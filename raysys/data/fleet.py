"""Fleet datasets: one time series per machine (asset), Hive-partitioned by ``asset_id``.

::

    <fleet>/
        metadata.json                          sensors, profile, ..., and every asset (below)
        train/asset_id=<id>/part-0.parquet     each asset split by its own time: 70 / 15 / 15
        val/asset_id=<id>/part-0.parquet
        test/asset_id=<id>/part-0.parquet

The partition directories name the asset; the files hold ``timestamp``, the sensors and the labels,
so ``pyarrow.dataset.dataset(<fleet>/train, partitioning="hive")`` (or ``ray.data.read_parquet``)
reads ``asset_id`` back as a column. ``metadata.json``'s ``assets`` lists each asset: its id, seed,
operating point, rows per split, anomaly counts and events. docs/data.md#fleet-datasets.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raysys.data.io import (SPLIT_FRACTIONS, DataValidationError, MissingValues, SensorDataset, anomaly_counts,
                            atomic_directory, open_metadata, read_split, read_table, split_by_time, validate_table)
from raysys.data.prepare import event_records
from raysys.data.profiles import get_profile
from raysys.data.synthetic import TIMESTAMP, OperatingPoint, generate_with_events
from raysys.layout import ASSET_ID, DATASET_METADATA, SPLITS, asset_split_file, check_asset_id

#: How far the machines of a generated fleet spread: load offset, load phase (as a share of a day of
#: rows), extra noise (as a share of each sensor's spread), each drawn uniformly.
SPREAD = {"load_offset": (-0.15, 0.15), "phase_day_share": (0.0, 1.0), "noise": (0.0, 0.5)}


def asset_ids(n: int) -> list[str]:
    """The ids of a generated fleet of ``n`` assets: ``asset-0000`` ...."""
    if n < 1:
        raise ValueError(f"a fleet needs at least 1 asset, got {n}")
    return [f"asset-{i:04d}" for i in range(n)]


def operating_point(rng: np.random.Generator, freq_minutes: float = 5.0) -> OperatingPoint:
    """A random machine within :data:`SPREAD`."""
    day_rows = int(24 * 60 / freq_minutes)
    return OperatingPoint(load_offset=float(rng.uniform(*SPREAD["load_offset"])),
                          phase_rows=int(rng.uniform(*SPREAD["phase_day_share"]) * day_rows),
                          noise=float(rng.uniform(*SPREAD["noise"])))


def write_fleet(out_dir: str | os.PathLike, assets: Iterable[tuple[str, pd.DataFrame, dict[str, Any]]],
                metadata: dict[str, Any], fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
                overwrite: bool = False) -> Path:
    """Write ``assets`` (id, validated frame in time order, extra ``metadata.json`` record) as a fleet dataset:
    each asset split by its own time, Hive-partitioned by asset (module docstring). Written whole or not at all."""
    records = []
    with atomic_directory(out_dir, overwrite) as tmp:
        for asset, frame, record in assets:
            splits = split_by_time(frame, fractions)
            for name, part in splits.items():
                path = asset_split_file(tmp, name, asset)
                path.parent.mkdir(parents=True)
                pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path)
            entry = {ASSET_ID: asset, **{k: v for k, v in record.items() if k != "events"},
                     "rows": {name: len(part) for name, part in splits.items()},
                     "start": str(frame[TIMESTAMP].iloc[0]), "end": str(frame[TIMESTAMP].iloc[-1]),
                     "anomaly_counts": anomaly_counts(frame)}
            records.append({**entry, **({"events": record["events"]} if "events" in record else {})})
        meta = {**metadata, "layout": "fleet", "partitioning": ASSET_ID, "fractions": list(fractions),
                "assets": records}
        (tmp / DATASET_METADATA).write_text(json.dumps(meta, indent=2, default=str))
    return Path(out_dir)


def generate_fleet(out_dir: str | os.PathLike, assets: int, profile: str = "water_treatment", rows: int = 20_000,
                   seed: int = 0, anomaly_rate: float = 0.05,
                   fractions: tuple[float, float, float] = SPLIT_FRACTIONS, overwrite: bool = False,
                   difficulty: str = "easy") -> Path:
    """Generate ``assets`` machines of ``profile``, ``rows`` rows each over the same time range, each with
    its own operating point, noise, load phase and anomaly events (its own seed, spawned from ``seed``),
    and write them as a fleet dataset (module docstring). Written whole or not at all."""
    prof = get_profile(profile)
    ids = asset_ids(assets)

    def machines() -> Iterator[tuple[str, pd.DataFrame, dict[str, Any]]]:
        for asset, child in zip(ids, np.random.SeedSequence(seed).spawn(len(ids))):
            asset_seed = int(child.generate_state(1)[0])
            point = operating_point(np.random.default_rng(child))
            frame, events = generate_with_events(profile, rows, asset_seed, anomaly_rate, difficulty=difficulty,
                                                 operating=point)
            yield asset, frame, {"seed": asset_seed, "operating_point": asdict(point),
                                 "events": event_records(frame, events, fractions)}

    meta = {"source": "synthetic", "profile": profile, "seed": seed, "anomaly_rate": anomaly_rate,
            "difficulty": difficulty, "units": prof.units, "sensors": prof.sensors, "rows_per_asset": rows}
    return write_fleet(out_dir, machines(), meta, fractions, overwrite)


def _asset_frames(input_path: Path, asset_column: str) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(asset id, source name, raw frame) per asset: a directory of files (one per asset, named by its stem), or
    one file whose ``asset_column`` names the asset of each row."""
    if input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if p.suffix.lower() in (".csv", ".parquet"))
        if not files:
            raise DataValidationError(f"{input_path}: no .csv or .parquet files (one per asset, named by the asset id)")
        for file in files:
            yield file.stem, str(file), read_table(file)
        return
    frame = read_table(input_path)
    if asset_column not in frame.columns:
        raise DataValidationError(f"{input_path}: no asset column {asset_column!r} (columns: {list(frame.columns)}); "
                                  "give --asset-column, or a directory with one file per asset")
    if frame[asset_column].isna().any():
        raise DataValidationError(f"{input_path}: column {asset_column!r} is empty in row "
                                  f"{int(np.flatnonzero(frame[asset_column].isna())[0])}")
    for asset, part in frame.groupby(frame[asset_column].astype(str), sort=True):
        yield str(asset), f"{input_path} asset {asset!r}", part.drop(columns=[asset_column]).reset_index(drop=True)


def prepare_fleet(input_path: str | os.PathLike, out_dir: str | os.PathLike, asset_column: str = ASSET_ID,
                  timestamp_col: str = TIMESTAMP, label_col: str | None = "is_anomaly",
                  fractions: tuple[float, float, float] = SPLIT_FRACTIONS, overwrite: bool = False,
                  missing: MissingValues = MissingValues()) -> Path:
    """Validate a user's fleet data and write it as a fleet dataset: one CSV/Parquet file with an
    ``asset_column``, or a directory of files, one per asset. Each asset is validated as
    ``raysys prepare`` validates a file (errors name the asset); every asset must have the same sensors."""
    sensors: list[str] | None = None
    first = ""

    def assets() -> Iterator[tuple[str, pd.DataFrame, dict[str, Any]]]:
        nonlocal sensors, first
        for asset, source, raw in _asset_frames(Path(input_path), asset_column):
            try:
                check_asset_id(asset)
            except ValueError as exc:
                raise DataValidationError(f"{source}: {exc}") from None
            table = validate_table(raw, source, timestamp_col, label_col, missing=missing)
            if sensors is None:
                sensors, first = table.sensors, asset
            elif table.sensors != sensors:
                raise DataValidationError(f"{source}: asset {asset!r} has sensors {table.sensors}, expected "
                                          f"{sensors} (as asset {first!r})")
            yield asset, table.frame, {"interpolated": table.interpolated, "time_gaps": table.time_gaps}

    meta: dict[str, Any] = {"source": str(input_path), "profile": "custom", "asset_column": asset_column}
    frames = list(assets())  # validate every asset before writing any
    meta.update(sensors=sensors, units={s: "" for s in sensors or []})
    return write_fleet(out_dir, frames, meta, fractions, overwrite)


@dataclass
class FleetDataset:
    """A fleet dataset directory: its metadata, and each asset's splits on demand (:meth:`asset`)."""

    path: Path
    metadata: dict[str, Any]

    @property
    def assets(self) -> list[str]:
        """Asset ids, in ``metadata.json`` order."""
        return [a[ASSET_ID] for a in self.metadata["assets"]]

    @property
    def sensors(self) -> list[str]:
        return list(self.metadata["sensors"])

    def asset(self, asset_id: str) -> SensorDataset:
        """Asset ``asset_id``'s splits, validated as a prepared dataset's are; errors name the asset and file."""
        if asset_id not in self.assets:
            raise DataValidationError(f"{self.path}: no asset {asset_id!r} in this fleet (it has {len(self.assets)}: "
                                      f"{', '.join(self.assets[:5])}{', ...' if len(self.assets) > 5 else ''})")
        parts = {}
        for name in SPLITS:
            file = asset_split_file(self.path, name, asset_id)
            try:
                parts[name] = read_split(file, self.sensors, self.path / DATASET_METADATA, f"asset {asset_id!r}: {file}")
            except DataValidationError as exc:  # a missing file is named by its path alone
                message = str(exc)
                raise DataValidationError(message if message.startswith("asset ") else f"asset {asset_id!r}: {message}"
                                          ) from None
        return SensorDataset(self.path, parts["train"], parts["val"], parts["test"],
                             {**self.metadata, ASSET_ID: asset_id})


def _is_fleet(metadata: dict[str, Any]) -> bool:
    return metadata.get("layout") == "fleet" and isinstance(metadata.get("assets"), list)


def load_fleet(path: str | os.PathLike) -> FleetDataset:
    """Open a fleet dataset (reads ``metadata.json``; the assets' files are read by :meth:`FleetDataset.asset`)."""
    root = Path(path)
    meta_path, metadata = open_metadata(root, f"not a fleet dataset (no {DATASET_METADATA}); "
                                              "run `raysys generate --assets N`")
    if not _is_fleet(metadata):
        raise DataValidationError(f"{meta_path}: not a fleet dataset (expected 'layout': 'fleet' and an 'assets' list)")
    return FleetDataset(root, metadata)


def is_fleet_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a fleet dataset (its ``metadata.json`` says ``layout: fleet``; a missing or
    unreadable one is not a fleet: loading it reports why)."""
    try:
        return _is_fleet(open_metadata(Path(path), "")[1])
    except DataValidationError:
        return False
