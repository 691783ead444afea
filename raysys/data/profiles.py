"""Facility profiles: which sensors a plant has and how they follow the plant's load.

Each profile maps a latent load signal (daily and weekly cycles plus slow noise, in [0, 1])
to physically plausible sensor readings, so that sensors are correlated the way they are on
a real plant (power follows current times voltage, temperature lags load, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SensorFn = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Profile:
    """A facility type.

    Args:
        name: Profile name used on the command line.
        units: Sensor name to unit, in column order.
        simulate: Maps the load signal and a random generator to sensor arrays.
    """

    name: str
    units: dict[str, str]
    simulate: SensorFn

    @property
    def sensors(self) -> list[str]:
        return list(self.units)


def _lag(x: np.ndarray, alpha: float) -> np.ndarray:
    """First-order lag (exponential smoothing), e.g. thermal inertia."""
    out = np.empty_like(x)
    acc = x[0]
    for i, v in enumerate(x):
        acc = acc + alpha * (v - acc)
        out[i] = acc
    return out


def _noise(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, n)


def _water_treatment(load: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(load)
    flow = 120.0 + 180.0 * load + _noise(rng, n, 4.0)  # m3/h, follows demand
    pressure = 6.5 - 2.0 * load + _noise(rng, n, 0.08)  # bar, drops as flow rises
    level = 4.0 - 1.5 * _lag(load, 0.02) + _noise(rng, n, 0.05)  # m, tank drains with demand
    temperature = 14.0 + 3.0 * _lag(load, 0.01) + _noise(rng, n, 0.15)  # degC
    quality = 0.3 + 0.5 * load + _noise(rng, n, 0.03)  # NTU turbidity, rises with flow
    return {
        "temperature": temperature,
        "pressure": pressure,
        "flow_rate": flow,
        "level": level,
        "quality": quality,
    }


def _power_plant(load: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(load)
    power = 200.0 + 300.0 * load + _noise(rng, n, 5.0)  # MW
    pressure = 120.0 + 40.0 * load + _noise(rng, n, 1.0)  # bar steam pressure
    temperature = 480.0 + 60.0 * _lag(load, 0.03) + _noise(rng, n, 1.5)  # degC lags load
    vibration = 2.0 + 1.5 * load + _noise(rng, n, 0.08)  # mm/s
    return {
        "temperature": temperature,
        "pressure": pressure,
        "power_output": power,
        "vibration": vibration,
    }


def _electrical_grid(load: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(load)
    current = 200.0 + 600.0 * load + _noise(rng, n, 8.0)  # A
    voltage = 11_000.0 - 0.8 * current + _noise(rng, n, 15.0)  # V, sags under load
    frequency = 50.0 - 0.1 * (load - 0.5) + _noise(rng, n, 0.005)  # Hz
    power = voltage * current * 0.95 / 1e6 * np.sqrt(3) + _noise(rng, n, 0.05)  # MW = sqrt3*V*I*pf
    return {
        "voltage": voltage,
        "current": current,
        "frequency": frequency,
        "power_output": power,
    }


PROFILES: dict[str, Profile] = {
    "water_treatment": Profile(
        "water_treatment",
        {"temperature": "degC", "pressure": "bar", "flow_rate": "m3/h", "level": "m", "quality": "NTU"},
        _water_treatment,
    ),
    "power_plant": Profile(
        "power_plant",
        {"temperature": "degC", "pressure": "bar", "power_output": "MW", "vibration": "mm/s"},
        _power_plant,
    ),
    "electrical_grid": Profile(
        "electrical_grid",
        {"voltage": "V", "current": "A", "frequency": "Hz", "power_output": "MW"},
        _electrical_grid,
    ),
}


def get_profile(name: str) -> Profile:
    """Look up a facility profile by name."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"Unknown profile {name!r}; expected one of {sorted(PROFILES)}") from None
