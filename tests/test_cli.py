"""``raysys generate`` and ``raysys prepare``: exit code 2 with a message naming file and column on
bad input, nothing half-written left behind, and the summary of what was written."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raysys.cli import main
from raysys.data import load_dataset
from test_data_io import BAD_TABLES, sensor_frame, write_table

RAYSYS = str(Path(sys.executable).with_name("raysys"))


@pytest.mark.parametrize(("case", "spoil", "fragments"), BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_prepare_bad_file_exits_2_with_message_and_writes_nothing(tmp_path, capsys, case, spoil, fragments):
    path = write_table(spoil(sensor_frame()), tmp_path / f"{case}.csv")
    out = tmp_path / "out" / "prepared"
    assert main(["prepare", "--input", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"raysys prepare: error: {path}: ")
    for fragment in fragments:
        assert fragment in captured.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("garbage.parquet", b"PAR1 definitely not parquet", "cannot be read as parquet"),
    ("missing.csv", None, "file not found"),
])
def test_prepare_unreadable_file_exits_2(tmp_path, capsys, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert main(["prepare", "--input", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raysys prepare: error: {path}: ") and fragment in err
    assert not (tmp_path / "out").exists()


def test_prepare_console_script_exit_code_and_stderr(tmp_path):
    """The installed ``raysys`` entry point, in a process of its own."""
    path = write_table(sensor_frame().drop(columns="timestamp"), tmp_path / "no_time.csv")
    proc = subprocess.run([RAYSYS, "prepare", "--input", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"raysys prepare: error: {path}: missing timestamp column 'timestamp'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_interpolates_gaps_and_reports_them(tmp_path, capsys, caplog):
    df = sensor_frame()
    df.loc[20:24, "temperature"] = np.nan
    path = write_table(df, tmp_path / "gaps.csv")
    out = tmp_path / "prepared"
    with caplog.at_level(logging.WARNING):
        assert main(["prepare", "--input", str(path), "--out", str(out), "--splits", "0.6,0.2,0.2"]) == 0
    assert f"wrote {out}: 300 rows" in capsys.readouterr().out
    assert any("interpolated missing values {'temperature': 5}" in r.getMessage() for r in caplog.records)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["interpolated"] == {"temperature": 5} and meta["fractions"] == [0.6, 0.2, 0.2]
    ds = load_dataset(out)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (180, 60, 60)
    assert not np.isnan(ds.features("train")).any()


def test_generate_writes_a_dataset_and_prints_its_summary(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["generate", "--out", str(out), "--profile", "electrical_grid", "--rows", "1200",
                 "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert f"wrote {out}: 1200 rows, sensors ['voltage', 'current', 'frequency', 'power_output']" in printed
    for kind, count in meta["anomaly_counts"].items():
        assert f"{kind}={count}" in printed
    assert meta["profile"] == "electrical_grid" and meta["seed"] == 4


def test_generate_into_non_empty_directory_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["generate", "--out", str(out), "--rows", "600"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raysys generate: error: ") and str(out) in err and "not empty" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["generate", "--out", str(out), "--rows", "600", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and load_dataset(out).metadata["rows"] == 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize(("argv", "fragment"), [
    (["generate", "--rows", "100"], "rows must be at least 500"),
    (["generate", "--anomaly-rate", "0.7"], "anomaly rate must be in [0, 0.5)"),
    (["generate", "--splits", "0.9,0.2,0.1"], "split fractions must be three positive numbers"),
])
def test_generate_bad_arguments_exit_2(tmp_path, capsys, argv, fragment):
    out = tmp_path / "ds"
    assert main([*argv, "--out", str(out)]) == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_malformed_splits_option_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--out", str(tmp_path / "ds"), "--splits", "0.7,0.3"])
    assert info.value.code == 2
    assert "expected three comma-separated fractions" in capsys.readouterr().err
