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


def plant_frame(assets: dict[str, int], sensors=("temp", "vib"), seed: int = 0) -> pd.DataFrame:
    """A user's fleet file: ``timestamp``, ``asset_id`` and the sensors, assets interleaved in time."""
    rng = np.random.default_rng(seed)
    parts = [pd.DataFrame({"timestamp": pd.date_range("2026-01-01", periods=rows, freq="1min"), "asset_id": asset,
                           **{s: rng.normal(size=rows) for s in sensors}}) for asset, rows in assets.items()]
    return pd.concat(parts).sort_values("timestamp", kind="stable").reset_index(drop=True)


def test_prepare_reads_an_asset_column_or_a_file_per_asset_into_the_same_fleet(tmp_path, capsys):
    import argparse

    frame = plant_frame({"pump-1": 600, "pump-2": 900})
    frame.to_csv(tmp_path / "plant.csv", index=False)
    (tmp_path / "per-asset").mkdir()
    for asset, part in frame.groupby("asset_id"):
        part.drop(columns="asset_id").to_parquet(tmp_path / "per-asset" / f"{asset}.parquet")
    parser = argparse.ArgumentParser(prog="raysys")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    for source, out in ((["--input", str(tmp_path / "plant.csv"), "--asset-column", "asset_id"], "a"),
                        (["--input", str(tmp_path / "per-asset")], "b")):
        args = parser.parse_args(["prepare", *source, "--out", str(tmp_path / out)])
        assert args.func(args) == 0
    assert "2 assets" in capsys.readouterr().out
    for out in ("a", "b"):
        data = load_fleet(tmp_path / out)
        assert data.assets == ["pump-1", "pump-2"] and data.sensors == ["temp", "vib"]
        pump = data.asset("pump-2")
        assert (len(pump.train), len(pump.val), len(pump.test)) == (630, 135, 135)  # its own time split
        expected = frame[frame["asset_id"] == "pump-2"]["vib"].to_numpy()
        np.testing.assert_allclose(np.concatenate([pump.train["vib"], pump.val["vib"], pump.test["vib"]]), expected)


def test_prepare_errors_name_the_asset_and_write_nothing(tmp_path):
    from raysys.data.fleet import prepare_fleet

    frame = plant_frame({"pump-1": 600, "pump-2": 600})
    frame.loc[frame["asset_id"] == "pump-2", "vib"] = np.nan
    frame.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(DataValidationError, match=r"nan.csv asset 'pump-2': column 'vib' is all NaN"):
        prepare_fleet(tmp_path / "nan.csv", tmp_path / "out")
    plant_frame({"pump-1": 600}).drop(columns="asset_id").to_csv(tmp_path / "flat.csv", index=False)
    with pytest.raises(DataValidationError, match=r"flat.csv: no asset column 'asset_id'"):
        prepare_fleet(tmp_path / "flat.csv", tmp_path / "out")
    (tmp_path / "mixed").mkdir()  # one file per asset, and the second asset's sensors differ
    plant_frame({"pump-1": 600}).drop(columns="asset_id").to_csv(tmp_path / "mixed" / "pump-1.csv", index=False)
    plant_frame({"pump-2": 600}, sensors=("temp", "flow")).drop(columns="asset_id").to_csv(
        tmp_path / "mixed" / "pump-2.csv", index=False)
    with pytest.raises(DataValidationError, match=r"pump-2.csv: asset 'pump-2' has sensors \['temp', 'flow'\], "
                                                  r"expected \['temp', 'vib'\] \(as asset 'pump-1'\)"):
        prepare_fleet(tmp_path / "mixed", tmp_path / "out")
    plant_frame({"../etc": 600}).to_csv(tmp_path / "bad-id.csv", index=False)
    with pytest.raises(DataValidationError, match=r"asset id '\.\./etc' must start with a letter or digit"):
        prepare_fleet(tmp_path / "bad-id.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()
