"""Request and response bodies of the HTTP API, and the validation that turns a body into rows.

``POST /v1/predict`` takes one of two forms, both keyed by sensor name (the model's feature schema,
``GET /v1/model``'s ``sensors``), rows in time order:

- records: ``{"readings": [{"flow_in": 1.2, "ph": 7.1, ...}, ...]}``;
- columnar: ``{"columns": {"flow_in": [1.2, 1.3, ...], "ph": [7.1, 7.0, ...], ...}}``, compact for large batches.

An optional ``history`` (same form, earlier rows) gives sequence members and score smoothing the context
before the first reading (``GET /v1/model``'s ``history`` rows make the readings score as in one long
series); those rows are not scored in the response. Every problem is a :class:`RequestError` with an
HTTP status (400 body not JSON, 408 body too slow, 413 body or batch too large, 422 anything else) and a
message naming the field, the reading and the sensor.

Readings are kept as float64: a reading beyond float32 (``1e300``) is a finite number the runtime flags
``out_of_range``, not a bad request; only NaN and infinities are. Answers are strict JSON
(:func:`to_strict_json` refuses NaN and infinities) and name, per reading, the runtime's fail-closed
``reason`` and its ``sensors``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from raysys.ensemble.alarms import AlarmLogic, AlarmState

#: A finite JSON number: no strings, booleans, nulls, NaN or infinities.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]

_RECORDS = TypeAdapter(list[dict[str, Number]])
_COLUMNS = TypeAdapter(dict[str, list[Number]])
_FIELDS = ("readings", "columns", "history", "explain", "alarm_state")
#: Most validation problems listed in one response.
MAX_ERRORS = 10


class RequestError(ValueError):
    """A request that cannot be scored: ``status`` (4xx for a bad request; 503 when its body never
    arrived), a one-line ``message`` and every problem found in ``errors``."""

    #: Extra response headers per status: retry a lost body; close a connection whose body was left unread.
    HEADERS = {503: {"Retry-After": "1"}, 408: {"Connection": "close"}, 413: {"Connection": "close"}}

    def __init__(self, status: int, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or [message]

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, "errors": self.errors}

    def headers(self) -> dict[str, str] | None:
        return self.HEADERS.get(self.status)


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict`` (exactly one of ``readings`` and ``columns``).

    Args:
        readings: Records form: one object per reading, from sensor name to value.
        columns: Columnar form: sensor name to its values, all of one length.
        history: Optional earlier rows in the same form, context only (sequence members' windows, score
            smoothing): not answered.
        explain: Also answer each reading's per-sensor ``contributions`` (summing to its score) and
            ``top_sensors`` (docs/attribution.md).
        alarm_state: The ``alarm_state`` of the previous answer in this stream, unchanged: the alarm
            events continue from it (left out: they start afresh, and the answer says ``alarm_restarted``).
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"readings": [{"sensor_a": 1.0, "sensor_b": 2.5}]},
        {"columns": {"sensor_a": [1.0, 1.1], "sensor_b": [2.5, 2.4]}},
    ]})

    readings: list[dict[str, Number]] | None = None
    columns: dict[str, list[Number]] | None = None
    history: list[dict[str, Number]] | dict[str, list[Number]] | None = None
    explain: bool = False
    alarm_state: str | None = None


class ModelRef(BaseModel):
    """Which model answered: registered name (or ensemble name) and version."""

    name: str
    version: str


class Prediction(BaseModel):
    """One reading's result (records form).

    Args:
        score: Ensemble score (finite).
        is_anomaly: Above the threshold, or flagged for a ``reason`` (the row-level decision).
        alarm: The alarm event state at this reading (docs/ensemble.md#alarm-events).
        members: Normalised member scores (finite).
        reason: Why the reading is flagged whatever its score (``out_of_range``, ``non_finite_score``), or null.
        sensors: The sensors behind ``reason`` (empty without one).
        contributions: With ``explain``: sensor name to its part of ``score`` (they sum to it).
        top_sensors: With ``explain``: the sensors behind ``reason``, else up to three with the largest
            positive contributions, most first.
    """

    score: float
    is_anomaly: bool
    alarm: bool
    members: dict[str, float]
    reason: str | None = None
    sensors: list[str] = []
    contributions: dict[str, float] | None = None
    top_sensors: list[str] | None = None


class PredictResponse(BaseModel):
    """Body of a ``POST /v1/predict`` answer.

    Records requests get ``predictions`` (one per reading, in order); columnar requests get the
    columns ``score``, ``is_anomaly`` and ``members`` instead.

    Args:
        model: Name and version of the model that scored the readings.
        threshold: Scores above it are anomalies.
        predictions: Records form: per-reading ensemble score, ``is_anomaly`` and normalised member scores.
        score: Columnar form: ensemble scores.
        is_anomaly: Columnar form: anomaly flags.
        alarm: Columnar form: the alarm event state at each reading.
        members: Columnar form: member name to its normalised scores.
        reason: Columnar form: per reading, its fail-closed reason or null.
        sensors: Columnar form: per reading, the sensors behind its reason.
        contributions: Columnar form, with ``explain``: sensor name to its parts of the scores.
        top_sensors: Columnar form, with ``explain``: per reading, its top sensors (see :class:`Prediction`).
        alarm_state: Opaque; send it back as the next request's ``alarm_state`` to continue the events.
        alarm_restarted: True when the alarm logic started afresh at this request's first reading (no
            ``alarm_state`` sent, or one made for other alarm settings): an event in progress restarts.
    """

    model: ModelRef
    threshold: float
    predictions: list[Prediction] | None = None
    score: list[float] | None = None
    is_anomaly: list[bool] | None = None
    alarm: list[bool] | None = None
    members: dict[str, list[float]] | None = None
    reason: list[str | None] | None = None
    sensors: list[list[str]] | None = None
    contributions: dict[str, list[float]] | None = None
    top_sensors: list[list[str]] | None = None
    alarm_state: str
    alarm_restarted: bool


@dataclass
class ParsedRequest:
    """A validated request: ``rows`` (float64, history first, in schema order) and how to answer."""

    rows: np.ndarray
    n_history: int
    columnar: bool
    explain: bool = False
    alarm_state: str | None = None
    n_readings: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_readings = len(self.rows) - self.n_history


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = json.dumps(value) if isinstance(value, (str, bool)) else repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _where(name: str, loc: tuple[Any, ...]) -> str:
    out = name
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f"[{json.dumps(part)}]"
    return out


def _pydantic_errors(exc: ValidationError, name: str) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        where, value, kind = _where(name, tuple(err["loc"])), err.get("input"), err["type"]
        if kind == "finite_number":
            problems.append(f"{where}: NaN and infinite values are not allowed, got {value}")
        elif kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
            problems.append(f"{where}: integer of {len(str(abs(value)))} digits is beyond float64")
        elif kind == "float_type":
            problems.append(f"{where}: expected a number, got {_describe(value)}")
        elif kind == "list_type":
            problems.append(f"{where}: expected a list, got {_describe(value)}")
        elif kind == "dict_type":
            expected = "an object from sensor name to value" if name != "columns" else \
                "an object from sensor name to a list of values"
            problems.append(f"{where}: expected {expected}, got {_describe(value)}")
        else:
            problems.append(f"{where}: {err['msg']}")
    return problems


def _fail(problems: list[str], status: int = 422) -> None:
    if problems:
        extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RequestError(status, problems[0] + extra, problems[:MAX_ERRORS])


def _sensor_problems(where: str, keys: Any, sensors: list[str], known: set[str]) -> list[str]:
    keys = set(keys)
    problems = []
    unknown = [k for k in keys if k not in known]
    if unknown:
        problems.append(f"{where}: unknown sensor(s) {', '.join(map(repr, sorted(unknown)))}; "
                        f"the model's sensors are {sensors}")
    missing = [s for s in sensors if s not in keys]
    if missing:
        problems.append(f"{where}: missing sensor(s) {', '.join(map(repr, missing))}")
    return problems


def _count(value: Any, columnar: bool) -> int:
    """Rows in a not-yet-validated part (0 when it has the wrong shape; validation says why)."""
    if columnar:
        if isinstance(value, dict):
            return max((len(v) for v in value.values() if isinstance(v, list)), default=0)
        return 0
    return len(value) if isinstance(value, list) else 0


def _rows(name: str, value: Any, columnar: bool, sensors: list[str], known: set[str]) -> np.ndarray:
    """Validate one part (``readings``/``columns``/``history``) into float64 rows in schema order."""
    try:
        data = (_COLUMNS if columnar else _RECORDS).validate_python(value)
    except ValidationError as exc:
        _fail(_pydantic_errors(exc, name))
    if columnar:
        _fail(_sensor_problems(name, data, sensors, known))
        lengths = {k: len(v) for k, v in data.items()}
        if len(set(lengths.values())) > 1:
            _fail([f"{name}: every column must hold the same number of values, got "
                   + ", ".join(f"{k!r}: {n}" for k, n in lengths.items())])
        rows = np.array([data[s] for s in sensors], dtype=np.float64).T
    else:
        problems = []
        for i, reading in enumerate(data):
            if reading.keys() != known:
                problems += _sensor_problems(f"{name}[{i}]", reading, sensors, known)
                if len(problems) >= MAX_ERRORS:
                    break
        _fail(problems)
        rows = np.array([[reading[s] for s in sensors] for reading in data], dtype=np.float64)
    # float64, as parsed: a reading beyond float32 is the runtime's to flag (out_of_range), not an error
    return rows.reshape(-1, len(sensors))


async def read_body(chunks: AsyncIterator[bytes], declared_length: str | None, max_bytes: int,
                    timeout_s: float) -> bytes:
    """The request body from ``chunks`` (``request.stream()``), never holding more than ``max_bytes``.

    The limit holds whatever the transfer encoding: a ``Content-Length`` over it is refused before any
    byte is read, and a chunked (or lying) body is refused as soon as the bytes read pass it.

    Raises:
        RequestError: 413 over ``max_bytes``; 408 when the body has not arrived in full within
            ``timeout_s``, 503 when not one byte of it has (Serve lost it: retry).
    """
    def too_large(size: str) -> RequestError:
        return RequestError(413, f"request body of {size} bytes is over the limit of {max_bytes} bytes "
                                 "(max_body_bytes); split it into smaller requests")

    if declared_length and declared_length.isdigit() and int(declared_length) > max_bytes:
        raise too_large(declared_length)
    body = bytearray()

    async def read() -> None:
        async for chunk in chunks:
            if len(body) + len(chunk) > max_bytes:
                raise too_large(f"more than {max_bytes}")
            body.extend(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        if not body:
            raise RequestError(503, f"request body not received within {timeout_s:g}s; retry the request") from None
        raise RequestError(408, f"request body not received in full within {timeout_s:g}s (body_timeout_s): "
                                f"{len(body)} bytes arrived") from None
    return bytes(body)


def to_strict_json(content: Any) -> bytes:
    """``content`` as strict JSON (RFC 8259): never a ``NaN`` or ``Infinity`` token.

    Raises:
        ValueError: if ``content`` holds a NaN or infinite float.
    """
    # pydantic-core writes non-finite floats as the strings "NaN"/"Infinity"/"-Infinity" in this mode; only if
    # such a string appears (rare: it may also be a genuine string) encode again with null instead to tell
    out = pydantic_core.to_json(content, inf_nan_mode="strings")
    if (b'"NaN"' in out or b'Infinity"' in out) and pydantic_core.to_json(content, inf_nan_mode="null") != out:
        raise ValueError("refusing to encode a NaN or infinite number as JSON")
    return out


def parse_json(body: bytes) -> Any:
    """The JSON document in ``body`` (pydantic-core's parser; NaN and Infinity tokens are read, so that
    validation can name the field); 400 if it is not JSON."""
    if not body.strip():
        raise RequestError(400, "request body is empty; expected a JSON object with 'readings' or 'columns'")
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None


def parse_predict_request(document: Any, sensors: list[str], max_rows: int) -> ParsedRequest:
    """Validate a parsed ``POST /v1/predict`` body against the model's ``sensors``.

    Args:
        document: The JSON body, already parsed (see :func:`parse_json`).
        sensors: The model's feature schema, in order.
        max_rows: Most rows (readings plus history) one request may hold.

    Raises:
        RequestError: 413 over ``max_rows``, 422 for any other problem, naming it.
    """
    if not isinstance(document, dict):
        raise RequestError(422, f"request body must be a JSON object with 'readings' or 'columns', "
                                f"got {type(document).__name__}")
    unknown = [k for k in document if k not in _FIELDS]
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(map(repr, unknown))} in request body; "
                                f"expected 'readings' or 'columns' (and optionally 'history', 'explain', "
                                f"'alarm_state')")
    given = [k for k in ("readings", "columns") if document.get(k) is not None]
    if len(given) != 1:
        raise RequestError(422, "request body must hold exactly one of 'readings' (a list of objects "
                                "from sensor name to value) and 'columns' (sensor name to a list of values), "
                                f"got {'both' if given else 'neither'}")
    name = given[0]
    columnar = name == "columns"
    value, history = document[name], document.get("history")
    n_rows = _count(value, columnar)
    n_history = _count(history, columnar)
    if n_rows + n_history > max_rows:
        with_history = f" plus {n_history} history rows" if n_history else ""
        raise RequestError(413, f"batch too large: {n_rows} readings{with_history} exceed the maximum of "
                                f"{max_rows} rows per request (max_request_rows); split it into smaller requests")
    if value == [] or value == {}:
        raise RequestError(422, f"empty batch: {name!r} holds no readings")
    known = set(sensors)
    rows = _rows(name, value, columnar, sensors, known)
    if not len(rows):
        raise RequestError(422, f"empty batch: {name!r} holds no readings")
    past = _rows("history", history, columnar, sensors, known) if history not in (None, [], {}) else rows[:0]
    explain = document.get("explain", False)
    if not isinstance(explain, bool):
        raise RequestError(422, f"'explain' must be true or false, got {_describe(explain)}")
    alarm_state = document.get("alarm_state")
    if alarm_state is not None and not isinstance(alarm_state, str):
        raise RequestError(422, "'alarm_state' must be the string a previous answer returned, got "
                                f"{_describe(alarm_state)}")
    return ParsedRequest(np.concatenate([past, rows]) if len(past) else rows, len(past), columnar, explain, alarm_state)


def parse_alarm_state(token: str | None, logic: AlarmLogic) -> AlarmState | None:
    """The alarm state a request sent back (None: none, or one made for other alarm settings).

    Raises:
        RequestError: 422 for a token this model did not write.
    """
    if token is None:
        return None
    try:
        return AlarmState.from_token(token, logic)
    except ValueError as exc:
        raise RequestError(422, str(exc)) from None


def predict_response(parsed: ParsedRequest, result: dict[str, Any], model: dict[str, str],
                     threshold: float, sensors: list[str]) -> dict[str, Any]:
    """The JSON answer for ``parsed`` from the runtime's ``result`` (history rows already dropped):
    score, ``is_anomaly``, ``alarm``, member scores, and the fail-closed ``reason`` (null when none) and its
    ``sensors``; with ``parsed.explain``, the per-sensor ``contributions`` and ``top_sensors``; ``alarm_state``
    and ``alarm_restarted`` from ``result`` (the handler adds them).

    Raises:
        ValueError: if a score is not finite (the runtime guarantees they are; never answer one).
    """
    score = np.asarray(result["score"], dtype=np.float64)
    members = {k: np.asarray(v, dtype=np.float64) for k, v in result["members"].items()}
    if not (np.isfinite(score).all() and all(np.isfinite(v).all() for v in members.values())):
        raise ValueError("the runtime returned a non-finite score")
    flags = np.asarray(result["is_anomaly"], dtype=bool).tolist()
    alarms = np.asarray(result["alarm"], dtype=bool).tolist()
    reasons = [str(r) or None for r in result["reason"]]
    reason_sensors = [list(s) for s in result["reason_sensors"]]
    score_list = score.tolist()
    member_lists = {k: v.tolist() for k, v in members.items()}
    out: dict[str, Any] = {"model": model, "threshold": threshold, "alarm_state": result["alarm_state"],
                           "alarm_restarted": bool(result["alarm_restarted"])}
    if parsed.explain:
        contributions = np.asarray(result["contributions"], dtype=np.float64)
        if not np.isfinite(contributions).all():
            raise ValueError("the runtime returned a non-finite contribution")
        by_sensor = dict(zip(sensors, contributions.T.tolist()))
        top = [list(t) for t in result["top_sensors"]]
    if parsed.columnar:
        out.update(score=score_list, is_anomaly=flags, alarm=alarms, members=member_lists, reason=reasons,
                   sensors=reason_sensors)
        if parsed.explain:
            out.update(contributions=by_sensor, top_sensors=top)
    else:
        names = list(member_lists)
        out["predictions"] = [
            {"score": s, "is_anomaly": a, "alarm": alarms[i], "members": {n: member_lists[n][i] for n in names},
             "reason": r, "sensors": z}
            for i, (s, a, r, z) in enumerate(zip(score_list, flags, reasons, reason_sensors))]
        if parsed.explain:
            for i, prediction in enumerate(out["predictions"]):
                prediction.update(contributions={k: v[i] for k, v in by_sensor.items()}, top_sensors=top[i])
    return out

