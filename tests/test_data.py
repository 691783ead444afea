"""Synthetic generation, time-ordered splits, metadata, scalers fitted on train only, sliding windows."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from raysys.data import (
    ALL_TYPES,
    ANOMALY_SENSORS,
    ANOMALY_TYPE,
    ANOMALY_TYPES,
    DIFFICULTIES,
    SUBTLE_TYPES,
    LABEL,
    NORMAL,
    PROFILES,
    TIMESTAMP,
    fit_scaler,
    generate,
    generate_dataset,
    generate_with_events,
    get_profile,
    load_dataset,
    scaler_affine,
    sliding_windows,
    split_by_time,
    window_scores_to_rows,
)
from raysys.models import build_detector


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_generate_is_deterministic_given_seed(profile):
    first = generate(profile, rows=1500, seed=11)
    again = generate(profile, rows=1500, seed=11)
    other = generate(profile, rows=1500, seed=12)
    pd.testing.assert_frame_equal(first, again)
    sensors = get_profile(profile).sensors
    assert not np.allclose(first[sensors].to_numpy(), other[sensors].to_numpy())
    assert list(first.columns) == [TIMESTAMP, *sensors, LABEL, ANOMALY_TYPE, ANOMALY_SENSORS]
    assert first[sensors].dtypes.eq(np.float64).all() and np.isfinite(first[sensors].to_numpy()).all()
    assert first[TIMESTAMP].is_monotonic_increasing and not first[TIMESTAMP].duplicated().any()


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_anomaly_events_are_contiguous_single_type_and_every_type_is_present(profile):
    frame = generate(profile, rows=6000, seed=5, anomaly_rate=0.05)
    types = frame[ANOMALY_TYPE].to_numpy()
    # the 0/1 label and the type agree row by row
    np.testing.assert_array_equal(frame[LABEL].to_numpy() == 1, types != NORMAL)
    assert set(types) == {NORMAL, *ANOMALY_TYPES}
    assert 0.03 <= frame[LABEL].mean() <= 0.08
    for kind in ANOMALY_TYPES:
        events = _runs(types == kind)
        assert events, kind
        lo, hi = {"spike": (3, 8), "drift": (20, 60), "stuck": (10, 40)}.get(kind, (10, 30))
        # each event is one contiguous block of its type, of the length that type is drawn with
        assert all(lo <= stop - start <= hi for start, stop in events), (kind, events)
    # events never touch: between two events there is at least one normal row
    assert len(_runs(types != NORMAL)) == sum(len(_runs(types == k)) for k in ANOMALY_TYPES)


def test_anomalies_change_only_the_labelled_rows():
    frame = generate("water_treatment", rows=3000, seed=7)
    clean = generate("water_treatment", rows=3000, seed=7, anomaly_rate=0.0)
    sensors = get_profile("water_treatment").sensors
    changed = ~np.isclose(frame[sensors].to_numpy(), clean[sensors].to_numpy()).all(axis=1)
    labelled = frame[LABEL].to_numpy() == 1
    assert clean[LABEL].sum() == 0
    assert not changed[~labelled].any()
    # (an oscillation starts at sin(0) = 0, so its first row may equal the clean value)
    assert changed[labelled].mean() > 0.97


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"rows": 100}, "rows must be at least 500"),
    ({"anomaly_rate": 0.6}, "anomaly rate must be in"),
    ({"anomaly_rate": -0.1}, "anomaly rate must be in"),
    ({"profile": "refinery"}, "Unknown profile 'refinery'"),
    ({"difficulty": "extreme"}, "Unknown difficulty 'extreme'; expected one of \\['easy', 'medium', 'hard'\\]"),
    ({"types": ("spike", "glitch")}, "Unknown anomaly type 'glitch'"),
])
def test_generate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(**{"rows": 1000, **kwargs})


def _digest(frame: pd.DataFrame, sensors: list[str]) -> str:
    """Checksum of sensor values (rounded to 1e-6, so last-bit differences between platforms do not
    count), labels, types and the last timestamp."""
    h = hashlib.sha256()
    h.update(np.round(frame[sensors].to_numpy(dtype=np.float64), 6).tobytes())
    h.update(frame[LABEL].to_numpy(dtype=np.int8).tobytes())
    h.update("|".join(frame[ANOMALY_TYPE]).encode())
    h.update(str(frame[TIMESTAMP].iloc[-1]).encode())
    return h.hexdigest()[:16]


# computed with raysys before anomaly attribution and difficulty levels (commit 45b9901)
EASY_DIGESTS = [
    (("water_treatment", 3000, 0, 0.05), "1849226bd76092e2"),
    (("water_treatment", 3000, 1, 0.05), "ad1232b677deb1ad"),
    (("power_plant", 2000, 7, 0.05), "3afc33aaa266bb9c"),
    (("electrical_grid", 2000, 3, 0.1), "feaffb29fd84eb94"),
]


@pytest.mark.parametrize(("args", "digest"), EASY_DIGESTS, ids=[str(a) for a, _ in EASY_DIGESTS])
def test_easy_is_the_data_generated_before_difficulty_levels(args, digest):
    profile, rows, seed, rate = args
    sensors = get_profile(profile).sensors
    assert _digest(generate(profile, rows, seed, rate), sensors) == digest
    assert _digest(generate(profile, rows, seed, rate, difficulty="easy"), sensors) == digest


def _check_attribution(frame: pd.DataFrame, events, sensors: list[str]) -> None:
    """``anomaly_sensors`` and ``anomaly_type`` agree with the event list row by row."""
    expected_sensors = np.full(len(frame), "", dtype=object)
    expected_types = np.full(len(frame), NORMAL, dtype=object)
    for event in events:
        assert event.sensors and set(event.sensors) <= set(sensors), event
        assert list(event.sensors) == sorted(event.sensors, key=sensors.index)
        for a, b in event.rows:
            assert 0 <= a < b <= len(frame)
            expected_sensors[a:b] = ",".join(event.sensors)
            expected_types[a:b] = event.kind
    np.testing.assert_array_equal(frame[ANOMALY_SENSORS].to_numpy(dtype=str), expected_sensors.astype(str))
    np.testing.assert_array_equal(frame[ANOMALY_TYPE].to_numpy(dtype=str), expected_types.astype(str))
    # empty exactly on the normal rows
    np.testing.assert_array_equal(frame[ANOMALY_SENSORS].to_numpy(dtype=str) == "", frame[LABEL].to_numpy() == 0)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_anomaly_sensors_match_the_events(profile, difficulty):
    frame, events = generate_with_events(profile, rows=4000, seed=2, difficulty=difficulty)
    sensors = get_profile(profile).sensors
    assert events
    _check_attribution(frame, events, sensors)
    for event in events:
        if event.kind in ("spike", "stuck", "drift", *SUBTLE_TYPES):
            assert len(event.sensors) == 1, event
        elif event.kind == "process":
            assert len(event.sensors) == max(2, len(sensors) // 2), event
        if event.kind != "intermittent":
            assert len(event.rows) == 1, event


@pytest.mark.parametrize("kind", ALL_TYPES)
@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_each_type_changes_only_its_sensors_on_its_rows(kind, difficulty):
    sensors = get_profile("water_treatment").sensors
    frame, events = generate_with_events(rows=3000, seed=4, types=(kind,), difficulty=difficulty)
    clean = generate(rows=3000, seed=4, anomaly_rate=0.0)
    assert {e.kind for e in events} == {kind} and len(events) >= 3
    _check_attribution(frame, events, sensors)
    changed = frame[sensors].to_numpy() != clean[sensors].to_numpy()
    allowed = np.zeros_like(changed)
    for event in events:
        for a, b in event.rows:
            allowed[a:b, [sensors.index(s) for s in event.sensors]] = True
    assert not changed[~allowed].any()
    assert changed[allowed].mean() > 0.5  # (a frequency shift or replay may repeat a value)
    if kind in ("decoupling", "slow_drift", "frequency"):
        # inside the sensor's normal range
        values, normal = frame[sensors].to_numpy(), clean[sensors].to_numpy()
        assert (values >= normal.min(axis=0)).all() and (values <= normal.max(axis=0)).all()


def test_intermittent_events_are_bursts_with_normal_rows_between():
    frame, events = generate_with_events(rows=3000, seed=5, types=("intermittent",), difficulty="medium")
    for event in events:
        assert len(event.rows) >= 2
        for (a, b), (c, _) in zip(event.rows, event.rows[1:]):
            assert 1 <= b - a <= 3 and c - b >= 2
            assert (frame[LABEL].iloc[b:c] == 0).all()


@pytest.mark.parametrize("difficulty", ["medium", "hard"])
def test_harder_levels_mix_in_the_subtle_types(difficulty):
    frame, events = generate_with_events(rows=20_000, seed=0, difficulty=difficulty)
    kinds = [e.kind for e in events]
    assert set(kinds) == set(ALL_TYPES)
    subtle = sum(k in SUBTLE_TYPES for k in kinds) / len(kinds)
    assert subtle > (0.6 if difficulty == "hard" else 0.4)
    assert 0.04 <= frame[LABEL].mean() <= 0.06


def test_generated_metadata_lists_the_events(tmp_path):
    out = generate_dataset(tmp_path / "hard", rows=4000, seed=3, difficulty="hard")
    meta = json.loads((out / "metadata.json").read_text())
    frame, events = generate_with_events(rows=4000, seed=3, difficulty="hard")
    assert meta["difficulty"] == "hard" and list(meta)[-1] == "events"
    assert len(meta["events"]) == len(events)
    ds = load_dataset(out)
    bounds = {"train": (0, 2800), "val": (2800, 3400), "test": (3400, 4000)}
    for record, event in zip(meta["events"], events):
        assert record["type"] == event.kind and record["sensors"] == list(event.sensors)
        assert record["rows"] == [list(r) for r in event.rows]
        assert record["start_row"] == event.rows[0][0] and record["end_row"] == event.rows[-1][1] - 1
        assert pd.Timestamp(record["start"]) == frame[TIMESTAMP].iloc[record["start_row"]]
        assert pd.Timestamp(record["end"]) == frame[TIMESTAMP].iloc[record["end_row"]]
        lo, hi = bounds[record["split"]]
        assert lo <= record["start_row"] < hi
        split = ds.split(record["split"])
        first = split.index[split[TIMESTAMP] == pd.Timestamp(record["start"])][0]
        assert ds.anomaly_sensors(record["split"])[first] == record["sensors"]
    # the accessor: one list per row, empty on normal rows
    attributed = ds.anomaly_sensors("test")
    assert len(attributed) == len(ds.test)
    assert [not a for a in attributed] == (ds.labels("test") == 0).tolist()
    assert set().union(*map(set, attributed)) <= set(ds.sensors)


def test_default_metadata_records_easy(default_dataset):
    meta = json.loads((default_dataset / "metadata.json").read_text())
    assert meta["difficulty"] == "easy"
    assert {e["type"] for e in meta["events"]} == set(ANOMALY_TYPES)
    assert sum(b - a for e in meta["events"] for a, b in e["rows"]) == sum(meta["anomaly_counts"].values())


# --------------------------------------------------------------------------- splits and metadata


def test_default_dataset_splits_are_time_ordered_without_overlap(default_dataset):
    ds = load_dataset(default_dataset)
    train, val, test = ds.train, ds.val, ds.test
    assert (len(train), len(val), len(test)) == (14_000, 3_000, 3_000)
    assert train[TIMESTAMP].max() < val[TIMESTAMP].min()
    assert val[TIMESTAMP].max() < test[TIMESTAMP].min()
    all_times = pd.concat([train[TIMESTAMP], val[TIMESTAMP], test[TIMESTAMP]])
    assert all_times.is_unique and all_times.is_monotonic_increasing
    # together the splits are exactly the generated table
    regenerated = generate("water_treatment", rows=20_000, seed=0)
    pd.testing.assert_frame_equal(pd.concat([train, val, test], ignore_index=True), regenerated,
                                  check_dtype=False)
    # every split holds every anomaly type, so every type's recall can be measured on test
    for name in ("train", "val", "test"):
        assert set(ds.anomaly_types(name)) - {NORMAL} == set(ANOMALY_TYPES), name


def test_default_dataset_metadata_describes_the_files(default_dataset):
    meta = json.loads((default_dataset / "metadata.json").read_text())
    ds = load_dataset(default_dataset)
    profile = get_profile("water_treatment")
    assert meta["source"] == "synthetic" and meta["profile"] == "water_treatment"
    assert meta["seed"] == 0 and meta["anomaly_rate"] == 0.05 and meta["fractions"] == [0.7, 0.15, 0.15]
    assert meta["sensors"] == profile.sensors and meta["units"] == profile.units
    assert meta["rows"] == 20_000
    total: dict[str, int] = {}
    for name in ("train", "val", "test"):
        part = ds.split(name)
        info = meta["splits"][name]
        assert info["rows"] == len(part)
        assert pd.Timestamp(info["start"]) == part[TIMESTAMP].iloc[0]
        assert pd.Timestamp(info["end"]) == part[TIMESTAMP].iloc[-1]
        counts = part.loc[part[LABEL] == 1, ANOMALY_TYPE].value_counts().to_dict()
        assert info["anomaly_counts"] == counts
        for kind, n in counts.items():
            total[kind] = total.get(kind, 0) + n
    assert meta["anomaly_counts"] == total
    assert sorted(p.name for p in default_dataset.iterdir()) == [
        "metadata.json", "test.parquet", "train.parquet", "val.parquet"]


@pytest.mark.parametrize(("fractions", "sizes"), [
    ((0.7, 0.15, 0.15), (700, 150, 150)),
    ((0.5, 0.25, 0.25), (500, 250, 250)),
    ((0.8, 0.1, 0.1), (800, 100, 100)),
])
def test_split_by_time_keeps_order_and_sizes(fractions, sizes):
    frame = pd.DataFrame({TIMESTAMP: pd.date_range("2026-01-01", periods=1000, freq="min"),
                          "x": np.arange(1000.0)})
    parts = split_by_time(frame, fractions)
    assert tuple(len(parts[n]) for n in ("train", "val", "test")) == sizes
    np.testing.assert_array_equal(np.concatenate([parts[n]["x"] for n in ("train", "val", "test")]),
                                  frame["x"].to_numpy())


@pytest.mark.parametrize("fractions", [(0.7, 0.3, 0.0), (0.5, 0.5, 0.5), (0.7, 0.3), (1.2, -0.1, -0.1)])
def test_split_by_time_rejects_bad_fractions(fractions):
    frame = pd.DataFrame({TIMESTAMP: pd.date_range("2026-01-01", periods=10, freq="min"), "x": np.arange(10.0)})
    with pytest.raises(ValueError, match="split fractions"):
        split_by_time(frame, fractions)


# --------------------------------------------------------------------------- scalers


@pytest.mark.parametrize("kind", ["standard", "minmax", "robust"])
def test_scaler_affine_matches_the_scaler(kind):
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, size=(200, 4))
    scaler = fit_scaler(kind, X)
    scale, offset = scaler_affine(scaler)
    Y = rng.normal(5.0, 3.0, size=(50, 4))
    np.testing.assert_allclose(Y * scale + offset, scaler.transform(Y), rtol=1e-12, atol=1e-12)


def test_fit_scaler_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'quantile'"):
        fit_scaler("quantile", np.zeros((3, 2)))


@pytest.mark.parametrize("family", ["ae", "lstm"])
def test_detector_scaler_is_fitted_on_normal_training_rows_only(small_dataset, family):
    ds = load_dataset(small_dataset)
    X, y = ds.features("train"), ds.labels("train")
    detector = build_detector(family, epochs=1)
    detector.init_fit(X, y)
    normal = X[y == 0].astype(np.float64)
    np.testing.assert_allclose(detector.scaler_.mean_, normal.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(detector.scaler_.scale_, normal.std(axis=0), rtol=1e-5)
    # validation and test rows do not move it
    everything = np.concatenate([X, ds.features("val"), ds.features("test")]).astype(np.float64)
    assert not np.allclose(detector.scaler_.mean_, everything.mean(axis=0), rtol=1e-3)


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("length", "stride", "n_windows"), [(1, 1, 20), (4, 1, 17), (4, 3, 6), (20, 1, 1), (5, 5, 4)])
def test_sliding_windows_hold_consecutive_rows(length, stride, n_windows):
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    windows = sliding_windows(X, length, stride)
    assert windows.shape == (n_windows, length, 2)
    assert windows.flags.c_contiguous
    for i, window in enumerate(windows):
        np.testing.assert_array_equal(window, X[i * stride:i * stride + length])


@pytest.mark.parametrize(("length", "stride", "match"), [
    (0, 1, "must be >= 1"), (3, 0, "must be >= 1"), (21, 1, "need at least 21 rows")])
def test_sliding_windows_reject_bad_arguments(length, stride, match):
    with pytest.raises(ValueError, match=match):
        sliding_windows(np.zeros((20, 2)), length, stride)


def test_window_scores_map_to_the_row_each_window_ends_at():
    scores = np.array([5.0, 6.0, 7.0])
    np.testing.assert_array_equal(window_scores_to_rows(scores, n_rows=6, length=4), [5.0, 5.0, 5.0, 5.0, 6.0, 7.0])
    with pytest.raises(ValueError, match="expected 4 stride-1 window scores, got 3"):
        window_scores_to_rows(scores, n_rows=7, length=4)
