"""Fleet datasets: ``raysys generate --assets N``, the Hive layout, per-asset splits, errors naming the asset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from raysys.data import DataValidationError, generate
from raysys.data.cli import add_parsers
from raysys.data.fleet import asset_ids, generate_fleet, load_fleet
from raysys.data.synthetic import OperatingPoint, generate_with_events
from raysys.layout import asset_split_file

ROWS = 800


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return generate_fleet(tmp_path_factory.mktemp("fleet") / "f", assets=3, rows=ROWS, seed=5)


def test_layout_is_hive_partitioned_by_asset_and_read_back_as_a_column(fleet):
    meta = json.loads((fleet / "metadata.json").read_text())
    assert [a["asset_id"] for a in meta["assets"]] == asset_ids(3) == ["asset-0000", "asset-0001", "asset-0002"]
    assert meta["layout"] == "fleet" and meta["partitioning"] == "asset_id" and meta["rows_per_asset"] == ROWS
    for split in ("train", "val", "test"):
        table = pads.dataset(fleet / split, partitioning="hive").to_table().to_pandas()
        assert sorted(table["asset_id"].unique()) == asset_ids(3)
        assert {"timestamp", "is_anomaly", "anomaly_type", "anomaly_sensors", *meta["sensors"]} <= set(table.columns)
        for asset in meta["assets"]:
            assert (table["asset_id"] == asset["asset_id"]).sum() == asset["rows"][split]


def test_each_asset_is_split_by_its_own_time_and_assets_differ(fleet):
    data = load_fleet(fleet)
    means = []
    for asset in data.assets:
        split = data.asset(asset)
        assert (len(split.train), len(split.val), len(split.test)) == (560, 120, 120)
        assert split.train["timestamp"].max() < split.val["timestamp"].min() <= split.val["timestamp"].max() \
            < split.test["timestamp"].min()
        assert split.metadata["asset_id"] == asset and split.sensors == data.sensors
        means.append(split.train[data.sensors].mean().to_numpy())
    # own operating points: no two assets have the same mean levels
    assert min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1:]) > 0.01
    points = [a["operating_point"] for a in data.metadata["assets"]]
    assert len({p["phase_rows"] for p in points}) == 3 and all(0 <= p["noise"] <= 0.5 for p in points)


def test_same_seed_same_fleet(fleet, tmp_path):
    again = generate_fleet(tmp_path / "again", assets=3, rows=ROWS, seed=5)
    for split in ("train", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(asset_split_file(again, split, "asset-0002")),
                                      pd.read_parquet(asset_split_file(fleet, split, "asset-0002")))


def test_the_default_operating_point_is_the_profile_value_for_value():
    frame, _ = generate_with_events(rows=600, seed=3, operating=OperatingPoint())
    pd.testing.assert_frame_equal(frame, generate(rows=600, seed=3))


def test_errors_name_the_asset(fleet, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(fleet, broken)
    path = asset_split_file(broken, "val", "asset-0001")
    frame = pd.read_parquet(path)
    frame["pressure"] = "high"
    frame.to_parquet(path)
    data = load_fleet(broken)
    data.asset("asset-0000")  # the others still load
    with pytest.raises(DataValidationError, match=r"asset 'asset-0001': .*val.*pressure"):
        data.asset("asset-0001")
    with pytest.raises(DataValidationError, match=r"no asset 'pump-7' in this fleet \(it has 3: asset-0000"):
        data.asset("pump-7")
    path.unlink()
    with pytest.raises(DataValidationError, match=r"asset 'asset-0001': .*file not found"):
        data.asset("asset-0001")
    with pytest.raises(DataValidationError, match="not a fleet dataset"):
        load_fleet(tmp_path)
    with pytest.raises(ValueError, match=r"asset id '\.\./x' must start with a letter or digit"):
        asset_split_file(broken, "train", "../x")


def test_nothing_is_left_behind_when_generation_fails(tmp_path):
    with pytest.raises(ValueError, match="rows must be at least 500"):
        generate_fleet(tmp_path / "f", assets=2, rows=100)
    assert list(tmp_path.iterdir()) == []


def test_generate_command_writes_a_fleet(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="raysys")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["generate", "--assets", "2", "--rows", "600", "--out", str(tmp_path / "f")])
    assert args.func(args) == 0
    assert "2 assets x 600 rows" in capsys.readouterr().out
    assert load_fleet(tmp_path / "f").assets == ["asset-0000", "asset-0001"]
