"""Score sensor rows with an exported ensemble: ONNX members, normalisation, weighted mean, threshold.

This module is what production imports (the MLflow pyfunc wrapper, Ray Serve, ``raysys predict``),
so it needs only numpy, pandas and onnxruntime: never torch, never ``raysys.models``.

An ensemble directory holds ``ensemble.json`` (see ``docs/ensemble.md``) beside its ``.onnx`` files.
Every member model takes *raw* sensor values (the training scaler is folded into the graph) with a
dynamic batch axis, and outputs an anomaly score per sample (higher is more anomalous).

Sequence members take windows of ``window`` consecutive rows and score each row by the window that
ends at it. For the first ``window - 1`` rows given there is not enough history: the member scores
them on a window left-padded by repeating the first row (that score is reported), but the ensemble
score of those rows leaves the member out and renormalises the other weights, since a padded window
looks like a stuck sensor. So a single reading can always be scored. A caller that streams readings
keeps the last :attr:`EnsembleRuntime.history` rows and passes them before the new ones; the new
rows then score exactly as in one batch over the whole series. Independent series (several
requests) can be scored in one call with :meth:`EnsembleRuntime.score_many`.

With ``smoothing`` > 1 in ``ensemble.json`` the ensemble score of a row is the mean of the combined
score over the last ``smoothing`` rows of its series (fewer at its start: :func:`trailing_mean`), and
the threshold was calibrated on such scores. :attr:`EnsembleRuntime.history` then counts
``smoothing - 1`` more rows, so that streamed rows still score as in one batch.

The runtime fails closed: a row is an anomaly, whatever its score, when a member that counts on it
scores it non-finite (reason ``non_finite_score``) or a sensor lies far outside the range seen in
training (``out_of_range``: beyond ``[min - factor * span, max + factor * span]`` of the normal
training rows, ``factor`` per sensor in ``ensemble.json``'s ``input_range``). Such rows name their
sensors, and every number the runtime returns is finite (non-finite scores are clipped to the
largest float). The rule is decided on each row itself, before smoothing: a flagged row stays flagged, and
a row whose combined score is non-finite is left out of the smoothed score of the rows after it.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from raysys.ensemble.alarms import AlarmLogic, AlarmState, alarm_rows
from raysys.layout import ENSEMBLE_MODEL_ARTIFACT, ENSEMBLE_SPEC

#: The ``ensemble.json`` format this raysys writes. The versioning rule (docs/ensemble.md): a new
#: key that older readers may ignore keeps the version; any change an older reader would misread
#: (a new combination, a member entry it must understand) bumps it, and the reader keeps every
#: version it can still score in :data:`SUPPORTED_FORMAT_VERSIONS`. Version 2 added ``smoothing``
#: (a version 1 reader would ignore it and compare unsmoothed scores with a threshold calibrated on
#: smoothed ones); a version 1 spec has no smoothing.
FORMAT_VERSION = 2
#: ``ensemble.json`` versions this reader loads; any other fails naming its version and these.
SUPPORTED_FORMAT_VERSIONS = (1, 2)
#: Column of ``score_frame`` output holding member ``name``'s normalised score.
MEMBER_COLUMN = "score_{name}"
#: Column of ``score_frame(explain=True)`` output holding ``sensor``'s part of the score.
CONTRIBUTION_COLUMN = "contribution_{sensor}"
#: Most sensors a row's ``top_sensors`` names (those with the largest positive contributions, most first).
TOP_SENSORS = 3
#: Samples times window length per onnxruntime call (8192 rows of a dense member, 512 windows of 16 rows):
#: bounds the memory windows take, and keeps a call's working set small (onnxruntime's LSTM takes 1.5x
#: longer per window in calls of 8192 windows than of 512).
DEFAULT_BATCH_ROWS = 8192


def positions_of(n_rows: int, lengths: Sequence[int] | None = None) -> np.ndarray:
    """Each row's index within its own series, for ``n_rows`` rows made of series of ``lengths`` rows."""
    if lengths is None:
        return np.arange(n_rows)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths < 1).any() or lengths.sum() != n_rows:
        raise ValueError(f"series lengths must be positive and sum to the {n_rows} rows, got {lengths.tolist()}")
    return np.arange(n_rows) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def window_rows(positions: np.ndarray, window: int, rows: np.ndarray) -> np.ndarray:
    """Row indices (len(rows), window) of the window ending at each of ``rows``.

    ``positions`` give every row's index within its own series; a window never reaches before its
    series' first row but repeats that row instead (left padding).
    """
    first = rows - positions[rows]
    return np.maximum(first[:, None], rows[:, None] - (window - 1) + np.arange(window))


def trailing_mean(values: np.ndarray, window: int, lengths: Sequence[int] | None = None) -> np.ndarray:
    """Mean of each value and the ``window - 1`` before it in its series (fewer at a series' start).

    ``lengths``: ``values`` are several independent series of these lengths, one after the other
    (default: one series); a mean never reaches into the series before. A non-finite value is left
    out of the means of the values after it and is returned as it is. Each row's mean adds the same
    values in the same order whatever came before its window, so a row scores identically in a
    stream (given ``window - 1`` earlier values) and in one batch. Float64 out; ``window == 1``
    returns ``values`` unchanged.
    """
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    values = np.asarray(values, dtype=np.float64)
    positions = positions_of(len(values), lengths)
    if window == 1:
        return values
    usable = np.isfinite(values)
    kept = np.where(usable, values, 0.0)
    total, count = np.zeros(len(values)), np.zeros(len(values))
    with np.errstate(over="ignore", invalid="ignore"):  # sums beyond float64 become inf (finite() clips them)
        for lag in range(min(window, len(values))):  # O(rows * window), in a fixed order (a cumsum's would drift)
            reach = positions[lag:] >= lag
            total[lag:] += np.where(reach, kept[:len(values) - lag], 0.0)
            count[lag:] += reach & usable[:len(values) - lag]
        return np.where(usable, total / np.maximum(count, 1), values)


def history_windows(X: np.ndarray, window: int, positions: np.ndarray | None = None) -> np.ndarray:
    """One window per row of ``X``, ending at that row: shape (n, window, sensors), left-padded.

    ``positions`` default to ``0..n-1`` (``X`` is one series); see :func:`window_rows`.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows = np.arange(len(X))
    return X[window_rows(rows if positions is None else positions, window, rows)]


#: Why a row is flagged whatever its score (``reason``); ``NO_REASON`` for rows decided by the threshold.
OUT_OF_RANGE, NON_FINITE_SCORE, NO_REASON = "out_of_range", "non_finite_score", ""
#: How far outside the training range a reading may lie, in spans of that range (default of ``input_range``).
DEFAULT_RANGE_FACTOR = 3.0


def finite(values: np.ndarray) -> np.ndarray:
    """``values`` with NaN and +inf as the largest float, -inf as the most negative one."""
    big = np.finfo(np.float64).max
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=big, posinf=big, neginf=-big)


def normalise(raw: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Member scores (n, members) on a common scale: ``(raw - center) / scale``."""
    return (raw - center) / scale


def row_weights(weights: np.ndarray, n_rows: int, windows: np.ndarray | None = None,
                positions: np.ndarray | None = None) -> np.ndarray:
    """Each member's weight on each row, shape (n, members); rows sum to 1.

    With ``windows`` (rows each member looks at), a row leaves out the members whose window reaches
    before its series' first row (``window > position + 1``: their score rests on padding) and
    renormalises the other weights. A row no weighted member can score on real history keeps them all.
    ``positions`` as in :func:`history_windows`.
    """
    full = np.broadcast_to(np.asarray(weights, dtype=np.float64), (n_rows, len(weights)))
    if windows is None:
        return full
    positions = np.arange(n_rows) if positions is None else positions
    kept = full * (positions[:, None] >= np.asarray(windows)[None, :] - 1)
    total = kept.sum(axis=1, keepdims=True)
    return np.where(total > 0, kept / np.where(total > 0, total, 1.0), full)


def combine(normalised: np.ndarray, weights: np.ndarray, windows: np.ndarray | None = None,
            positions: np.ndarray | None = None) -> np.ndarray:
    """The ensemble score: weighted mean of normalised member scores (n, members); weights sum to 1.

    Members with no weight on a row (see :func:`row_weights`) are left out, not multiplied by 0, so
    their score never reaches the result (``0 * inf`` would be NaN).
    """
    w = row_weights(weights, len(normalised), windows, positions)
    return (np.where(w > 0, normalised, 0.0) * w).sum(axis=1)


def attribute(normalised: np.ndarray, weights: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Each row's combined score split over the sensors, shape (n, sensors); a row sums to :func:`combine`'s.

    Args:
        normalised: Normalised member scores (n, members).
        weights: Each member's weight on each row (n, members), as :func:`row_weights` gives them.
        terms: Each member's raw per-sensor terms (n, members, sensors), summing to its raw score; NaN
            for a member without them.

    A member's part of a row, ``weight * normalised``, is split in proportion to its terms
    (``terms / terms.sum()``), so the normalisation's centre is shared out the same way and a member
    scoring below its centre gives negative contributions. A member without terms (the VAE's
    Mahalanobis distance, the Isolation Forest), or whose terms sum to 0, is split like the
    weighted mean of the shares of the members that have terms on that row, or equally over the
    sensors when none has (docs/attribution.md).
    """
    n_sensors = terms.shape[2]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        total = terms.sum(axis=2)
        usable = np.isfinite(terms).all(axis=2) & np.isfinite(total) & (total != 0) & (weights > 0)
        shares = np.where(usable[..., None], terms / np.where(usable, total, 1.0)[..., None], 0.0)
        have = np.where(usable, weights, 0.0)
        weight_sum = have.sum(axis=1, keepdims=True)
        mixed = np.einsum("nm,nms->ns", have, shares) / np.where(weight_sum > 0, weight_sum, 1.0)
        fallback = np.where(weight_sum > 0, mixed, 1.0 / n_sensors)
        shares = np.where(usable[..., None], shares, fallback[:, None, :])
        part = np.where(weights > 0, normalised, 0.0) * weights
        return np.einsum("nm,nms->ns", part, shares)


def session_options(intra_op_threads: int | None = 1) -> ort.SessionOptions:
    """CPU session options: ``intra_op_threads`` threads per call (0 or None: onnxruntime's default)."""
    if intra_op_threads is not None and intra_op_threads < 0:
        raise ValueError(f"intra_op_threads must be >= 0 or None, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or 0
    options.inter_op_num_threads = 1
    return options


class MemberSessions:
    """One onnxruntime session per member file; raw member scores for rows in time order.

    Args:
        directory: Folder holding the member ``.onnx`` files.
        members: ``ensemble.json`` member entries (``name``, ``file``, ``output``, ``window``, and
            ``contributions``, the output of the score's per-sensor terms, where the member has one).
        n_sensors: Expected number of sensor columns.
        intra_op_threads: Threads per onnxruntime call (0 or None: onnxruntime's default).
    """

    def __init__(self, directory: str | os.PathLike, members: list[Mapping[str, Any]], n_sensors: int,
                 intra_op_threads: int | None = 1):
        self.names = [m["name"] for m in members]
        self.n_sensors = n_sensors
        options = session_options(intra_op_threads)
        self._files: dict[str, tuple[ort.InferenceSession, int]] = {}
        for m in members:
            if m["file"] not in self._files:
                path = Path(directory) / m["file"]
                if not path.exists():
                    raise FileNotFoundError(f"{path}: member model {m['name']!r} listed in {ENSEMBLE_SPEC} is missing")
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                self._files[m["file"]] = (session, int(m.get("window", 1)))
        self._outputs = [(m["file"], m["output"], m.get("contributions")) for m in members]
        self.history = max(window for _, window in self._files.values()) - 1

    def raw_scores(self, X: np.ndarray, positions: np.ndarray | None = None,
                   batch_rows: int = DEFAULT_BATCH_ROWS) -> np.ndarray:
        """Raw member scores, shape (n, members), for raw sensor rows ``X`` in time order.

        ``positions``: each row's index within its own series (default: ``X`` is one series).
        ``batch_rows``: rows per onnxruntime call of a dense member; a sequence member gets
        ``batch_rows // window`` windows per call.
        """
        return self._run(X, positions, batch_rows, explain=False)[0]

    def raw_scores_and_terms(self, X: np.ndarray, positions: np.ndarray | None = None,
                             batch_rows: int = DEFAULT_BATCH_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`raw_scores` and each member's per-sensor terms, shape (n, members, sensors), which sum to
        its raw score; NaN for a member without them (docs/attribution.md)."""
        return self._run(X, positions, batch_rows, explain=True)

    def _run(self, X: np.ndarray, positions: np.ndarray | None, batch_rows: int,
             explain: bool) -> tuple[np.ndarray, np.ndarray | None]:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_sensors:
            raise ValueError(f"X must have shape (rows, {self.n_sensors}), got {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinite values")
        positions = np.arange(len(X)) if positions is None else positions
        out = np.empty((len(X), len(self._outputs)), dtype=np.float32)
        terms = np.full((len(X), len(self._outputs), self.n_sensors), np.nan, dtype=np.float32) if explain else None
        for file, (session, window) in self._files.items():
            wanted = [(j, output, contributions if explain else None)
                      for j, (f, output, contributions) in enumerate(self._outputs) if f == file]
            names = sorted({name for _, *pair in wanted for name in pair if name})  # run computes only these
            feed = session.get_inputs()[0].name
            step = max(1, batch_rows // window)
            for start in range(0, len(X), step):
                rows = np.arange(start, min(start + step, len(X)))
                batch = X[rows] if window == 1 else X[window_rows(positions, window, rows)]
                results = dict(zip(names, session.run(names, {feed: batch})))
                for j, output, contributions in wanted:
                    out[start:start + len(batch), j] = results[output].reshape(-1)
                    if contributions:
                        terms[start:start + len(batch), j] = results[contributions]
        return out, terms


class EnsembleRuntime:
    """A loaded ensemble: score raw sensor rows, flag anomalies.

    Use :meth:`load` (a directory) or :func:`load_runtime` (a directory or an MLflow model URI).

    Args:
        spec: The parsed ``ensemble.json``.
        directory: Folder holding the member ``.onnx`` files.
        intra_op_threads: Threads per onnxruntime call (0 or None: onnxruntime's default).
    """

    def __init__(self, spec: dict[str, Any], directory: str | os.PathLike, intra_op_threads: int | None = 1):
        validate_spec(spec, Path(directory) / ENSEMBLE_SPEC)
        self.spec = spec
        self.directory = Path(directory)
        members = spec["members"]
        self._sessions = MemberSessions(directory, members, len(spec["sensors"]), intra_op_threads)
        self._center = np.array([m["center"] for m in members], dtype=np.float64)
        self._scale = np.array([m["scale"] for m in members], dtype=np.float64)
        self._weights = np.array([m["weight"] for m in members], dtype=np.float64)
        self._windows = np.array([m["window"] for m in members])
        self._low, self._high = allowed_range(spec)
        self._train_min, self._train_max = allowed_range(spec, with_factor=False)
        self._smoothing = int(spec.get("smoothing", 1))
        self.alarm_logic = AlarmLogic.from_spec(spec.get("alarm"), str(Path(directory) / ENSEMBLE_SPEC))

    @classmethod
    def load(cls, path: str | os.PathLike, intra_op_threads: int | None = 1) -> "EnsembleRuntime":
        """Load the ensemble directory ``path`` (holding ``ensemble.json``)."""
        spec_path = Path(path) / ENSEMBLE_SPEC
        if not spec_path.exists():
            raise FileNotFoundError(f"{path}: no {ENSEMBLE_SPEC}; not an ensemble directory")
        return cls(json.loads(spec_path.read_text()), path, intra_op_threads)

    @property
    def sensors(self) -> list[str]:
        """Sensor columns the members take, in order."""
        return list(self.spec["sensors"])

    @property
    def threshold(self) -> float:
        """Ensemble scores above this are anomalies."""
        return float(self.spec["threshold"])

    @property
    def members(self) -> list[str]:
        """Member names, in the order of :meth:`score`'s ``members``."""
        return list(self._sessions.names)

    @property
    def smoothing(self) -> int:
        """Rows in the trailing mean that makes the ensemble score (1: none); ``ensemble.json``'s, read-only,
        since the threshold was calibrated on scores smoothed so."""
        return self._smoothing

    @property
    def history(self) -> int:
        """Preceding rows a streaming caller passes before new rows so that they score as in one batch:
        the longest member window minus 1, plus ``smoothing - 1`` (0 for single-row members, no smoothing)."""
        return self._sessions.history + self._smoothing - 1

    def raw_scores(self, X: np.ndarray, lengths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Each member's raw anomaly score (before normalisation); arguments as in :meth:`score`."""
        raw = self._sessions.raw_scores(X, positions_of(len(X), lengths))
        return {name: raw[:, j] for j, name in enumerate(self.members)}

    def score(self, X: np.ndarray, lengths: Sequence[int] | None = None, explain: bool = False) -> dict[str, Any]:
        """Score raw sensor rows ``X`` (n, sensors), in time order.

        Args:
            X: Raw sensor values, float32, columns in :attr:`sensors` order.
            lengths: ``X`` is several independent series of these lengths, one after the other
                (default: one series). Each scores exactly as it would alone.
            explain: Also split each score over the sensors (``contributions``, ``top_sensors``).

        Returns:
            ``score``: ensemble score (n,), float64; ``is_anomaly``: ``score > threshold``, or a
            ``reason`` (n,); ``members``: member name to its *normalised* score (n,), whose weighted
            mean is the row's combined score (for the first ``window - 1`` rows of a series a sequence
            member's score rests on padding and is left out: see :func:`combine`), and ``score`` is
            that combined score's :func:`trailing_mean` over :attr:`smoothing` rows; ``reason``: (n,)
            ``out_of_range``, ``non_finite_score`` or ``""``; ``reason_sensors``: per row, the sensors
            behind its reason (empty without one). Every number is finite (see :func:`finite`).
            With ``explain``: ``contributions`` (n, sensors), each sensor's part of ``score`` (a row
            sums to its score, smoothed alike; 0 on a row whose combined score is not finite), and
            ``top_sensors``: per row, up to :data:`TOP_SENSORS` sensors with the largest positive
            contributions, most first, or the sensors behind its ``reason`` (:func:`attribute`).
        """
        positions = positions_of(len(X), lengths)
        X = np.asarray(X, dtype=np.float64)
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinite values")
        # readings beyond float32 (the members' input type) are out of range anyway: clip, don't overflow
        limit = float(np.finfo(np.float32).max)
        clipped = np.clip(X, -limit, limit)
        if explain:
            raw, terms = self._sessions.raw_scores_and_terms(clipped, positions)
        else:
            raw, terms = self._sessions.raw_scores(clipped, positions), None
        raw = raw.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            normalised = normalise(raw, self._center, self._scale)
            weights = row_weights(self._weights, len(X), self._windows, positions)
            score = combine(normalised, self._weights, self._windows, positions)
        non_finite = ~np.isfinite(np.where(weights > 0, normalised, 0.0)).all(axis=1) | ~np.isfinite(score)
        reason, sensors = self._reasons(X, non_finite)
        result = {"members": {name: finite(normalised[:, j]) for j, name in enumerate(self.members)},
                  "reason": reason, "reason_sensors": sensors}
        if explain:
            parts = attribute(normalised, weights, terms.astype(np.float64))
            parts[~np.isfinite(score)] = np.nan  # left out of the smoothed rows after it, as its score is
            parts = np.column_stack([trailing_mean(column, self._smoothing, lengths) for column in parts.T])
            result["contributions"] = np.where(np.isfinite(parts), parts, 0.0)
            result["top_sensors"] = self._top_sensors(result["contributions"], reason, sensors)
        score = finite(trailing_mean(score, self._smoothing, lengths))
        return {"score": score, "is_anomaly": (score > self.threshold) | (reason != NO_REASON), **result}

    def alarms(self, result: Mapping[str, Any], state: AlarmState | None = None) -> tuple[np.ndarray, AlarmState]:
        """The event state ``alarm`` of each row of a :meth:`score` result of one series, by
        :attr:`alarm_logic` (``ensemble.json``'s ``alarm``), continuing from ``state`` (None: nothing
        before); and the state after its last row (:mod:`raysys.ensemble.alarms`)."""
        return alarm_rows(result["is_anomaly"], result["score"], self.threshold, self.alarm_logic, state)

    def _top_sensors(self, contributions: np.ndarray, reason: np.ndarray,
                     reason_sensors: list[list[str]]) -> list[list[str]]:
        """Per row, the sensors behind its reason, else up to :data:`TOP_SENSORS` with the largest
        positive contributions, most first."""
        names = np.array(self.sensors)
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :TOP_SENSORS]
        return [list(reason_sensors[i]) if reason[i] != NO_REASON
                else names[[j for j in order[i] if contributions[i, j] > 0]].tolist() for i in range(len(order))]

    def _reasons(self, X: np.ndarray, non_finite: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
        """Per row: ``out_of_range`` (some sensor beyond its allowed range), else ``non_finite_score``,
        else ``""``; and the sensors behind it (out of range ones; for a non-finite score, those
        outside the training range, or every sensor when none is)."""
        names = np.array(self.sensors)
        outside = (X < self._low) | (X > self._high)
        reason = np.where(outside.any(axis=1), OUT_OF_RANGE, np.where(non_finite, NON_FINITE_SCORE, NO_REASON))
        sensors: list[list[str]] = [[] for _ in range(len(X))]
        for i in np.flatnonzero(reason != NO_REASON):
            if reason[i] == OUT_OF_RANGE:
                sensors[i] = names[outside[i]].tolist()
            else:
                beyond = (X[i] < self._train_min) | (X[i] > self._train_max)
                sensors[i] = names[beyond].tolist() if beyond.any() else names.tolist()
        return reason.astype(object), sensors

    def score_many(self, parts: Sequence[np.ndarray], explain: bool = False) -> list[dict[str, Any]]:
        """Score independent series (e.g. several requests) in one onnxruntime call per member file.

        Each result equals ``score(part, explain=explain)`` of that part alone.
        """
        result = self.score(np.concatenate(parts), [len(p) for p in parts], explain)
        bounds = np.cumsum([0, *(len(p) for p in parts)])
        return [rows_of(result, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def features(self, frame: pd.DataFrame) -> np.ndarray:
        """The sensor columns of ``frame`` as float64 (so a reading beyond float32 is flagged out of range,
        not turned into infinity), in schema order; other columns are ignored."""
        missing = [s for s in self.sensors if s not in frame.columns]
        if missing:
            raise ValueError(f"input is missing sensor column(s) {missing}; the model needs {self.sensors}")
        return frame[self.sensors].to_numpy(dtype=np.float64)

    def score_frame(self, frame: pd.DataFrame, explain: bool = False) -> pd.DataFrame:
        """Score a DataFrame with sensor columns (one series, in time order): ``score``, ``is_anomaly``,
        ``alarm`` (:meth:`alarms`), ``reason``, ``reason_sensors`` (comma-separated) and ``score_<member>``
        columns; with ``explain``, also ``contribution_<sensor>`` columns and ``top_sensors``
        (comma-separated, most first)."""
        result = self.score(self.features(frame), explain=explain)
        out = pd.DataFrame({"score": result["score"], "is_anomaly": result["is_anomaly"],
                            "alarm": self.alarms(result)[0],
                            "reason": result["reason"].astype(str),
                            "reason_sensors": [",".join(s) for s in result["reason_sensors"]]}, index=frame.index)
        for name, values in result["members"].items():
            out[MEMBER_COLUMN.format(name=name)] = values
        if explain:
            for j, sensor in enumerate(self.sensors):
                out[CONTRIBUTION_COLUMN.format(sensor=sensor)] = result["contributions"][:, j]
            out["top_sensors"] = [",".join(s) for s in result["top_sensors"]]
        return out


def rows_of(result: Mapping[str, Any], rows: slice) -> dict[str, Any]:
    """The part of a :meth:`EnsembleRuntime.score` result that belongs to ``rows``."""
    return {key: ({name: v[rows] for name, v in value.items()} if key == "members" else value[rows])
            for key, value in result.items()}


_MEMBER_KEYS = ("name", "file", "output", "window", "center", "scale", "weight")


def input_range(X_normal: np.ndarray, sensors: Sequence[str],
                factor: float | Mapping[str, float] = DEFAULT_RANGE_FACTOR) -> dict[str, list[float]]:
    """``ensemble.json``'s ``input_range``: each sensor's min and max on normal training rows and
    its ``factor`` (one number, or per sensor name; sensors not named get the default)."""
    factors = ([float(factor.get(s, DEFAULT_RANGE_FACTOR)) for s in sensors] if isinstance(factor, Mapping)
               else [float(factor)] * len(sensors))
    unknown = sorted(set(factor) - set(sensors)) if isinstance(factor, Mapping) else []
    if unknown:
        raise ValueError(f"range factor given for unknown sensor(s) {unknown}; sensors are {list(sensors)}")
    if any(not (f >= 0 and np.isfinite(f)) for f in factors):
        raise ValueError(f"range factors must be finite and >= 0, got {factors}")
    return {"min": np.min(X_normal, axis=0).astype(float).tolist(),
            "max": np.max(X_normal, axis=0).astype(float).tolist(), "factor": factors}


def allowed_range(spec: Mapping[str, Any], with_factor: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per sensor from ``input_range`` (``with_factor=False``: the training range itself);
    unbounded when the spec has none (an ensemble built before raysys 0.2)."""
    n = len(spec["sensors"])
    rng = spec.get("input_range")
    if rng is None:
        return np.full(n, -np.inf), np.full(n, np.inf)
    low, high, factor = (np.asarray(rng[k], dtype=np.float64) for k in ("min", "max", "factor"))
    if not with_factor:
        return low, high
    span = np.maximum(high - low, np.finfo(np.float32).eps * np.maximum(np.abs(high), 1.0))
    return low - factor * span, high + factor * span


def validate_spec(spec: Mapping[str, Any], source: str | os.PathLike = ENSEMBLE_SPEC) -> None:
    """Raise ``ValueError`` naming what a parsed ``ensemble.json`` (read from ``source``) lacks."""
    version = spec.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(f"{source}: format_version {version!r} is not supported by this raysys; it reads "
                         f"versions {list(SUPPORTED_FORMAT_VERSIONS)} (a newer raysys wrote it? upgrade raysys "
                         "to load it, or rebuild the ensemble)")
    for key in ("sensors", "members", "threshold", "combination"):
        if key not in spec:
            raise ValueError(f"{source}: missing key {key!r}")
    if spec["combination"] != "weighted_mean":
        raise ValueError(f"{source}: combination must be 'weighted_mean', got {spec['combination']!r}")
    if not spec["members"]:
        raise ValueError(f"{source}: no members")
    for member in spec["members"]:
        missing = [k for k in _MEMBER_KEYS if k not in member]
        if missing:
            raise ValueError(f"{source}: member {member.get('name')!r} lacks {missing}")
        if not member["scale"] > 0:
            raise ValueError(f"{source}: member {member['name']!r} scale must be > 0, got {member['scale']!r}")
    rng = spec.get("input_range")
    if rng is not None:
        n = len(spec["sensors"])
        if not isinstance(rng, Mapping) or any(len(rng.get(k) or ()) != n for k in ("min", "max", "factor")):
            raise ValueError(f"{source}: input_range must hold min, max and factor for each of the "
                             f"{n} sensors, got {rng!r}")
    AlarmLogic.from_spec(spec.get("alarm"), str(source))
    smoothing = spec.get("smoothing", 1)
    if isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Integral) or smoothing < 1:
        raise ValueError(f"{source}: smoothing must be an int >= 1 (rows in the trailing mean of the ensemble "
                         f"score; 1: none), got {smoothing!r}")
    if smoothing > 1 and version == 1:
        raise ValueError(f"{source}: smoothing {smoothing} needs format_version 2 (a version 1 reader would "
                         "ignore it), got format_version 1")


def resolve_ensemble_dir(path: str | os.PathLike) -> Path:
    """The ensemble directory inside ``path``: itself, or ``artifacts/ensemble`` of an MLflow model dir."""
    root = Path(path)
    for candidate in (root, root / "artifacts" / ENSEMBLE_MODEL_ARTIFACT):
        if (candidate / ENSEMBLE_SPEC).exists():
            return candidate
    raise FileNotFoundError(f"{path}: neither an ensemble directory ({ENSEMBLE_SPEC}) nor an MLflow model "
                            f"logged by raysys (artifacts/{ENSEMBLE_MODEL_ARTIFACT}/{ENSEMBLE_SPEC})")


def load_runtime(model: str | os.PathLike, tracking_uri: str | None = None,
                 intra_op_threads: int | None = 1) -> EnsembleRuntime:
    """Load an ensemble from a local directory or an MLflow URI (``models:/NAME@champion``, ``runs:/ID/model``).

    URIs are downloaded with ``mlflow.artifacts.download_artifacts`` from ``tracking_uri``
    (default: ``$MLFLOW_TRACKING_URI`` or the local store, as in ``raysys.tracking``), which also
    becomes MLflow's registry URI (``models:/`` resolves names there).
    """
    path = Path(model)
    if not path.exists():
        if "://" not in str(model) and not str(model).startswith(("models:/", "runs:/")):
            raise FileNotFoundError(f"{model}: no such directory, and not an MLflow model URI")
        import mlflow  # only for URIs: a slim Serve replica given a directory never imports it

        from raysys.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(uri)
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(model), tracking_uri=uri))
    return EnsembleRuntime.load(resolve_ensemble_dir(path), intra_op_threads)
