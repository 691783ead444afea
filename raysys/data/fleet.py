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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysys.data.io import (DataValidationError, SensorDataset, anomaly_counts, atomic_directory, read_metadata,
                            read_split, split_by_time)
from raysys.data.prepare import event_records
from raysys.data.profiles import get_profile
from raysys.data.synthetic import OperatingPoint, generate_with_events
from raysys.layout import ASSET_ID, DATASET_METADATA, SPLITS, asset_split_file

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


def generate_fleet(out_dir: str | os.PathLike, assets: int, profile: str = "water_treatment", rows: int = 20_000,
                   seed: int = 0, anomaly_rate: float = 0.05,
                   fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), overwrite: bool = False,
                   difficulty: str = "easy") -> Path:
    """Generate ``assets`` machines of ``profile``, ``rows`` rows each over the same time range, each with
    its own operating point, noise, load phase and anomaly events (its own seed, spawned from ``seed``),
    and write them as a fleet dataset (module docstring). Written whole or not at all."""
    prof = get_profile(profile)
    ids = asset_ids(assets)
    children = np.random.SeedSequence(seed).spawn(len(ids))
    records = []
    with atomic_directory(out_dir, overwrite) as tmp:
        for asset, child in zip(ids, children):
            asset_seed = int(child.generate_state(1)[0])
            point = operating_point(np.random.default_rng(child))
            frame, events = generate_with_events(profile, rows, asset_seed, anomaly_rate, difficulty=difficulty,
                                                 operating=point)
            splits = split_by_time(frame, fractions)
            for name, part in splits.items():
                path = asset_split_file(tmp, name, asset)
                path.parent.mkdir(parents=True)
                pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path)
            records.append({ASSET_ID: asset, "seed": asset_seed, "operating_point": asdict(point),
                            "rows": {name: len(part) for name, part in splits.items()},
                            "anomaly_counts": anomaly_counts(frame), "events": event_records(frame, events, fractions)})
        meta = {"source": "synthetic", "layout": "fleet", "partitioning": ASSET_ID, "profile": profile,
                "seed": seed, "anomaly_rate": anomaly_rate, "difficulty": difficulty, "units": prof.units,
                "fractions": list(fractions), "sensors": prof.sensors, "rows_per_asset": rows, "assets": records}
        (tmp / DATASET_METADATA).write_text(json.dumps(meta, indent=2, default=str))
    return Path(out_dir)


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


def load_fleet(path: str | os.PathLike) -> FleetDataset:
    """Open a fleet dataset (reads ``metadata.json``; the assets' files are read by :meth:`FleetDataset.asset`)."""
    root = Path(path)
    meta_path = root / DATASET_METADATA
    if not meta_path.exists():
        raise DataValidationError(f"{root}: not a fleet dataset (no {DATASET_METADATA}); "
                                  "run `raysys generate --assets N`")
    metadata = read_metadata(meta_path)
    if metadata.get("layout") != "fleet" or not isinstance(metadata.get("assets"), list):
        raise DataValidationError(f"{meta_path}: not a fleet dataset (expected 'layout': 'fleet' and an 'assets' list)")
    return FleetDataset(root, metadata)
