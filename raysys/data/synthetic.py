"""Synthetic multivariate sensor time series with labelled anomalies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from raysys.data.anomalies import AnomalyEvent, get_level, inject_events
from raysys.data.profiles import get_profile

TIMESTAMP = "timestamp"


def plant_load(n_rows: int, freq_minutes: float, rng: np.random.Generator) -> np.ndarray:
    """Latent plant load in [0, 1]: daily and weekly cycles plus slow AR(1) wander."""
    minutes = np.arange(n_rows) * freq_minutes
    day = 2 * np.pi * minutes / (24 * 60)
    week = 2 * np.pi * minutes / (7 * 24 * 60)
    wander = np.empty(n_rows)
    acc = 0.0
    shocks = rng.normal(0.0, 0.01, n_rows)
    for i in range(n_rows):
        acc = 0.995 * acc + shocks[i]
        wander[i] = acc
    load = 0.5 + 0.25 * np.sin(day - np.pi / 2) + 0.08 * np.sin(2 * day) + 0.1 * np.cos(week) + wander
    return np.clip(load, 0.0, 1.0)


@dataclass(frozen=True)
class OperatingPoint:
    """Where one machine of a fleet runs, relative to the profile (the default: the profile itself).

    Args:
        load_offset: Added to the latent plant load (in [0, 1] before clipping): a busier or idler machine.
        phase_rows: Rows by which its daily and weekly load pattern leads the profile's.
        noise: Extra sensor noise, as a fraction of each sensor's standard deviation.
    """

    load_offset: float = 0.0
    phase_rows: int = 0
    noise: float = 0.0


def generate_with_events(profile: str = "water_treatment", rows: int = 20_000, seed: int = 0,
                         anomaly_rate: float = 0.05, freq_minutes: float = 5.0, start: str = "2026-01-01",
                         types: tuple[str, ...] | None = None, difficulty: str = "easy",
                         operating: OperatingPoint = OperatingPoint()) -> tuple[pd.DataFrame, list[AnomalyEvent]]:
    """:func:`generate`, and the events injected (their rows and the sensors each changed); ``operating``
    moves the machine's operating point (the default changes nothing)."""
    if rows < 500:
        raise ValueError(f"rows must be at least 500 to hold daily cycles and anomaly events, got {rows}")
    level = get_level(difficulty)
    prof = get_profile(profile)
    rng = np.random.default_rng(seed)
    load = np.clip(plant_load(rows + operating.phase_rows, freq_minutes, rng)[operating.phase_rows:]
                   + operating.load_offset, 0.0, 1.0)
    frame = pd.DataFrame(prof.simulate(load, rng))[prof.sensors]
    if operating.noise:
        frame += rng.normal(0.0, 1.0, frame.shape) * (operating.noise * frame.std(axis=0)).to_numpy()
    frame.insert(0, TIMESTAMP, pd.date_range(start, periods=rows, freq=pd.Timedelta(minutes=freq_minutes)))
    return inject_events(frame, prof.sensors, anomaly_rate, rng, level, types)


def generate(profile: str = "water_treatment", rows: int = 20_000, seed: int = 0,
             anomaly_rate: float = 0.05, freq_minutes: float = 5.0,
             start: str = "2026-01-01", types: tuple[str, ...] | None = None,
             difficulty: str = "easy") -> pd.DataFrame:
    """Generate a labelled sensor table for one facility profile.

    Deterministic given ``seed``. Columns: ``timestamp``, one column per sensor, ``is_anomaly``,
    ``anomaly_type`` and ``anomaly_sensors``. ``difficulty`` (``easy``, ``medium``, ``hard``) picks
    the event types and magnitudes (docs/data.md#generated-data); ``types`` narrows the types
    (default: the level's). ``easy`` is the data of raysys before difficulty levels, value for value.
    """
    return generate_with_events(profile, rows, seed, anomaly_rate, freq_minutes, start, types, difficulty)[0]
