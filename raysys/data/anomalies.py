"""Labelled anomaly injection: each anomaly is a contiguous event of one type."""

from __future__ import annotations

import numpy as np
import pandas as pd

ANOMALY_TYPES: tuple[str, ...] = ("spike", "drift", "stuck", "oscillation", "process", "replay")
NORMAL = "normal"


def _event_length(kind: str, rng: np.random.Generator) -> int:
    lo, hi = {"spike": (3, 8), "drift": (20, 60), "stuck": (10, 40)}.get(kind, (10, 30))
    return int(rng.integers(lo, hi + 1))


def _apply(kind: str, values: np.ndarray, start: int, stop: int, std: np.ndarray,
           rng: np.random.Generator) -> None:
    """Modify ``values[start:stop]`` in place with one event of ``kind``."""
    n_rows, n_sensors = values.shape
    length = stop - start
    col = int(rng.integers(n_sensors))
    sign = rng.choice([-1.0, 1.0])
    if kind == "spike":
        values[start:stop, col] += sign * rng.uniform(6.0, 10.0) * std[col]
    elif kind == "drift":
        # gradual degradation: the offset grows from 2 to 6 standard deviations
        ramp = np.linspace(2.0, rng.uniform(5.0, 7.0), length)
        values[start:stop, col] += sign * ramp * std[col]
    elif kind == "stuck":
        # dead sensor: the reading drops to the rail and stays flat
        values[start:stop, col] = values[:, col].min() - rng.uniform(3.0, 5.0) * std[col]
    elif kind == "oscillation":
        t = np.arange(length)
        period = rng.uniform(4.0, 10.0)
        values[start:stop, col] += rng.uniform(4.0, 6.0) * std[col] * np.sin(2 * np.pi * t / period)
    elif kind == "process":
        # several sensors shift together in a way the process physics does not allow
        cols = rng.choice(n_sensors, size=max(2, n_sensors // 2), replace=False)
        signs = rng.choice([-1.0, 1.0], size=len(cols))
        values[start:stop, cols] += signs * rng.uniform(3.5, 5.0) * std[cols]
    elif kind == "replay":
        # manipulated signal: half the sensors replay a recording from half a day away,
        # plausible on their own but out of step with the rest of the plant
        cols = rng.choice(n_sensors, size=max(1, n_sensors // 2), replace=False)
        offset = int(rng.integers(n_rows // 8, n_rows // 4))
        src = start - offset if start - offset >= 0 else start + offset
        src = min(max(src, 0), n_rows - length)
        replayed = values[src:src + length, cols].copy()
        # the attacker's recording is scaled to hide it, which pushes it off the plant's manifold
        values[start:stop, cols] = replayed + rng.choice([-1.0, 1.0], size=len(cols)) * 3.0 * std[cols]
    else:
        raise ValueError(f"Unknown anomaly type {kind!r}; expected one of {ANOMALY_TYPES}")


def inject_anomalies(frame: pd.DataFrame, sensors: list[str], rate: float,
                     rng: np.random.Generator, types: tuple[str, ...] = ANOMALY_TYPES) -> pd.DataFrame:
    """Inject contiguous anomaly events covering about ``rate`` of the rows.

    Events are spread evenly over time (with jitter) and every run of ``len(types)``
    consecutive events holds each type once, so a split long enough to hold that many events
    (each split of the 20,000-row default) sees every type.
    Returns a copy of ``frame`` with modified sensor values and the label columns
    ``is_anomaly`` (0/1) and ``anomaly_type`` (``"normal"`` for normal rows).
    """
    if not 0.0 <= rate < 0.5:
        raise ValueError(f"anomaly rate must be in [0, 0.5), got {rate}")
    values = frame[sensors].to_numpy(dtype=np.float64).copy()
    n_rows = len(values)
    std = values.std(axis=0)
    labels = np.full(n_rows, NORMAL, dtype=object)
    kinds: list[str] = []
    lengths: list[int] = []
    while sum(lengths) < rate * n_rows:
        for kind in rng.permutation(types):
            kinds.append(str(kind))
            lengths.append(_event_length(str(kind), rng))
    if kinds:
        slot = n_rows / len(kinds)
        for i, (kind, length) in enumerate(zip(kinds, lengths)):
            room = max(1, int(slot) - length - 2)
            start = min(int(i * slot) + 1 + int(rng.integers(room)), n_rows - length)
            _apply(kind, values, start, start + length, std, rng)
            labels[start:start + length] = kind
    out = frame.copy()
    out[sensors] = values
    out["is_anomaly"] = (labels != NORMAL).astype(np.int8)
    out["anomaly_type"] = labels.astype(str)
    return out
