"""Event metrics and VUS-PR: hand-worked cases, an independent slow reference, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from raysys.evaluation.events import event_metrics, events_of, range_pr_auc, vus_pr


def _rows(n: int, *spans: tuple[int, int]) -> np.ndarray:
    """0/1 rows, 1 on each half-open span."""
    out = np.zeros(n, dtype=int)
    for start, stop in spans:
        out[start:stop] = 1
    return out


def _hourly(n: int, gap_after: int | None = None) -> np.ndarray:
    stamps = np.datetime64("2024-01-01T00:00") + np.arange(n) * np.timedelta64(1, "h")
    if gap_after is not None:  # the record stops for 5 hours after this row
        stamps[gap_after + 1:] += np.timedelta64(5, "h")
    return stamps


# ---- events_of


@pytest.mark.parametrize("mask, runs", [
    ([0, 1, 1, 0, 1], [(1, 3), (4, 5)]),
    ([1, 1, 1], [(0, 3)]),
    ([0, 0], []),
    ([], []),
    ([True, False, True], [(0, 1), (2, 3)]),
])
def test_events_of_gives_half_open_runs(mask, runs):
    assert events_of(np.array(mask)) == runs
    assert all(type(v) is int for run in events_of(np.array(mask)) for v in run)


# ---- event metrics, worked by hand


def test_event_metrics_on_a_hand_built_day():
    # 60 hourly rows; true events E1 [5,10), E2 [15,18), E3 [22,24), E4 [26,28): 12 anomalous rows.
    # Alarms: A1 [8,11) detects E1 three rows late and runs one row past it; A3 [21,28) starts one row
    # before E3 and spans E3 and E4 (delay 0 for both); A2 [30,32) and A4 [50,51) overlap nothing;
    # E2 is missed.
    y_true = _rows(60, (5, 10), (15, 18), (22, 24), (26, 28))
    y_pred = _rows(60, (8, 11), (21, 28), (30, 32), (50, 51))
    # a 5 h hole in the record after row 45: the sample interval is the median step, still 1 h
    m = event_metrics(y_true, y_pred, _hourly(60, gap_after=45))
    # recall: E1, E3, E4 detected of 4 -> 3/4; precision: A1, A3 correct of 4 alarms -> 2/4
    assert m["event_recall"] == pytest.approx(0.75)
    assert m["event_precision"] == pytest.approx(0.5)
    # F1 = 2 * 0.5 * 0.75 / (0.5 + 0.75) = 0.6
    assert m["event_f1"] == pytest.approx(0.6)
    assert (m["n_true_events"], m["n_pred_events"], m["n_detected_events"], m["n_missed_events"],
            m["n_false_events"]) == (4, 4, 3, 1, 2)
    # delays E1 3, E3 0, E4 0 rows -> mean 1 row = 3600 s
    assert m["mean_delay_rows"] == pytest.approx(1.0)
    assert m["mean_delay_seconds"] == pytest.approx(3600.0)
    # normal rows 60 - 12 = 48, x 1 h = 2 days; 2 false alarms / 2 days = 1 per day
    assert m["sample_interval_seconds"] == pytest.approx(3600.0)
    assert m["normal_days"] == pytest.approx(2.0)
    assert m["false_alarms_per_day"] == pytest.approx(1.0)


def test_an_alarm_on_the_last_row_detects_and_the_row_after_does_not():
    # true event [2,5); an alarm [4,7) shares row 4, its last row: detected, delay 2, correct
    touching = event_metrics(_rows(10, (2, 5)), _rows(10, (4, 7)))
    assert (touching["event_recall"], touching["event_precision"], touching["mean_delay_rows"]) == (1.0, 1.0, 2.0)
    # an alarm [5,7) starting just after it: event missed, alarm false, F1 0
    after = event_metrics(_rows(10, (2, 5)), _rows(10, (5, 7)))
    assert (after["event_recall"], after["event_precision"], after["event_f1"]) == (0.0, 0.0, 0.0)
    assert after["n_false_events"] == 1 and math.isnan(after["mean_delay_rows"])


def test_one_alarm_spanning_two_events_detects_both_and_counts_once():
    # events [2,4) and [6,8), one alarm [3,7): both detected (delays 1 and 0), one correct alarm
    m = event_metrics(_rows(10, (2, 4), (6, 8)), _rows(10, (3, 7)))
    assert (m["event_recall"], m["event_precision"], m["n_pred_events"]) == (1.0, 1.0, 1)
    assert m["mean_delay_rows"] == pytest.approx(0.5)


def test_no_true_events_leaves_recall_and_f1_undefined():
    # all 24 hourly rows normal (1 day), two alarms: precision 0, two false alarms per day
    m = event_metrics(np.zeros(24, int), _rows(24, (3, 5), (10, 11)), _hourly(24))
    assert math.isnan(m["event_recall"]) and math.isnan(m["event_f1"])
    assert m["event_precision"] == 0.0 and m["n_false_events"] == 2
    assert m["false_alarms_per_day"] == pytest.approx(2.0)


def test_no_alarms_scores_zero_recall_and_no_false_alarms():
    m = event_metrics(_rows(24, (3, 6)), np.zeros(24, int), _hourly(24))
    assert (m["event_recall"], m["event_f1"], m["false_alarms_per_day"]) == (0.0, 0.0, 0.0)
    assert math.isnan(m["event_precision"]) and math.isnan(m["mean_delay_seconds"])


def test_without_timestamps_the_time_based_values_are_nan():
    m = event_metrics(_rows(10, (2, 5)), _rows(10, (3, 4)))
    assert m["mean_delay_rows"] == 1.0
    assert all(math.isnan(m[k]) for k in ("mean_delay_seconds", "normal_days", "false_alarms_per_day"))


@pytest.mark.parametrize("y_true, y_pred, timestamps, message", [
    ([0, 1], [0, 1, 1], None, "3"),
    ([0, 2], [0, 1], None, "2"),
    ([0, 1], [0, 1], np.array([1, 2]), "datetime64"),
    ([0, 1], [0, 1], _hourly(3), "3 rows"),
])
def test_event_metrics_rejects_bad_input(y_true, y_pred, timestamps, message):
    with pytest.raises(ValueError, match=message):
        event_metrics(np.array(y_true), np.array(y_pred), timestamps)


# ---- VUS-PR: an independent, slow reference straight from the definition


def _reference_vus_pr(y: np.ndarray, s: np.ndarray, max_buffer: int, n_thresholds: int | None = 250) -> float:
    """Paparrizos et al. 2022 as computed by TSB-AD's RangeAUC_volume_opt, one row at a time."""
    n = len(y)
    ranges = []  # inclusive (first, last)
    i = 0
    while i < n:
        if y[i]:
            j = i
            while j + 1 < n and y[j + 1]:
                j += 1
            ranges.append((i, j))
            i = j + 1
        else:
            i += 1
    positives = sum(y)
    if n_thresholds is None:
        thresholds = sorted(set(s.tolist()), reverse=True)
    else:
        ranked = sorted(s.tolist(), reverse=True)
        thresholds = [ranked[int(k)] for k in np.linspace(0, n - 1, n_thresholds)]
    aps = []
    for length in range(max_buffer + 1):
        half = length // 2
        label = [float(v) for v in y]
        for first, last in ranges:
            for d in range(1, half + 1):
                if first - d >= 0:
                    label[first - d] += math.sqrt(1 - d / length)
                if last + d < n:
                    label[last + d] += math.sqrt(1 - d / length)
        label = [min(1.0, v) for v in label]
        segments: list[list[int]] = []
        for first, last in ranges:
            lo, hi = max(first - half, 0), min(last + half, n - 1)
            if segments and segments[-1][1] >= lo:
                segments[-1][1] = hi
            else:
                segments.append([lo, hi])
        ap, previous = 0.0, 0.0
        for threshold in thresholds:
            pred = [v >= threshold for v in s]
            tp = sum(label[r] for r in range(n) if pred[r])
            buffer_tp = sum(label[r] for r in range(n) if pred[r] and not y[r])
            recall = min(tp / (positives + buffer_tp / 2), 1.0)
            existence = sum(any(pred[lo:hi + 1]) for lo, hi in segments) / len(segments)
            tpr = recall * existence
            ap += (tpr - previous) * tp / sum(pred)
            previous = tpr
        aps.append(ap)
    return sum(aps) / len(aps)


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 160))
    y = np.zeros(n, dtype=int)
    for _ in range(int(rng.integers(1, 5))):
        start = int(rng.integers(0, n))
        y[start:start + int(rng.integers(1, 15))] = 1
    scores = rng.normal(size=n) + rng.random() * 2 * y
    return y, np.round(scores, 1) if seed % 2 else scores  # odd seeds: tied scores


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n_thresholds", [250, 17, None])
def test_vus_pr_matches_the_slow_reference(seed, n_thresholds):
    y, scores = _random_case(seed)
    max_buffer = 3 + seed
    assert vus_pr(y, scores, max_buffer, n_thresholds) == pytest.approx(
        _reference_vus_pr(y, scores, max_buffer, n_thresholds), abs=1e-12)


def test_buffers_near_the_series_ends_and_between_close_ranges():
    # ranges at the very start and end, and two 3 rows apart whose buffers merge from length 4 on
    y = _rows(30, (0, 2), (10, 12), (15, 17), (28, 30))
    scores = np.random.default_rng(5).normal(size=30)
    assert vus_pr(y, scores, 12) == pytest.approx(_reference_vus_pr(y, scores, 12), abs=1e-12)


def test_an_early_warning_earns_credit_only_with_a_buffer():
    # 10 rows, true range rows 4-5; row 3 (just before it) scores highest, then rows 4-5, the rest 0.
    y = _rows(10, (4, 6))
    scores = np.array([0, 0, 0, 1.0, 0.5, 0.5, 0, 0, 0, 0])
    # buffer 0 (and 1: 1 // 2 = 0 buffer rows): t=1 flags {3}: TPR 0; t=0.5 flags {3,4,5}: TPR 1,
    # precision 2/3; AP = 2/3
    assert range_pr_auc(y, scores, 0, None) == pytest.approx(2 / 3)
    assert vus_pr(y, scores, 1, None) == pytest.approx(2 / 3)
    # buffer 2: rows 3 and 6 weigh w = sqrt(1 - 1/2). t=1: TP = w, recall = w / (2 + w/2) = r1,
    # precision w; t=0.5: TP = 2 + w, recall min((2 + w) / (2 + w/2), 1) = 1, precision (2 + w) / 3.
    w = math.sqrt(0.5)
    r1 = w / (2 + w / 2)
    ap2 = r1 * w + (1 - r1) * (2 + w) / 3  # = 0.30044 * 0.70711 + 0.69956 * 0.90237 = 0.84371
    assert range_pr_auc(y, scores, 2, None) == pytest.approx(ap2)
    assert vus_pr(y, scores, 2, None) == pytest.approx((2 / 3 + 2 / 3 + ap2) / 3)  # 0.72568


def test_buffer_zero_is_the_range_pr_auc_with_existence():
    # ranges rows 2-3 and 7-8 of 10 (P = 4); score order 2, 3, 0, 7, 8, then the rest
    y = _rows(10, (2, 4), (7, 9))
    scores = np.array([0.7, 0.05, 0.9, 0.8, 0.04, 0.03, 0.02, 0.6, 0.5, 0.01])
    # TPR = recall x share of ranges hit: {2}: 1/4 * 1/2 = 1/8, precision 1; {2,3}: 1/4, 1;
    # {2,3,0}: 1/4, 2/3; {..,7}: 3/4 * 1 = 3/4, 3/4; {..,8}: 1, 4/5
    # AP = 1/8 + 1/8 + 0 + (1/2)(3/4) + (1/4)(4/5) = 0.825 (point-wise AP would be 0.8875)
    assert vus_pr(y, scores, 0, None) == pytest.approx(0.825)
    assert range_pr_auc(y, scores, 0, None) == pytest.approx(0.825)
    assert average_precision_score(y, scores) == pytest.approx(0.8875)


@pytest.mark.parametrize("seed", range(5))
def test_buffer_zero_on_one_range_is_the_point_wise_average_precision(seed):
    # with a single range, existence is 1 as soon as recall > 0, so the range AP is sklearn's AP
    rng = np.random.default_rng(seed)
    y = _rows(300, (100, 100 + int(rng.integers(1, 60))))
    scores = rng.normal(size=300) + y
    assert vus_pr(y, scores, 0, None) == pytest.approx(average_precision_score(y, scores))


@pytest.mark.parametrize("n_thresholds", [250, None])
def test_a_perfect_or_a_range_first_ranking_scores_one(n_thresholds):
    y = _rows(200, (20, 30), (90, 91), (150, 180))
    assert vus_pr(y, y.astype(float), 40, n_thresholds) == pytest.approx(1.0)
    # anomalous rows ranked above every normal one, in any order among themselves
    ranked = y * 10 + np.random.default_rng(1).random(200)
    assert vus_pr(y, ranked, 40, n_thresholds) == pytest.approx(1.0)


@pytest.mark.parametrize("transform", [np.exp, np.arctan, lambda s: 3 * s - 7])
def test_vus_pr_depends_only_on_the_order_of_scores(transform):
    y, scores = _random_case(0)
    assert vus_pr(y, transform(scores), 20) == pytest.approx(vus_pr(y, scores, 20), abs=1e-12)


def test_vus_pr_edge_cases():
    assert math.isnan(vus_pr(np.zeros(20, int), np.arange(20.0)))
    assert 0.0 <= vus_pr(np.ones(20, int), np.arange(20.0)) <= 1.0
    with pytest.raises(ValueError, match="finite"):
        vus_pr(_rows(5, (1, 2)), np.array([0, np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match="-1"):
        vus_pr(_rows(5, (1, 2)), np.arange(5.0), max_buffer=-1)
    with pytest.raises(ValueError, match="4 rows"):
        vus_pr(_rows(5, (1, 2)), np.arange(4.0))


def test_vus_pr_on_20000_rows_is_close_to_its_exact_curve():
    rng = np.random.default_rng(0)
    y = np.zeros(20_000, dtype=int)
    for start in rng.choice(19_800, 20, replace=False):
        y[start:start + int(rng.integers(5, 150))] = 1
    scores = rng.normal(size=20_000) + y
    value = vus_pr(y, scores, max_buffer=100)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(vus_pr(y, scores, max_buffer=100, n_thresholds=None), abs=0.02)
