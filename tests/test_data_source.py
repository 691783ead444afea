"""Data sets on a real S3-compatible server (moto's server mode on 127.0.0.1), read through pyarrow's S3
filesystem and Ray Data on the session's Ray cluster; streamed scalers against scikit-learn's; a training run
streaming from s3://."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
from conftest import free_port
from mlflow.tracking import MlflowClient

from raysys.data import DataValidationError, generate_dataset, load_dataset
from raysys.data.preprocessing import fit_scaler
from raysys.data.source import QUANTILE_PRECISION, QUANTILE_RANK_ERROR, open_source, streaming_scaler
from raysys.layout import RUN_RECORD
from raysys.train import TrainConfig, train
from raysys.models import load_detector
from raysys.train.ingest import TRAIN, evaluation_dataset, open_training_data
from raysys.tune.export import materialize_detector

moto_server = pytest.importorskip("moto.server")

BUCKET = "plant"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 endpoint (moto's server, HTTP on 127.0.0.1) with bucket ``plant`` holding a prepared data set
    whose train split is a folder of three files; yields the storage options that reach it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_override": f"http://{host}:{port}", "access_key": "test", "secret_key": "test",
               "region": "us-east-1", "scheme": "http", "allow_bucket_creation": True}
    filesystem = pafs.S3FileSystem(**options)
    filesystem.create_dir(BUCKET)
    local = load_dataset(generate_dataset(tmp_path_factory.mktemp("s3") / "data", rows=3000, seed=11))
    bounds = np.linspace(0, len(local.train), 4).astype(int)
    for i, part in enumerate(local.train.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])):
        with filesystem.open_output_stream(f"{BUCKET}/data/train/part-{i}.parquet") as out:
            part.to_parquet(out, index=False)
    for split in ("val", "test"):
        with filesystem.open_output_stream(f"{BUCKET}/data/{split}.parquet") as out:
            local.split(split).to_parquet(out, index=False)
    yield options, local
    server.stop()


def test_a_split_reads_from_s3_through_ray_data_file_by_file(ray_cluster, s3):
    options, local = s3
    source = open_source(f"s3://{BUCKET}/data", options)
    assert [f.rsplit("/", 1)[1] for f in source.split_files("train")] == ["part-0.parquet", "part-1.parquet",
                                                                         "part-2.parquet"]
    assert source.split_files("val") == [f"{BUCKET}/data/val.parquet"]
    frame = source.read("train", local.sensors).to_pandas()
    assert frame["path"].nunique() == 3  # each row knows its file: windows never cross one
    frame = frame.sort_values("timestamp").reset_index(drop=True)
    pd.testing.assert_frame_equal(frame[local.sensors], local.train[local.sensors], check_dtype=False)


def test_bad_files_and_unreachable_stores_are_named(ray_cluster, s3, tmp_path):
    options, local = s3
    filesystem = pafs.S3FileSystem(**options)
    with filesystem.open_output_stream(f"{BUCKET}/broken/train/part-0.parquet") as out:
        local.train.to_parquet(out, index=False)
    with filesystem.open_output_stream(f"{BUCKET}/broken/train/part-1.parquet") as out:
        out.write(b"PAR1 this is not parquet")
    source = open_source(f"s3://{BUCKET}/broken", options)
    with pytest.raises(DataValidationError, match=rf"s3://{BUCKET}/broken/train/part-1.parquet: not a readable Parquet"):
        source.read("train", local.sensors)
    with filesystem.open_output_stream(f"{BUCKET}/broken/train/part-1.parquet") as out:
        local.train.drop(columns=["pressure"]).to_parquet(out, index=False)
    with pytest.raises(DataValidationError, match=r"part-1.parquet: no sensor column\(s\) \['pressure'\]"):
        source.read("train", local.sensors)
    with filesystem.open_output_stream(f"{BUCKET}/broken/train/part-1.parquet") as out:
        local.train.astype({"pressure": str}).to_parquet(out, index=False)
    with pytest.raises(DataValidationError, match=r"part-1.parquet: sensor column\(s\) not numeric: \{'pressure'"):
        source.read("train", local.sensors)
    with pytest.raises(FileNotFoundError, match=rf"s3://{BUCKET}/nowhere: no such data set"):
        open_source(f"s3://{BUCKET}/nowhere", options)
    with pytest.raises(FileNotFoundError, match=r"no val split \(neither val.parquet nor val/\)"):
        source.split_files("val")
    with pytest.raises(OSError, match=r"s3://x/y: cannot reach the store"):
        open_source("s3://x/y", {**options, "endpoint_override": f"http://127.0.0.1:{free_port()}",
                                 "connect_timeout": 1, "request_timeout": 1, "retry_strategy":
                                     pafs.AwsStandardS3RetryStrategy(max_attempts=1)})


def normal_rows(dataset) -> np.ndarray:
    """The training split's normal rows at the files' own precision (float64)."""
    train = dataset.train
    return train.loc[train["is_anomaly"] == 0, dataset.sensors].to_numpy(np.float64)


@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_streamed_standard_and_minmax_scalers_equal_scikit_learns(ray_cluster, s3, kind):
    options, local = s3
    streamed = streaming_scaler(open_source(f"s3://{BUCKET}/data", options).read("train", local.sensors),
                                local.sensors, kind)
    exact = fit_scaler(kind, normal_rows(local))
    X = local.test[local.sensors].to_numpy(np.float64)
    np.testing.assert_allclose(streamed.transform(X), exact.transform(X), rtol=1e-9, atol=1e-9)
    assert streamed.n_samples_seen_ == exact.n_samples_seen_


def test_the_streamed_robust_scaler_is_within_its_stated_rank_error(ray_cluster, s3):
    """The median lies between the exact quantiles at 0.5 -/+ the rank error; the interquartile range between
    the narrowest and widest ranges those bounds allow (float32 sketch values: 1e-6 relative slack)."""
    from datasketches import kll_floats_sketch

    assert QUANTILE_RANK_ERROR >= kll_floats_sketch.get_normalized_rank_error(QUANTILE_PRECISION, False)
    options, local = s3
    streamed = streaming_scaler(open_source(f"s3://{BUCKET}/data", options).read("train", local.sensors),
                                local.sensors, "robust")
    X = normal_rows(local)
    e, slack = QUANTILE_RANK_ERROR, 1e-6
    for j in range(X.shape[1]):
        q = dict(zip(("q1-", "q1+", "m-", "m+", "q3-", "q3+"),
                     np.quantile(X[:, j], [0.25 - e, 0.25 + e, 0.5 - e, 0.5 + e, 0.75 - e, 0.75 + e])))
        assert q["m-"] - slack * abs(q["m-"]) <= streamed.center_[j] <= q["m+"] + slack * abs(q["m+"])
        assert (q["q3-"] - q["q1+"]) * (1 - slack) <= streamed.scale_[j] <= (q["q3+"] - q["q1-"]) * (1 + slack)


def test_training_streams_from_s3_through_an_endpoint_override(ray_cluster, s3, tmp_path):
    """A 2-worker LSTM run reads s3:// (train/ is three files) through Ray Data: the shards are disjoint and
    cover the training windows; the secret options reach neither the run record nor MLflow."""
    options, local = s3
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"window": 8, "stride": 2, "epochs": 2, "patience": 10}
    cfg = TrainConfig(data=f"s3://{BUCKET}/data", storage_options=options, model="lstm", params=params,
                      num_workers=2, cpus_per_worker=0.5, storage_path=str(tmp_path / "runs"), run_name="s3",
                      tracking_uri=uri, experiment="s3")
    result = train(cfg, diagnostics_dir=str(tmp_path / "diagnostics"))
    assert result.epochs == 2 and np.isfinite(result.evaluation.metrics["roc_auc"])
    assert len(result.evaluation.test_scores) == len(local.test)  # a small split: the sample is all of it
    ranks = [json.loads(f.read_text())["stream"] for f in sorted((tmp_path / "diagnostics").glob("rank*.json"))]
    times = [set(r["times"]) for r in ranks]
    assert len(ranks) == 2 and not times[0] & times[1]
    expected = open_training_data(cfg.data, "lstm", params, "stream", options).datasets[TRAIN].count()
    assert expected - 2 < sum(r["samples"] for r in ranks) <= expected
    # a checkpoint without its detector (a sweep trial stopped early) is rebuilt with the streamed scaler, not
    # one refitted on the (here 500-row) sample it is rebuilt on
    checkpoint = shutil.copytree(result.detector_dir.parent, tmp_path / "stopped")
    shutil.rmtree(checkpoint / "detector")
    sample = evaluation_dataset(cfg.data, "stream", options, sample_rows=500)
    rebuilt = load_detector(materialize_detector(checkpoint, "lstm", params, sample, tmp_path / "rebuilt"))
    streamed = load_detector(result.detector_dir).scaler_.mean_
    np.testing.assert_allclose(rebuilt.scaler_.mean_, streamed)
    assert not np.allclose(fit_scaler("standard", sample.features("train", normal_only=True)).mean_, streamed)
    logged = MlflowClient(uri).get_run(result.run_id).data.params["storage_options"]
    record = json.loads((tmp_path / "runs" / "s3" / RUN_RECORD).read_text())["config"]["storage_options"]
    for kept in (logged, str(record)):
        assert "endpoint_override" in kept and "secret_key" not in kept and "access_key" not in kept
