"""How a training run reads its data: in memory, or streamed through Ray Data into the Ray Train workers.

``memory``: every worker loads the prepared data set directory (``load_dataset``) and samples it with a
``DataLoader``; for data that fits, and measurably faster there (docs/benchmarks.md#ingest).

``stream``: nothing loads a whole split. The driver checks every file's footer, computes the scaler in one
pass of Ray Data aggregates (``streaming_scaler``) and the training split's time range, and hands Ray Train two
Ray Data datasets of the detector's samples: ``train`` (rows before the hold-out cut) and ``holdout`` (the last
``validation_fraction`` of the split's time span: the validation loss and early stopping, as the in-memory
path holds out the last samples). Ray Train splits each across the workers (``get_dataset_shard``), a worker
iterates its shard batch by batch (:class:`ShardLoader`), and every block becomes samples in a Ray Data task
(:class:`BlockSamples`), so a worker holds a few blocks and batches, never the split. Evaluation, threshold
calibration and the workers' final statistics use a bounded sample of each split (``DataSource.sample``,
``SAMPLE_ROWS`` rows at most). docs/data.md#streaming-training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from raysys.cluster import is_verbose
from raysys.data import LABEL, TIMESTAMP, SensorDataset, load_dataset
from raysys.data.io import GAP_FACTOR, validate_table
from raysys.data.preprocessing import scaler_from_dict, scaler_to_dict
from raysys.data.source import PATH, SAMPLE_ROWS, DataSource, open_source, streaming_scaler
from raysys.layout import ASSET_ID, DATASET_METADATA, SPLITS

#: ``TrainConfig.ingest`` values; ``auto`` streams remote data, split directories and training splits of more than
#: ``STREAM_MIN_ROWS`` rows, and loads the rest in memory.
INGEST_MODES = ("auto", "memory", "stream")
#: Where ``auto`` starts streaming a local prepared data set (docs/benchmarks.md#ingest: below it the in-memory
#: loader is faster per sample and a worker's copy of the split is small).
STREAM_MIN_ROWS = 2_000_000
#: The two Ray Data datasets of a streamed run (``ray.train.get_dataset_shard`` names).
TRAIN, HOLDOUT = "train", "holdout"
#: CPUs a streamed run leaves to Ray Data beyond what its workers hold: its tasks (listing, reading, making
#: samples) ask for one CPU each and would wait forever on a cluster the workers fill.
DATA_CPUS = 1.0
#: Batches a worker's iterator prepares ahead of the one training (Ray Data's ``prefetch_batches``).
PREFETCH_BATCHES = 4
#: Samples each worker shuffles among (Ray Data's local shuffle buffer), in batches: the streamed path shuffles
#: within this window of its shard, not over the whole split as the in-memory loader does.
SHUFFLE_BATCHES = 8


def resolve_ingest(ingest: str, source: DataSource) -> str:
    """``memory`` or ``stream`` for ``ingest`` (``auto``: see :data:`INGEST_MODES`) on ``source``."""
    if ingest not in INGEST_MODES:
        raise ValueError(f"ingest must be one of {INGEST_MODES}, got {ingest!r}")
    if ingest != "auto":
        if ingest == "memory" and not is_prepared_directory(source):
            raise ValueError(f"{source.uri}: ingest 'memory' needs a local prepared data set ({DATASET_METADATA} and "
                             f"{', '.join(s + '.parquet' for s in SPLITS)}); stream it instead (--ingest stream)")
        return ingest
    if not is_prepared_directory(source):
        return "stream"
    return "stream" if source.row_counts(source.split_files("train"))[0] > STREAM_MIN_ROWS else "memory"


def is_prepared_directory(source: DataSource) -> bool:
    """Whether ``source`` is a local prepared data set: ``metadata.json`` and one Parquet file per split."""
    if not isinstance(source.filesystem, pafs.LocalFileSystem):
        return False
    paths = [f"{source.root}/{DATASET_METADATA}", *(f"{source.root}/{s}.parquet" for s in SPLITS)]
    return all(info.type == pafs.FileType.File for info in source.filesystem.get_file_info(paths))


@dataclass
class BlockSamples:
    """Ray Data ``map_batches`` function: a block of raw rows to the detector's training samples (column ``x``)
    and the time of each sample's last row (``t``, microseconds since the epoch).

    The block's rows are cut into segments that never cross a file, an asset or a time gap (an interval over
    ``GAP_FACTOR`` times the segment's median one); each segment is validated as a table (names, types,
    finiteness, interpolation bounds; errors name the file), its ``part`` of the rows kept (``train``: before
    ``cut``, ``holdout``: from it), scaled, and turned into samples by the detector itself
    (``training_samples``: lagged rows or windows), without those holding a known anomaly. A segment shorter
    than the detector's ``min_rows`` (a window) gives none.

    Args:
        family, params: The detector.
        sensors: The sensor columns, in order.
        scaler: Its fitted scaler (``scaler_to_dict``).
        part: ``train`` or ``holdout``.
        cut: The hold-out cut (a timestamp).
    """

    family: str
    params: dict[str, Any]
    sensors: list[str]
    scaler: dict[str, Any]
    part: str
    cut: pd.Timestamp
    _detector: Any = field(default=None, init=False, repr=False)

    @property
    def detector(self) -> Any:
        if self._detector is None:
            from raysys.models import build_detector

            self._detector = build_detector(self.family, **self.params)
            self._detector.scaler_ = scaler_from_dict(self.scaler)
        return self._detector

    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        n = len(self.sensors)
        return self.detector.training_samples(np.zeros((self.detector.min_rows(), n), np.float32)).shape[1:]

    def __call__(self, block: pd.DataFrame) -> dict[str, np.ndarray]:
        xs, ts = [np.zeros((0, *self.sample_shape()), np.float32)], [np.zeros(0, np.int64)]
        for source, rows in segments(block):
            table = validate_table(rows.drop(columns=[c for c in (PATH, ASSET_ID) if c in rows]), source,
                                   min_rows=1).frame
            keep = table[TIMESTAMP] < self.cut if self.part == TRAIN else table[TIMESTAMP] >= self.cut
            table = table[keep.to_numpy()]
            if len(table) < self.detector.min_rows():
                continue
            y = table[LABEL].to_numpy() if LABEL in table else None
            micros = table[TIMESTAMP].to_numpy().astype("datetime64[us]").astype(np.float64).reshape(-1, 1)
            xs.append(self.detector.normal_samples(table[self.sensors].to_numpy(np.float32), y))
            times = self.detector.drop_anomalous(self.detector.training_samples(micros), y)
            ts.append(times.reshape(len(times), -1).max(axis=1).astype(np.int64))
        return {"x": np.concatenate(xs), "t": np.concatenate(ts)}


def segments(block: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(file, rows)`` runs of ``block`` that share a file and an asset and hold no time gap, in order."""
    keys = [c for c in (PATH, ASSET_ID) if c in block.columns]
    groups = block.groupby(keys, sort=False) if keys else [("", block)]
    for key, rows in groups:
        source = str(key[0] if isinstance(key, tuple) else key)
        steps = np.diff(pd.to_datetime(rows[TIMESTAMP]).to_numpy().astype("int64"))
        if len(steps) == 0:
            yield source, rows
            continue
        cuts = np.flatnonzero(steps > GAP_FACTOR * np.median(steps)) + 1
        for a, b in zip([0, *cuts], [*cuts, len(rows)]):
            yield source, rows.iloc[a:b]


@dataclass
class TrainingData:
    """What a training run reads.

    Args:
        ingest: ``memory`` or ``stream``.
        dataset: The data set in memory (``memory``; None when not loaded), or its bounded sample
            (``stream``): what evaluation, calibration and reports read.
        datasets: ``TorchTrainer(datasets=...)``: ``train`` and ``holdout`` sample datasets (``stream``).
        loop_config: What the workers need besides the model (``train_fn_per_worker``'s config).
    """

    ingest: str
    dataset: SensorDataset | None
    datasets: dict[str, Any] = field(default_factory=dict)
    loop_config: dict[str, Any] = field(default_factory=dict)


def open_training_data(data: str, model: str, params: dict[str, Any], ingest: str = "auto",
                       storage_options: dict[str, Any] | None = None, sample_rows: int = SAMPLE_ROWS,
                       load: bool = True, check: bool = True) -> TrainingData:
    """The data of a run training ``model`` (``params``) on ``data`` (a local path or object-store URI).

    In memory, ``load=False`` leaves ``dataset`` None (the workers load it; a sweep trial needs no copy).
    Streamed: checks every file's footer first (a corrupt or mismatched file fails here, named, before any
    training; ``check=False`` when the caller has, as a sweep does once for all its trials), then makes one
    pass for the scaler, one over the timestamps for the hold-out cut, and reads the bounded sample. Needs Ray
    initialised.
    """
    source = open_source(data, storage_options)
    mode = resolve_ingest(ingest, source)
    if mode == "memory":
        dataset = load_dataset(source.root) if load else None
        return TrainingData(mode, dataset, loop_config={"ingest": mode, "data": source.root})

    import ray
    from ray.data.expressions import col, lit

    from raysys.models import build_detector

    # Ray Data's progress bars only with --verbose (the context travels with the datasets to their executors)
    ray.data.DataContext.get_current().enable_progress_bars = is_verbose()
    detector = build_detector(model, **params)
    sensors = checked_sensors(source) if check else source.metadata()["sensors"]
    rows = source.read("train", sensors, check=False)
    scaler, start, end = outside_placement_group(split_statistics, rows, sensors, detector.scaler)
    cut = start + (end - start) * (1.0 - detector.validation_fraction)
    samples = {TRAIN: rows.filter(expr=col(TIMESTAMP) < lit(cut)),
               HOLDOUT: rows.filter(expr=col(TIMESTAMP) >= lit(cut))}
    datasets = {part: ds.map_batches(BlockSamples(model, params, sensors, scaler, part, cut), batch_size=None,
                                     batch_format="pandas") for part, ds in samples.items()}
    sample = source.sample(sample_rows)
    return TrainingData(mode, sample, datasets, {"ingest": mode, "scaler": scaler, "sample": ray.put(sample)})


def split_statistics(rows: Any, sensors: list[str], scaler: str) -> tuple[dict[str, Any], pd.Timestamp, pd.Timestamp]:
    """One pass for the scaler of kind ``scaler`` over a training split's normal ``rows`` (a Ray Data dataset)
    and one over its timestamps: ``(scaler_to_dict, first timestamp, last timestamp)``."""
    from ray.data.aggregate import Max, Min

    fitted = scaler_to_dict(streaming_scaler(rows, sensors, scaler))
    span = rows.select_columns([TIMESTAMP]).aggregate(Min(TIMESTAMP, alias_name="start"),
                                                      Max(TIMESTAMP, alias_name="end"))
    return fitted, pd.Timestamp(span["start"]), pd.Timestamp(span["end"])


def outside_placement_group(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, in a Ray task outside the placement group this process runs in, if any: Ray Data's
    shuffle tasks (aggregates) would otherwise be scheduled into it, and a Tune trial's holds no CPU."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if ray.util.get_current_placement_group() is None:
        return fn(*args)
    task = ray.remote(fn).options(num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(None))
    return ray.get(task.remote(*args))


def check_training_data(data: str, ingest: str = "auto", storage_options: dict[str, Any] | None = None) -> str:
    """Check ``data`` before any Ray work and return the ingest it resolves to: an in-memory data set is loaded
    and validated; a streamed one has its metadata and every file's footer checked (its rows are validated
    block by block as training reads them)."""
    source = open_source(data, storage_options)
    mode = resolve_ingest(ingest, source)
    if mode == "memory":
        load_dataset(source.root)
    else:
        checked_sensors(source)
    return mode


def evaluation_dataset(data: str, ingest: str = "auto", storage_options: dict[str, Any] | None = None,
                       sample_rows: int = SAMPLE_ROWS) -> SensorDataset:
    """What the stages after training (evaluation, the sweep's export, the ensemble, reports) read of ``data``:
    the whole data set when it trains in memory, its bounded sample (``DataSource.sample``) when it streams."""
    source = open_source(data, storage_options)
    if resolve_ingest(ingest, source) == "memory":
        return load_dataset(source.root)
    checked_sensors(source)
    return source.sample(sample_rows)


def checked_sensors(source: DataSource) -> list[str]:
    """``source``'s sensors, after checking every file of every split holds them (``DataSource.check_files``)."""
    sensors = source.metadata()["sensors"]
    for split in SPLITS:
        source.check_files(source.split_files(split), sensors)
    return sensors


#: What to change when a streamed training run's workers leave Ray Data no CPU (``check_data_cpus``).
TRAIN_CPU_FIX = "use fewer workers, a smaller --cpus-per-worker, a larger cluster, or --ingest memory"


def check_data_cpus(num_workers: int, cpus_per_worker: float, fix: str = TRAIN_CPU_FIX) -> None:
    """Fail fast when ``num_workers`` Train workers (all those that may run at once) would leave Ray Data less
    than :data:`DATA_CPUS` of the cluster: its tasks would wait forever.

    Raises:
        ValueError: naming the cluster's CPUs, the workers' share and what to change (``fix``).
    """
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    if total - num_workers * cpus_per_worker < DATA_CPUS:
        raise ValueError(f"streaming needs {DATA_CPUS:g} CPU for Ray Data's reading beyond the Train workers': the "
                         f"cluster has {total:g} CPUs and {num_workers} workers x {cpus_per_worker:g} CPU hold "
                         f"{num_workers * cpus_per_worker:g}; {fix}")


class ShardLoader:
    """A worker's shard of a streamed dataset as a re-iterable of sample batches (what ``run_epochs`` takes for
    a ``DataLoader``): each pass runs Ray Data's iterator again, ``batch_size`` samples at a time, shuffled
    within :data:`SHUFFLE_BATCHES` batches (a new seed per pass, for ``shuffle``).

    It keeps what the diagnostics of a run report: the largest batch it yielded, the samples of its first
    pass and, with ``record``, their times, and the seconds training waited for batches.
    """

    def __init__(self, shard: Any, batch_size: int, shuffle: bool, seed: int, record: bool = False):
        self.shard, self.batch_size, self.shuffle, self.seed, self.record = shard, batch_size, shuffle, seed, record
        self.passes, self.max_batch, self.first_pass, self.times, self.wait_seconds = 0, 0, 0, [], 0.0

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        shuffle = {"local_shuffle_buffer_size": SHUFFLE_BATCHES * self.batch_size,
                   "local_shuffle_seed": self.seed + self.passes} if self.shuffle else {}
        batches = iter(self.shard.iter_torch_batches(batch_size=self.batch_size, device="cpu",
                                                     prefetch_batches=PREFETCH_BATCHES, **shuffle))
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            self.wait_seconds += time.perf_counter() - asked
            if batch is None:
                return
            self.max_batch = max(self.max_batch, len(batch["x"]))
            if self.passes == 1:
                self.first_pass += len(batch["x"])
                if self.record:
                    self.times.extend(batch["t"].tolist())
            yield batch["x"]
