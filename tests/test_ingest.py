"""Streamed training (raysys.train.ingest): samples made block by block never straddle a file, an asset or a
time gap; bad files are named before training; ``auto`` picks memory or stream; a split larger than the
object store of a small dedicated Ray cluster trains with 2 workers reading disjoint shards that cover it,
batch by batch (the workers never hold the split); and a sweep streams its trials."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysys.data import DataValidationError, load_dataset
from raysys.data.preprocessing import fit_scaler, scaler_to_dict
from raysys.data.source import PATH, open_source
from raysys.layout import ASSET_ID
from raysys.train.ingest import (HOLDOUT, STREAM_MIN_ROWS, TRAIN, BlockSamples, check_data_cpus,
                                 check_training_data, open_training_data, resolve_ingest)

SENSORS = ["a", "b"]


def _block(files: dict[str, int], step: str = "1min", gap_after: int | None = None) -> pd.DataFrame:
    """Rows of several files in one block; sensor ``a`` holds the file's index * 1000 + the row's number in
    it, so a window's values say which file and rows it read. ``gap_after``: a 10-step gap after that row."""
    parts = []
    for i, (name, n) in enumerate(files.items()):
        times = pd.date_range("2024-01-01", periods=n, freq=step) + pd.Timedelta(days=i)
        if gap_after is not None:
            times = times.where(np.arange(n) <= gap_after, times + 10 * pd.Timedelta(step))
        parts.append(pd.DataFrame({"timestamp": times, "a": i * 1000.0 + np.arange(n), "b": 1.0, PATH: name}))
    return pd.concat(parts, ignore_index=True)


def _identity_scaler() -> dict:
    scaler = fit_scaler("standard", np.array([[-1.0, -1.0], [1.0, 1.0]]))
    scaler.mean_[:], scaler.scale_[:] = 0.0, 1.0
    return scaler_to_dict(scaler)


def _windows(block: pd.DataFrame, part: str = TRAIN, cut: str = "2030-01-01", **params) -> dict[str, np.ndarray]:
    make = BlockSamples("lstm", {"window": 4, "stride": 1, **params}, SENSORS, _identity_scaler(), part,
                        pd.Timestamp(cut))
    return make(block)


def test_windows_never_straddle_a_file_an_asset_or_a_time_gap():
    out = _windows(_block({"f0.parquet": 10, "f1.parquet": 7}))
    a = out["x"][:, :, 0]
    assert out["x"].shape == (7 + 4, 4, 2)  # 10 - 3 windows of f0, 7 - 3 of f1: none spans both
    assert (a // 1000 == a[:, :1] // 1000).all()  # every window reads one file
    assert (np.diff(a, axis=1) == 1).all()  # consecutive rows of it
    # the same two runs as one file but two assets (Hive partitions): windows stay within an asset
    block = _block({"f.parquet": 10, "g.parquet": 7})
    block[ASSET_ID] = np.where(block[PATH] == "f.parquet", "pump-1", "pump-2")
    block[PATH] = "all.parquet"
    assert len(_windows(block)["x"]) == 7 + 4
    # a 10-step time gap after row 5 of a 10-row file: windows on each side, none across
    gap = _windows(_block({"f0.parquet": 10}, gap_after=5))["x"][:, :, 0]
    assert gap.shape == (3 + 1, 4) and (np.diff(gap, axis=1) == 1).all()
    # a run shorter than a window gives none; the times are each window's last row
    assert len(_windows(_block({"f0.parquet": 3}))["x"]) == 0
    out = _windows(_block({"f0.parquet": 5}))
    assert out["t"].tolist() == [pd.Timestamp(t).value // 1000 for t in _block({"f0.parquet": 5})["timestamp"][3:]]


def test_the_hold_out_cut_and_labels_choose_the_samples():
    block = _block({"f0.parquet": 10})
    cut = str(block["timestamp"][6])
    assert _windows(block, TRAIN, cut)["x"][:, -1, 0].tolist() == [3.0, 4.0, 5.0]
    assert _windows(block, HOLDOUT, cut)["x"][:, -1, 0].tolist() == [9.0]  # rows 6-9 from the cut: one window
    block["is_anomaly"] = (block["a"] == 4).astype("int8")
    assert _windows(block, TRAIN)["x"][:, -1, 0].tolist() == [3.0, 8.0, 9.0]  # windows reading row 4 are left out
    dense = BlockSamples("ae", {"lags": 1}, SENSORS, _identity_scaler(), TRAIN, pd.Timestamp("2030-01-01"))(block)
    assert dense["x"].shape == (10 - 2, 4)  # a lagged sample reads its row and the one before


def test_blocks_are_validated_naming_the_file():
    block = _block({"f0.parquet": 10})
    block.loc[3, "b"] = np.inf
    with pytest.raises(DataValidationError, match=r"f0.parquet: column 'b' has 1 infinite values"):
        _windows(block)


@pytest.fixture()
def split_dirs(small_dataset, tmp_path) -> Path:
    """The small data set as split directories: ``train/`` of three files, ``val/`` and ``test/`` of one."""
    local = load_dataset(small_dataset)
    for split in ("train", "val", "test"):
        frame = local.split(split)
        (tmp_path / split).mkdir()
        for i, part in enumerate(np.array_split(np.arange(len(frame)), 3 if split == "train" else 1)):
            frame.iloc[part].to_parquet(tmp_path / split / f"part-{i}.parquet", index=False)
    return tmp_path


def test_auto_ingest_streams_split_directories_and_loads_small_prepared_sets(small_dataset, split_dirs):
    assert resolve_ingest("auto", open_source(small_dataset)) == "memory"  # 2,100 training rows
    assert len(load_dataset(small_dataset).train) < STREAM_MIN_ROWS
    assert resolve_ingest("auto", open_source(split_dirs)) == "stream"
    assert check_training_data(str(split_dirs)) == "stream"
    with pytest.raises(ValueError, match="ingest 'memory' needs a local prepared data set"):
        resolve_ingest("memory", open_source(split_dirs))
    # no metadata.json: the sensors are the numeric columns besides timestamp and labels
    assert open_source(split_dirs).metadata()["sensors"] == load_dataset(small_dataset).sensors


def test_a_corrupt_or_mismatched_file_is_named_before_training(split_dirs):
    bad = split_dirs / "test" / "part-0.parquet"
    bad.write_bytes(b"PAR1 not parquet at all")
    with pytest.raises(DataValidationError, match=rf"{bad}: not a readable Parquet file"):
        check_training_data(str(split_dirs))
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=r"test/ holds no .parquet files"):
        check_training_data(str(split_dirs))
    mismatched = split_dirs / "train" / "part-1.parquet"
    table = pq.read_table(mismatched)
    pq.write_table(table.set_column(table.schema.get_field_index("level"), "level",
                                    pa.array(table["level"].to_numpy().astype("float32"))), mismatched)
    with pytest.raises(DataValidationError, match=r"train/part-1.parquet: sensor types differ from .*train/part-0"
                                                  r".parquet \(expected, got\): \{'level': \('double', 'float'\)\}"):
        check_training_data(str(split_dirs))


#: The dedicated cluster's object store (Ray's minimum is 75 MiB) and the training split's size in memory: larger.
OBJECT_STORE = 80 * 1024**2
BIG_ROWS, BIG_SENSORS, BIG_FILES = 480_000, 24, 6


def _write_big(root: Path) -> int:
    """A training split of ``BIG_FILES`` files (random walks, no labels), small val and test; its bytes in memory."""
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2024-01-01")
    per_file = BIG_ROWS // BIG_FILES
    nbytes = 0
    for split, files, rows in (("train", BIG_FILES, per_file), ("val", 1, 2000), ("test", 1, 2000)):
        (root / split).mkdir(parents=True)
        for i in range(files):
            values = np.cumsum(rng.normal(0, 0.1, (rows, BIG_SENSORS)), axis=0)
            frame = pd.DataFrame(values, columns=[f"s{j}" for j in range(BIG_SENSORS)])
            frame.insert(0, "timestamp", pd.date_range(start, periods=rows, freq="1s"))
            start += pd.Timedelta(seconds=rows)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            nbytes += table.nbytes if split == "train" else 0
            pq.write_table(table, root / split / f"part-{i}.parquet", row_group_size=20_000)
    return nbytes


def test_a_split_larger_than_the_object_store_streams_into_two_workers(tmp_path):
    data = tmp_path / "big"
    nbytes = _write_big(data)
    assert nbytes > OBJECT_STORE
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("stream_train_job.py")), str(data),
                           str(tmp_path / "out"), str(OBJECT_STORE)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["epochs"] == 1 and np.isfinite(result["threshold"])
    ranks = [json.loads(f.read_text())["stream"] for f in sorted((tmp_path / "out" / "diagnostics").glob("rank*.json"))]
    assert len(ranks) == 2
    # no worker held the split: each saw batches of at most its share of the global batch, and a part of the rows
    for rank in ranks:
        assert 0 < rank["max_batch"] <= rank["batch_size"] == 1024
        assert rank["samples"] < BIG_ROWS * 0.6
    # the shards are disjoint and cover the training rows before the hold-out cut (Ray's equal split may drop
    # fewer rows than there are workers, so each takes the same number of steps)
    times = [set(r["times"]) for r in ranks]
    assert not times[0] & times[1]
    stamps = pd.date_range("2024-01-01", periods=BIG_ROWS, freq="1s")
    cut = stamps[0] + (stamps[-1] - stamps[0]) * (1 - 0.1)
    expected = {t.value // 1000 for t in stamps[stamps < cut]}
    assert times[0] | times[1] <= expected and len(expected - (times[0] | times[1])) < 2


def test_a_sweep_streams_its_trials_and_exports_from_the_sample(ray_cluster, split_dirs, mlflow_uri, tmp_path):
    """raysys tune on split directories: the trial streams (2 workers at 0.5 CPU), the best detector is exported
    with the streamed scaler, and the sweep's record says how it read the data."""
    from raysys.models import load_detector
    from raysys.tune import SweepConfig, run_sweep

    config = SweepConfig.quick(name="streamed", families=["ae"], num_samples=1, max_epochs=1, workers_per_trial=2,
                               cpus_per_worker=0.5, max_concurrent=1, storage_path=str(tmp_path / "runs"),
                               tracking_uri=mlflow_uri, seed=0)
    # two trials of one 1-CPU worker at once would leave Ray Data no CPU on this 2-CPU cluster: refused up front
    crowded = config.replace(workers_per_trial=1, cpus_per_worker=1, max_concurrent=2)
    with pytest.raises(ValueError, match=r"2 workers x 1 CPU hold 2; lower max_concurrent"):
        run_sweep(crowded, split_dirs, ingest="stream")
    assert not (tmp_path / "runs").exists()  # before any sweep directory or MLflow run
    with pytest.raises(ValueError, match=r"2 workers x 1 CPU hold 2; use fewer workers"):
        check_data_cpus(2, 1.0)
    check_data_cpus(2, 0.5)
    result = run_sweep(config, split_dirs, ingest="stream")
    assert result.finished and list(result.best) == ["ae"]
    record = json.loads((result.sweep_dir / "raysys_sweep.json").read_text())
    assert (record["data"], record["ingest"]) == (str(split_dirs), "stream")
    detector = load_detector(result.best["ae"]["checkpoint"])
    streamed = open_training_data(str(split_dirs), "ae", {}, "stream").loop_config["scaler"]
    np.testing.assert_allclose(detector.scaler_.mean_, streamed["mean_"])
    assert 0 <= result.best["ae"]["metric"] <= 1  # validation PR AUC on the sample (here: the whole split)


def test_a_data_set_without_splits_is_split_by_time(ray_cluster, small_dataset, tmp_path):
    """Parquet files with no split layout: train, val and test are the 70/15/15% of the time span (from the
    footers' statistics), read through Ray Data and sampled from the row groups that reach into each."""
    local = load_dataset(small_dataset)
    whole = pd.concat([local.train, local.val, local.test], ignore_index=True)
    root = tmp_path / "history"
    root.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(whole)), 4)):
        whole.iloc[part].to_parquet(root / f"day-{i}.parquet", index=False, row_group_size=250)
    source = open_source(root)
    assert source.time_split and source.split_files("train") == source.split_files("test")
    assert resolve_ingest("auto", source) == "stream"
    start, end = whole["timestamp"].min(), whole["timestamp"].max()
    cuts = [None, start + (end - start) * 0.7, start + (end - start) * 0.85, None]
    bounds = [start, cuts[1], cuts[2], end + pd.Timedelta(1, "s")]
    for i, split in enumerate(("train", "val", "test")):
        assert source.split_window(split) == (cuts[i], cuts[i + 1])
        expected = whole[(whole["timestamp"] >= bounds[i]) & (whole["timestamp"] < bounds[i + 1])]
        assert source.read(split, local.sensors).count() == len(expected)
        sampled = source.sample_split(split, local.sensors)
        np.testing.assert_allclose(sampled[local.sensors].to_numpy(), expected[local.sensors].to_numpy())
    assert source.sample().metadata["rows"] == len(whole)  # each file counted once, not once per split
    assert not open_source(small_dataset).time_split  # a prepared data set has its own splits


def test_pipeline_and_tune_take_the_data_flags_and_never_write_secrets(tmp_path):
    from raysys.cli import build_parser
    from raysys.pipeline.config import load_pipeline_config

    options = '{"endpoint_override": "http://minio:9000", "secret_key": "s3cr3t", "access_key": "AKIA"}'
    for argv in (["pipeline", "--data", "s3://plant/line-3", "--ingest", "stream", "--storage-options", options],
                 ["tune", "--data", "s3://plant/line-3", "--ingest", "stream", "--storage-options", options]):
        args = build_parser().parse_args(argv)
        assert (args.data, args.ingest, args.storage_options["secret_key"]) == ("s3://plant/line-3", "stream", "s3cr3t")
    config = tmp_path / "pipeline.yaml"
    config.write_text("ingest: stream\nstorage_options: {region: eu-west-1}\n")
    args = build_parser().parse_args(["pipeline", "--config", str(config)])
    cfg = load_pipeline_config(args.config, data="s3://plant/line-3", ingest=args.ingest,
                               storage_options=args.storage_options)
    assert (cfg.ingest, cfg.storage_options) == ("stream", {"region": "eu-west-1"})  # the file's, not the flags'
    cfg = load_pipeline_config(None, data="s3://plant/line-3", storage_options=json.loads(options))
    assert cfg.to_dict()["storage_options"] == {"endpoint_override": "http://minio:9000"}
    with pytest.raises(SystemExit):  # argparse: "--storage-options: expected a JSON object"
        build_parser().parse_args(["train", "--data", "x", "--storage-options", "[1, 2]"])


def test_a_run_whose_data_fails_to_open_ends_failed_in_mlflow(ray_cluster, split_dirs, mlflow_uri, tmp_path):
    """train() called directly (no CLI pre-check) on a data set with a corrupt file: the error names the file and
    the MLflow run it had started is FAILED, not left RUNNING."""
    from mlflow.tracking import MlflowClient

    from raysys.train import TrainConfig, train

    bad = split_dirs / "val" / "part-0.parquet"
    bad.write_bytes(b"PAR1 not parquet at all")
    cfg = TrainConfig(data=str(split_dirs), ingest="stream", num_workers=2, cpus_per_worker=0.5,
                      storage_path=str(tmp_path / "runs"), run_name="bad", tracking_uri=mlflow_uri, experiment="bad")
    with pytest.raises(DataValidationError, match=rf"{bad}: not a readable Parquet file"):
        train(cfg)
    record = json.loads((tmp_path / "runs" / "bad" / "raysys_run.json").read_text())
    assert MlflowClient(mlflow_uri).get_run(record["mlflow_run_id"]).info.status == "FAILED"
