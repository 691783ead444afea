"""Quality gates an ensemble must pass before it is registered.

Labelled data is gated on the held-out test split (ROC AUC, precision, recall, false-alarm rate).
Without labels those cannot be measured and are skipped (the report says so); the label-free gate
``heldout_far_ratio`` then checks the threshold's promise instead: its false-alarm rate measured on
the newest validation rows, which it was not calibrated on, over the rate asked for
(:data:`raysys.evaluation.calibration.GATE_FACTOR`, documented in docs/detection.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

#: Default gates: test ROC AUC, precision, recall, false-alarm rate (labelled data); held-out over
#: asked false-alarm rate (unlabelled data, ``GATE_FACTOR``); median single-row latency (ms).
DEFAULT_GATES: dict[str, float] = {"roc_auc": 0.90, "precision": 0.85, "recall": 0.85,
                                   "false_alarm_rate": 0.05, "heldout_far_ratio": 2.0, "latency_ms": 50.0}
#: Gates whose value must stay at or below the limit; every other gate is a floor.
UPPER_LIMITS = frozenset({"false_alarm_rate", "heldout_far_ratio", "latency_ms", "latency_ms_p95",
                          "false_alarms_per_day", "mean_delay_rows", "mean_delay_seconds"})
#: Gates on test metrics that need labels (event ones included: e.g. ``event_recall``, ``false_alarms_per_day``).
LABELLED_GATES = frozenset({"roc_auc", "pr_auc", "vus_pr", "precision", "recall", "f1", "false_alarm_rate",
                            "event_recall", "event_precision", "event_f1", "false_alarms_per_day",
                            "mean_delay_rows", "mean_delay_seconds"})
#: ``--gate NAME=off`` drops a default gate.
OFF = "off"


@dataclass(frozen=True)
class GateResult:
    """One gate: ``value`` measured against ``limit`` (a floor, or a ceiling for error rates and latency)."""

    name: str
    value: float
    limit: float
    upper: bool

    @property
    def passed(self) -> bool:
        return self.value <= self.limit if self.upper else self.value >= self.limit

    @property
    def margin(self) -> float:
        """How far inside the limit the value is; negative by how much it failed."""
        return self.limit - self.value if self.upper else self.value - self.limit

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "margin": self.margin}

    def describe(self) -> str:
        op = "<=" if self.upper else ">="
        verdict = ("pass" if self.passed else f"FAIL by {abs(self.margin):.4g}" if math.isfinite(self.margin)
                   else "FAIL (not measurable)")
        return f"{self.name} = {self.value:.4g} (must be {op} {self.limit:g}): {verdict}"


@dataclass(frozen=True)
class GateReport:
    """Every gate's result; the ensemble may be registered only if all passed."""

    results: tuple[GateResult, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def passed(self) -> bool:
        """Every gate that could be measured passed (skipped gates are listed, not counted)."""
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        head = "all quality gates passed" if self.passed else \
            f"{len(self.failures)} of {len(self.results)} quality gates failed"
        if self.skipped:
            head += f" ({len(self.skipped)} could not be measured and were skipped)"
        return "\n".join([head, *(f"  {r.describe()}" for r in self.results),
                          *(f"  {name}: skipped, {why}" for name, why in self.skipped)])

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "gates": [r.to_dict() for r in self.results],
                "skipped": [{"name": name, "reason": why} for name, why in self.skipped]}


def parse_gates(items: Iterable[str], base: Mapping[str, float] | None = None) -> dict[str, float]:
    """``NAME=LIMIT`` strings over ``base`` (default :data:`DEFAULT_GATES`); ``NAME=off`` drops a gate."""
    gates = dict(DEFAULT_GATES if base is None else base)
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"a gate must be NAME=LIMIT (or NAME={OFF}), got {item!r}")
        if value.lower() == OFF:
            gates.pop(name, None)
            continue
        try:
            gates[name] = float(value)
        except ValueError:
            raise ValueError(f"gate {name!r}: limit must be a number or {OFF!r}, got {value!r}") from None
    return gates


def check_gates(values: Mapping[str, float], gates: Mapping[str, float] | None = None,
                unmeasured: Mapping[str, str] | None = None) -> GateReport:
    """Compare measured ``values`` (e.g. test metrics plus ``latency_ms``) with ``gates``.

    ``unmeasured``: gate name -> why this evaluation cannot measure it (e.g. no labels); such gates
    are skipped and listed in the report.

    Raises:
        ValueError: a gate names no measured value. A value that is not a number (NaN) fails its gate.
    """
    gates = DEFAULT_GATES if gates is None else gates
    unmeasured = unmeasured or {}
    results, skipped = [], []
    for name, limit in gates.items():
        if name in unmeasured:
            skipped.append((name, unmeasured[name]))
        elif name not in values:
            raise ValueError(f"unknown quality gate {name!r}; measured values are {sorted(values)}")
        else:
            results.append(GateResult(name, float(values[name]), float(limit), name in UPPER_LIMITS))
    return GateReport(tuple(results), tuple(skipped))
