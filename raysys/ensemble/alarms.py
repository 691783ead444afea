"""Event-level alarms: rows flagged by the threshold become alarm events with a start, an end and a peak.

``is_anomaly`` stays the row-level decision (score above the threshold, or a fail-closed reason);
``alarm`` is the event state, decided row by row, in time order, by :class:`AlarmLogic` (stored in
``ensemble.json`` under ``alarm``; docs/ensemble.md#alarm-events):

- an event starts at a row where at least ``k`` of the last ``n`` rows (that row included) are
  flagged: ``k = n = 3`` is a minimum run of 3 rows, ``k = 3, n = 5`` tolerates gaps;
- while it is on, a row keeps it on when it is flagged or its score is above ``clear_level``
  (hysteresis: a level below the threshold, default the threshold itself);
- it ends after ``off_delay`` consecutive rows that do neither, which stay on (the alarm is held,
  like an off-delay timer): flags within ``off_delay`` rows of the last hot row continue the same
  event (events closer than that merge). The flags of an ended event do not count toward the next
  start. An event is a maximal run of rows with ``alarm`` on.

The default (``k = n = 1``, no off-delay, clear at the threshold) makes ``alarm`` equal ``is_anomaly``.
The state between two calls (:class:`AlarmState`: the last ``n - 1`` flags, on or off, the quiet rows
so far) is all a streaming caller must keep to get the alarms of one call over the whole series; Serve
hands it to the client as an opaque token (:meth:`AlarmState.to_token`).
"""

from __future__ import annotations

import base64
import binascii
import json
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np


def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"alarm {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class AlarmLogic:
    """How flagged rows become alarm events (see the module docstring).

    Args:
        k: Flagged rows among the last ``n`` that start an event.
        n: Rows the start rule looks at (``n >= k``).
        clear_level: A row scoring above this keeps an event on (None: the threshold).
        off_delay: Consecutive quiet rows (neither flagged nor at ``clear_level``) that end an event;
            they are still part of it.
    """

    k: int = 1
    n: int = 1
    clear_level: float | None = None
    off_delay: int = 0

    def __post_init__(self) -> None:
        _count(self.k, "k", 1)
        _count(self.n, "n", 1)
        _count(self.off_delay, "off_delay", 0)
        if self.n < self.k:
            raise ValueError(f"alarm n must be >= k, got k={self.k}, n={self.n}")
        if self.clear_level is not None and (isinstance(self.clear_level, bool) or not isinstance(
                self.clear_level, numbers.Real) or not np.isfinite(self.clear_level)):
            raise ValueError(f"alarm clear_level must be a finite number or null, got {self.clear_level!r}")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None, source: str = "ensemble.json") -> "AlarmLogic":
        """The logic of an ``ensemble.json`` ``alarm`` entry (None: the default); ``ValueError`` naming ``source``."""
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise ValueError(f"{source}: alarm must be an object with k, n, clear_level, off_delay, got {spec!r}")
        unknown = sorted(set(spec) - set(cls.keys()))
        if unknown:
            raise ValueError(f"{source}: unknown alarm key(s) {unknown}; expected k, n, clear_level, off_delay")
        try:
            return cls(**spec)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def parse(cls, text: str) -> "AlarmLogic":
        """``"k=3,n=5,off_delay=10,clear_level=2.5"`` (any subset) as on the command line."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in cls.keys():
                raise ValueError(f"alarm setting {part!r}: expected k=INT, n=INT, off_delay=INT or clear_level=NUMBER")
            try:
                values[key] = float(value) if key == "clear_level" else int(value)
            except ValueError:
                raise ValueError(f"alarm setting {part!r}: {value!r} is not a number") from None
        return cls(**values)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The settings' names, as ``ensemble.json`` and the command line spell them."""
        return tuple(f.name for f in fields(cls))

    def to_spec(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AlarmState:
    """Where the alarm logic stands after a row: the last ``n - 1`` flags (oldest first), whether an
    event is on, and the quiet rows since its last flagged or hot row."""

    recent: list[bool] = field(default_factory=list)
    active: bool = False
    quiet: int = 0

    #: Version of the token's layout.
    TOKEN_VERSION = 1

    def to_token(self, logic: AlarmLogic) -> str:
        """An opaque string for a client to send back (base64 of JSON, bound to ``logic``)."""
        body = {"v": self.TOKEN_VERSION, "logic": logic.to_spec(),
                "recent": "".join("1" if f else "0" for f in self.recent), "active": self.active, "quiet": self.quiet}
        return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()

    @classmethod
    def from_token(cls, token: str, logic: AlarmLogic) -> "AlarmState | None":
        """The state in ``token``; None when it was made for other alarm logic (the event restarts).

        Raises:
            ValueError: naming what is wrong with a token this raysys did not write.
        """
        try:
            body = json.loads(base64.urlsafe_b64decode(token.encode()))
            recent, active, quiet = body["recent"], body["active"], body["quiet"]
            valid = (body["v"] == cls.TOKEN_VERSION and isinstance(recent, str) and set(recent) <= {"0", "1"}
                     and isinstance(active, bool) and isinstance(quiet, int) and quiet >= 0)
        except (binascii.Error, ValueError, UnicodeDecodeError, KeyError, TypeError):
            valid = False
        if not valid:
            raise ValueError("alarm_state is not a token this model returned (send back the last response's "
                             "alarm_state unchanged, or leave it out to start afresh)")
        if body.get("logic") != logic.to_spec() or len(recent) > logic.n - 1:
            return None
        return cls([c == "1" for c in recent], active, quiet)


def alarm_rows(flags: np.ndarray, scores: np.ndarray, threshold: float, logic: AlarmLogic,
               state: AlarmState | None = None) -> tuple[np.ndarray, AlarmState]:
    """``alarm`` for each row of one series (``flags`` = ``is_anomaly``), continuing from ``state``
    (None: nothing before); and the state after the last row.

    A row is hot when it is flagged or scores above ``clear_level``; an event ends at the first row
    after ``off_delay`` quiet rows in a row (that row is off), and the flags before it no longer count
    toward the next start.
    """
    clear = threshold if logic.clear_level is None else logic.clear_level
    state = state or AlarmState()
    recent, active, quiet = list(state.recent), state.active, state.quiet
    alarm = np.zeros(len(flags), dtype=bool)
    for i, (flag, score) in enumerate(zip(np.asarray(flags, dtype=bool).tolist(),
                                          np.asarray(scores, dtype=np.float64).tolist())):
        recent = (recent + [flag])[-logic.n:]
        if active:
            quiet = 0 if flag or score > clear else quiet + 1
            if quiet > logic.off_delay:
                active, quiet, recent = False, 0, []
        if not active and sum(recent) >= logic.k:
            active, quiet = True, 0
        alarm[i] = active
    return alarm, AlarmState(recent[-(logic.n - 1):] if logic.n > 1 else [], active, quiet)


def alarm_events(alarm: np.ndarray, scores: np.ndarray, index: Sequence[Any] | None = None,
                 top_sensors: Sequence[Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """The events of one series: each maximal run of ``alarm`` as ``start``, ``end`` (its first and last
    row, or their ``index`` labels, e.g. timestamps), ``rows``, ``peak_score``, ``peak`` (where) and,
    given ``top_sensors``, those of the peak row."""
    from raysys.evaluation.events import events_of

    label = (lambda i: i) if index is None else (lambda i: index[i])
    events = []
    for start, stop in events_of(alarm):
        peak = start + int(np.argmax(scores[start:stop]))
        event = {"start": label(start), "end": label(stop - 1), "rows": stop - start,
                 "peak_score": float(scores[peak]), "peak": label(peak)}
        if top_sensors is not None:
            event["top_sensors"] = list(top_sensors[peak])
        events.append(event)
    return events
