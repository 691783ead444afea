"""Synthetic generation, time-ordered splits, metadata, scalers fitted on train only, sliding windows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from raysys.data import (
    ANOMALY_TYPE,
    ANOMALY_TYPES,
    LABEL,
    NORMAL,
    PROFILES,
    TIMESTAMP,
    fit_scaler,
    generate,
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
    assert list(first.columns) == [TIMESTAMP, *sensors, LABEL, ANOMALY_TYPE]
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
])
def test_generate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(**{"rows": 1000, **kwargs})


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
