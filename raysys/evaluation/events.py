"""Event metrics (what a plant sees: alarms and incidents, not rows) and VUS-PR.

Numpy only: no torch, no Ray, no scikit-learn. Definitions and conventions are in docs/metrics.md.

An *event* is a maximal run of consecutive 1 rows, written ``(start, stop)`` with ``stop``
exclusive (rows ``start .. stop - 1``). True events are runs of 1 in the row labels ``y_true``;
predicted events (alarms) are runs of 1 in the row flags ``y_pred``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Seconds in a day: false alarms are counted per day of normal operation.
_DAY_SECONDS = 86_400.0


def events_of(mask: Any) -> list[tuple[int, int]]:
    """The ``(start, stop)`` runs of True (or non-zero) in a 1-D ``mask``, ``stop`` exclusive."""
    mask = np.asarray(mask).astype(bool).ravel()
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _binary(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values).ravel()
    if array.dtype != bool:
        if array.size and not np.isin(array, (0, 1)).all():
            bad = array[~np.isin(array, (0, 1))][0]
            raise ValueError(f"{name} must hold only 0 and 1, got {bad!r}")
        array = array.astype(bool)
    return array


def _bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    runs = events_of(mask)
    return (np.array([r[0] for r in runs], dtype=np.int64), np.array([r[1] for r in runs], dtype=np.int64))


def _sample_interval_seconds(timestamps: Any, n: int) -> float:
    """The median positive step between consecutive timestamps, in seconds (NaN for < 2 rows)."""
    stamps = np.asarray(timestamps).ravel()
    if stamps.dtype.kind != "M":
        raise ValueError(f"timestamps must be numpy datetime64, got dtype {stamps.dtype}")
    if len(stamps) != n:
        raise ValueError(f"timestamps has {len(stamps)} rows, y_true has {n}")
    steps = np.diff(stamps) / np.timedelta64(1, "s")
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else float("nan")


def event_metrics(y_true: Any, y_pred: Any, timestamps: Any = None) -> dict[str, Any]:
    """Event recall, precision and F1, detection delay and false alarms per day of normal operation.

    Conventions (docs/metrics.md has the worked examples):

    - A predicted event *overlaps* a true event when they share at least one row; touching the true
      event's first or last row counts, ending the row before it does not (no tolerance window:
      :func:`vus_pr` is the measure that gives graded credit near the boundaries).
    - Event recall: the share of true events with at least one flagged row inside them (the
      existence reward of Tatbul et al., "Precision and Recall for Time Series", NeurIPS 2018, with
      alpha = 1; the event-wise recall of Hundman et al., KDD 2018).
    - Event precision: the share of predicted events that overlap a true event (Hundman et al.'s rule
      that an alarm overlapping no labelled range is one false positive, counted per alarm rather
      than per row). One alarm spanning two true events detects both and counts once as correct.
    - Event F1: the harmonic mean of the two; 0 when true events exist and none is detected, NaN when
      there are no true events.
    - Detection delay of a detected event: rows from its start to its first flagged row inside it;
      an alarm that starts before the event and runs into it has delay 0. ``mean_delay_seconds``
      uses ``timestamps[first flagged] - timestamps[start]``.
    - False alarms per day: predicted events overlapping no true event, divided by
      ``normal_days = (rows with y_true == 0) * sample interval / 86400``, the sample interval being
      the median positive step of ``timestamps`` (so gaps in the record do not count as operation).

    Args:
        y_true: row labels, 0 normal and 1 anomalous.
        y_pred: row flags, 1 where the detector alarms.
        timestamps: optional numpy datetime64 per row, for the delay in seconds and the per-day rate.

    Returns:
        ``event_recall``, ``event_precision``, ``event_f1``, ``n_true_events``, ``n_pred_events``,
        ``n_detected_events``, ``n_missed_events``, ``n_false_events``, ``mean_delay_rows``,
        ``mean_delay_seconds``, ``sample_interval_seconds``, ``normal_days``, ``false_alarms_per_day``.
        Undefined values (no true events, no alarms, no timestamps) are NaN.
    """
    truth, flags = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if len(truth) != len(flags):
        raise ValueError(f"y_true has {len(truth)} rows, y_pred has {len(flags)}")
    n = len(truth)
    nan = float("nan")
    true_start, true_stop = _bounds(truth)
    pred_start, pred_stop = _bounds(flags)
    flagged_before = np.concatenate([[0], np.cumsum(flags)])
    anomalous_before = np.concatenate([[0], np.cumsum(truth)])
    detected = flagged_before[true_stop] > flagged_before[true_start]
    correct = anomalous_before[pred_stop] > anomalous_before[pred_start]
    n_true, n_pred = len(true_start), len(pred_start)
    n_detected, n_correct = int(detected.sum()), int(correct.sum())
    recall = n_detected / n_true if n_true else nan
    precision = n_correct / n_pred if n_pred else nan
    if not n_true:
        f1 = nan
    elif not n_detected:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)

    flagged_rows = np.flatnonzero(flags)
    starts = true_start[detected]
    first = flagged_rows[np.searchsorted(flagged_rows, starts)] if len(starts) else starts
    delay_rows = float(np.mean(first - starts)) if len(starts) else nan
    interval = delay_seconds = normal_days = per_day = nan
    if timestamps is not None:
        interval = _sample_interval_seconds(timestamps, n)
        stamps = np.asarray(timestamps).ravel()
        if len(starts):
            delay_seconds = float(np.mean((stamps[first] - stamps[starts]) / np.timedelta64(1, "s")))
        normal_days = float((n - truth.sum()) * interval / _DAY_SECONDS)
        per_day = (n_pred - n_correct) / normal_days if normal_days > 0 else nan
    return {
        "event_recall": float(recall), "event_precision": float(precision), "event_f1": float(f1),
        "n_true_events": n_true, "n_pred_events": n_pred, "n_detected_events": n_detected,
        "n_missed_events": n_true - n_detected, "n_false_events": n_pred - n_correct,
        "mean_delay_rows": delay_rows, "mean_delay_seconds": delay_seconds,
        "sample_interval_seconds": interval, "normal_days": normal_days, "false_alarms_per_day": float(per_day),
    }


def _buffer_weights(n: int, start: np.ndarray, stop: np.ndarray, buffer: int) -> np.ndarray:
    """Label weight of the rows outside the true ranges for buffer length ``buffer``: rows at distance
    d = 1 .. buffer // 2 before a range's start or after its last row weigh sqrt(1 - d / buffer),
    overlapping buffers add up, capped at 1 (the sloped labels of Paparrizos et al. 2022)."""
    weights = np.zeros(n)
    half = buffer // 2
    if half:
        d = np.arange(1, half + 1)
        slope = np.sqrt(1 - d / buffer)
        rows = np.concatenate([(start[:, None] - d).ravel(), (stop[:, None] - 1 + d).ravel()])
        keep = (rows >= 0) & (rows < n)
        np.add.at(weights, rows[keep], np.tile(slope, 2 * len(start))[keep])
        np.minimum(weights, 1.0, out=weights)
    return weights


def _merged_segments(n: int, start: np.ndarray, stop: np.ndarray, buffer: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranges widened by buffer // 2 on each side, merged where the widened ranges overlap (ranges
    that only touch stay apart), clipped to the series; ``(first row, last row)`` inclusive."""
    half = buffer // 2
    lo, hi = start - half, stop - 1 + half
    apart = hi[:-1] < lo[1:]
    firsts = np.concatenate([[0], np.flatnonzero(apart) + 1])
    lasts = np.concatenate([np.flatnonzero(apart), [len(start) - 1]])
    return np.maximum(lo[firsts], 0), np.minimum(hi[lasts], n - 1)


class _RangePR:
    """What every buffer length shares: the ranges, the score order and the thresholds."""

    def __init__(self, y_true: Any, scores: Any, n_thresholds: int | None):
        self.truth = _binary(y_true, "y_true")
        self.scores = np.asarray(scores, dtype=float).ravel()
        self.n = len(self.truth)
        if len(self.scores) != self.n:
            raise ValueError(f"scores has {len(self.scores)} rows, y_true has {self.n}")
        if not np.isfinite(self.scores).all():
            raise ValueError("scores must be finite, got NaN or infinity")
        if n_thresholds is not None and n_thresholds < 1:
            raise ValueError(f"n_thresholds must be a positive integer or None, got {n_thresholds!r}")
        self.start, self.stop = _bounds(self.truth)
        self.order = np.argsort(-self.scores, kind="stable")
        descending = self.scores[self.order]
        if n_thresholds is None:
            self.thresholds = np.unique(descending)[::-1]
        else:
            self.thresholds = descending[np.linspace(0, self.n - 1, n_thresholds).astype(int)]
        ascending = descending[::-1]
        # rows flagged at each threshold (score >= threshold) are the first n_pred rows by score
        self.n_pred = self.n - np.searchsorted(ascending, self.thresholds, side="left")
        self.tp_range = np.concatenate([[0], np.cumsum(self.truth[self.order])])[self.n_pred]

    def average_precision(self, buffer: int) -> float:
        """Range-based PR AUC for buffer length ``buffer``: sum over thresholds of
        (TPR_k - TPR_{k-1}) * precision_k, TPR_0 = 0."""
        weights = _buffer_weights(self.n, self.start, self.stop, buffer)
        weights[self.truth] = 0.0
        buffer_tp = np.concatenate([[0.0], np.cumsum(weights[self.order])])[self.n_pred]
        first, last = _merged_segments(self.n, self.start, self.stop, buffer)
        # a segment is hit at a threshold when its highest score reaches it
        cuts = np.stack([first, last + 1], axis=1).ravel()
        segment_max = np.maximum.reduceat(np.append(self.scores, -np.inf), cuts)[::2]
        hit = np.searchsorted(np.sort(segment_max), self.thresholds, side="left")
        existence = (len(first) - hit) / len(first)
        positives = self.truth.sum()
        tp = self.tp_range + buffer_tp
        recall = np.minimum(tp / (positives + buffer_tp / 2), 1.0)
        tpr = recall * existence
        precision = tp / self.n_pred
        return float(np.dot(np.diff(tpr, prepend=0.0), precision))


def range_pr_auc(y_true: Any, scores: Any, buffer: int = 0, n_thresholds: int | None = 250) -> float:
    """Range-based PR AUC (Paparrizos et al., VLDB 2022) for one buffer length; ``buffer`` 0 is the
    range PR AUC with recall = point recall x share of ranges hit. NaN without anomalous rows.
    See :func:`vus_pr` for the definition and ``n_thresholds``."""
    if buffer < 0:
        raise ValueError(f"buffer must be >= 0, got {buffer!r}")
    curve = _RangePR(y_true, scores, n_thresholds)
    return curve.average_precision(int(buffer)) if len(curve.start) else float("nan")


def vus_pr(y_true: Any, scores: Any, max_buffer: int = 100, n_thresholds: int | None = 250) -> float:
    """VUS-PR: the range-based PR AUC averaged over buffer lengths 0 .. ``max_buffer``.

    Paparrizos, Boniol, Palpanas, Tsay, Elmore, Franklin, "Volume Under the Surface: A New Accuracy
    Evaluation Measure for Time-Series Anomaly Detection", VLDB 2022; matched to the reference code
    ``RangeAUC_volume_opt`` (TheDatumOrg/VUS ``vus/utils/metrics.py``, TSB-AD 1.5
    ``TSB_AD/evaluation/basic_metrics.py``, which TSB-AD reports as VUS-PR):

    - buffer length l: rows at distance d = 1 .. l // 2 outside a range weigh sqrt(1 - d / l),
      summed where buffers overlap and capped at 1; range rows weigh 1;
    - at a threshold (flag score >= threshold): TP = flagged range rows + the weights of flagged
      buffer rows B; recall = min(TP / (P + B / 2), 1) with P the anomalous rows; the ranges widened by
      l // 2 and merged where they overlap are the segments, existence = the share of segments with a
      flagged row; TPR = recall x existence; precision = TP / flagged rows;
    - AP_l = sum over thresholds of (TPR_k - TPR_{k-1}) x precision_k with TPR_0 = 0; VUS-PR is the
      mean of AP_l over l = 0 .. max_buffer.

    Args:
        y_true: row labels, 0 normal and 1 anomalous.
        scores: anomaly scores, higher is more anomalous; only their order matters.
        max_buffer: the largest buffer length L. TSB-AD's ``get_metrics`` defaults to 100 (its
            benchmark passes the period found from the autocorrelation); the default here is 100.
        n_thresholds: thresholds taken at evenly spaced ranks of the sorted scores, as the reference
            does (250); None uses every distinct score (the exact curve).

    Returns:
        VUS-PR in [0, 1]; NaN when ``y_true`` has no anomalous row.
    """
    if max_buffer < 0:
        raise ValueError(f"max_buffer must be >= 0, got {max_buffer!r}")
    curve = _RangePR(y_true, scores, n_thresholds)
    if not len(curve.start):
        return float("nan")
    return float(np.mean([curve.average_precision(b) for b in range(int(max_buffer) + 1)]))
