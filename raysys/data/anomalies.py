"""Labelled anomaly injection: each anomaly is an event of one type on named sensors.

Difficulty levels (``easy``, ``medium``, ``hard``) choose which event types are injected and how
large they are; see :data:`LEVELS` and docs/data.md#generated-data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: The classic event types, the only ones ``easy`` injects.
ANOMALY_TYPES: tuple[str, ...] = ("spike", "drift", "stuck", "oscillation", "process", "replay")
#: Event types that leave each sensor's range alone and change how it behaves (``medium``, ``hard``).
SUBTLE_TYPES: tuple[str, ...] = ("decoupling", "variance", "slow_drift", "frequency", "intermittent")
ALL_TYPES: tuple[str, ...] = ANOMALY_TYPES + SUBTLE_TYPES
NORMAL = "normal"
#: The generated column naming the sensors each anomalous row's event touched (comma-separated).
ANOMALY_SENSORS = "anomaly_sensors"
SENSOR_SEPARATOR = ","

_LENGTHS = {"spike": (3, 8), "drift": (20, 60), "stuck": (10, 40), "decoupling": (20, 50), "variance": (20, 50),
            "slow_drift": (40, 100), "frequency": (30, 60), "intermittent": (20, 40)}


@dataclass(frozen=True)
class Level:
    """What one difficulty level injects.

    Args:
        name: ``easy``, ``medium`` or ``hard``.
        mix: The event types of one cycle of events, in random order per cycle; a type listed
            twice is drawn twice as often.
        unit: What a magnitude of 1 is, per sensor: ``"std"`` (the sensor's standard deviation
            over the whole table, daily cycles included) or ``"noise"`` (its row-to-row noise).
        scale: Multiplies every magnitude (docs/data.md lists the magnitudes at scale 1).
        whole_cycles: Inject whole cycles until the rate is reached (``easy``: the data of
            raysys before difficulty levels), instead of stopping at the rate.
    """

    name: str
    mix: tuple[str, ...]
    unit: str = "noise"
    scale: float = 1.0
    whole_cycles: bool = False


LEVELS: dict[str, Level] = {
    "easy": Level("easy", ANOMALY_TYPES, unit="std", whole_cycles=True),
    "medium": Level("medium", ALL_TYPES, scale=4.0),
    "hard": Level("hard", ANOMALY_TYPES + SUBTLE_TYPES * 2, scale=3.0),
}
DIFFICULTIES: tuple[str, ...] = tuple(LEVELS)


def get_level(difficulty: str) -> Level:
    """Look up a difficulty level by name."""
    try:
        return LEVELS[difficulty]
    except KeyError:
        raise ValueError(f"Unknown difficulty {difficulty!r}; expected one of {list(DIFFICULTIES)}") from None


@dataclass(frozen=True)
class AnomalyEvent:
    """One injected event.

    Args:
        kind: Its type, one of :data:`ALL_TYPES`.
        rows: Half-open ``(start, stop)`` row ranges it labels: one range, or for ``intermittent``
            one per burst (the rows between bursts are normal).
        sensors: The sensors it changed.
    """

    kind: str
    rows: tuple[tuple[int, int], ...]
    sensors: tuple[str, ...]


def _event_length(kind: str, rng: np.random.Generator) -> int:
    lo, hi = _LENGTHS.get(kind, (10, 30))
    return int(rng.integers(lo, hi + 1))


def _source_block(n_rows: int, start: int, length: int, rng: np.random.Generator) -> int:
    """Start of a block of ``length`` rows an eighth to a quarter of the table away from ``start``."""
    offset = int(rng.integers(n_rows // 8, n_rows // 4))
    src = start - offset if start - offset >= 0 else start + offset
    return min(max(src, 0), n_rows - length)


def _bursts(start: int, stop: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Bursts of 1-3 rows separated by 2-6 normal rows, from ``start`` to at most ``stop``."""
    out: list[tuple[int, int]] = []
    pos = start
    while pos < stop:
        end = min(pos + int(rng.integers(1, 4)), stop)
        out.append((pos, end))
        pos = end + int(rng.integers(2, 7))
    return out


def _apply(kind: str, values: np.ndarray, start: int, stop: int, unit: np.ndarray,
           rng: np.random.Generator) -> tuple[list[int], list[tuple[int, int]]]:
    """Modify ``values[start:stop]`` in place with one event of ``kind``.

    ``unit`` is the per-sensor magnitude of 1. Returns the columns changed and the labelled
    row ranges. The draws from ``rng`` of the classic types are those of raysys before
    attribution, so ``easy`` data is unchanged.
    """
    n_rows, n_sensors = values.shape
    length = stop - start
    col = int(rng.integers(n_sensors))
    sign = rng.choice([-1.0, 1.0])
    cols = [col]
    rows = [(start, stop)]
    if kind == "spike":
        values[start:stop, col] += sign * rng.uniform(6.0, 10.0) * unit[col]
    elif kind == "drift":
        # gradual degradation: the offset grows from 2 to 6 units
        ramp = np.linspace(2.0, rng.uniform(5.0, 7.0), length)
        values[start:stop, col] += sign * ramp * unit[col]
    elif kind == "stuck":
        # dead sensor: the reading drops to the rail and stays flat
        values[start:stop, col] = values[:, col].min() - rng.uniform(3.0, 5.0) * unit[col]
    elif kind == "oscillation":
        t = np.arange(length)
        period = rng.uniform(4.0, 10.0)
        values[start:stop, col] += rng.uniform(4.0, 6.0) * unit[col] * np.sin(2 * np.pi * t / period)
    elif kind == "process":
        # several sensors shift together in a way the process physics does not allow
        picked = rng.choice(n_sensors, size=max(2, n_sensors // 2), replace=False)
        signs = rng.choice([-1.0, 1.0], size=len(picked))
        values[start:stop, picked] += signs * rng.uniform(3.5, 5.0) * unit[picked]
        cols = [int(c) for c in picked]
    elif kind == "replay":
        # manipulated signal: half the sensors replay a recording from half a day away,
        # plausible on their own but out of step with the rest of the plant
        picked = rng.choice(n_sensors, size=max(1, n_sensors // 2), replace=False)
        src = _source_block(n_rows, start, length, rng)
        replayed = values[src:src + length, picked].copy()
        # the attacker's recording is scaled to hide it, which pushes it off the plant's manifold
        values[start:stop, picked] = replayed + rng.choice([-1.0, 1.0], size=len(picked)) * 3.0 * unit[picked]
        cols = [int(c) for c in picked]
    elif kind == "decoupling":
        # correlation break: the sensor follows its own recording from elsewhere in the table, so
        # its marginal distribution (mean, spread, range) is unchanged and only its tie to the rest
        # of the plant breaks
        src = _source_block(n_rows, start, length, rng)
        values[start:stop, col] = values[src:src + length, col]
    elif kind == "variance":
        # a loose connection or a failing amplifier: more noise, same mean
        values[start:stop, col] += rng.normal(0.0, rng.uniform(2.0, 3.0) * unit[col], length)
    elif kind == "slow_drift":
        # calibration creep toward the middle of the range, so the reading stays inside it
        lo, hi = values[:, col].min(), values[:, col].max()
        toward = -1.0 if values[start, col] > np.median(values[:, col]) else 1.0
        ramp = np.linspace(0.0, rng.uniform(3.0, 5.0), length)
        values[start:stop, col] = np.clip(values[start:stop, col] + toward * ramp * unit[col], lo, hi)
    elif kind == "frequency":
        # the sensor's daily pattern runs up to 1.6-1.9x fast, then slow (its clock or sampling is off):
        # it leads the plant by up to a fifth to a third of the event and is back in step at the end
        u = np.arange(length) / length
        lead = rng.uniform(0.2, 0.3) * length
        src = np.clip(np.round(start + np.arange(length) + lead * np.sin(np.pi * u)).astype(int), 0, n_rows - 1)
        values[start:stop, col] = values[src, col]
    elif kind == "intermittent":
        # a bad contact: short bursts off the true value, normal rows between them
        rows = _bursts(start, stop, rng)
        for a, b in rows:
            values[a:b, col] += sign * rng.uniform(4.0, 6.0) * unit[col]
    else:
        raise ValueError(f"Unknown anomaly type {kind!r}; expected one of {ALL_TYPES}")
    return cols, rows


def inject_events(frame: pd.DataFrame, sensors: list[str], rate: float, rng: np.random.Generator,
                  level: Level = LEVELS["easy"], types: tuple[str, ...] | None = None
                  ) -> tuple[pd.DataFrame, list[AnomalyEvent]]:
    """Inject anomaly events covering about ``rate`` of the rows; also return the events.

    Events are spread evenly over time (with jitter) and every cycle of ``len(types)``
    consecutive events holds each type of ``types`` (default: the level's mix) once, so a split
    long enough to hold that many events (each split of the 20,000-row ``easy`` default) sees
    every type. Returns a copy of ``frame`` with modified sensor values and the label columns
    ``is_anomaly`` (0/1), ``anomaly_type`` (``"normal"`` for normal rows) and ``anomaly_sensors``
    (the event's sensors, comma-separated; ``""`` for normal rows).
    """
    if not 0.0 <= rate < 0.5:
        raise ValueError(f"anomaly rate must be in [0, 0.5), got {rate}")
    mix = level.mix if types is None else tuple(types)
    unknown = [t for t in mix if t not in ALL_TYPES]
    if unknown:
        raise ValueError(f"Unknown anomaly type {unknown[0]!r}; expected one of {ALL_TYPES}")
    values = frame[sensors].to_numpy(dtype=np.float64).copy()
    n_rows = len(values)
    std = values.std(axis=0)
    noise = np.diff(values, axis=0).std(axis=0) / np.sqrt(2) if n_rows > 1 else std
    unit = (std if level.unit == "std" else noise) * level.scale
    labels = np.full(n_rows, NORMAL, dtype=object)
    touched = np.full(n_rows, "", dtype=object)
    kinds: list[str] = []
    lengths: list[int] = []
    target = rate * n_rows
    while sum(lengths) < target:
        for kind in rng.permutation(mix):
            kinds.append(str(kind))
            lengths.append(_event_length(str(kind), rng))
            if not level.whole_cycles and sum(lengths) >= target:
                break
    events: list[AnomalyEvent] = []
    if kinds:
        slot = n_rows / len(kinds)
        for i, (kind, length) in enumerate(zip(kinds, lengths)):
            room = max(1, int(slot) - length - 2)
            start = min(int(i * slot) + 1 + int(rng.integers(room)), n_rows - length)
            cols, rows = _apply(kind, values, start, start + length, unit, rng)
            names = tuple(sensors[c] for c in sorted(cols))
            for a, b in rows:
                labels[a:b] = kind
                touched[a:b] = SENSOR_SEPARATOR.join(names)
            events.append(AnomalyEvent(kind, tuple(rows), names))
    out = frame.copy()
    out[sensors] = values
    out["is_anomaly"] = (labels != NORMAL).astype(np.int8)
    out["anomaly_type"] = labels.astype(str)
    out[ANOMALY_SENSORS] = touched.astype(str)
    return out, events


def inject_anomalies(frame: pd.DataFrame, sensors: list[str], rate: float,
                     rng: np.random.Generator, types: tuple[str, ...] = ANOMALY_TYPES) -> pd.DataFrame:
    """:func:`inject_events` at the ``easy`` level's magnitudes, without the event list."""
    return inject_events(frame, sensors, rate, rng, LEVELS["easy"], types)[0]
