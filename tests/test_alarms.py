"""Alarm events from flagged rows: the logic worked by hand, state carried across calls, the token."""

from __future__ import annotations

import numpy as np
import pytest

from raysys.ensemble.alarms import AlarmLogic, AlarmState, alarm_events, alarm_rows

FLAGS = np.array([0, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0], dtype=bool)


def run(logic, flags=FLAGS, scores=None, threshold=1.0):
    scores = np.where(flags, 5.0, 0.0) if scores is None else np.asarray(scores, dtype=float)
    return alarm_rows(flags, scores, threshold, logic)[0].astype(int).tolist()


def test_the_default_logic_is_the_row_decision():
    assert run(AlarmLogic()) == FLAGS.astype(int).tolist()


def test_k_of_n_starts_an_event_and_off_delay_holds_and_merges_it():
    # 2 of 3: the flags at rows 1 and 3 start it at row 3; held 2 quiet rows; the flag at row 9 alone starts nothing
    assert run(AlarmLogic(k=2, n=3, off_delay=2)) == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    # a minimum run of 2 rows (k = n = 2) starts at the second of rows 3-4
    assert run(AlarmLogic(k=2, n=2)) == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    # off-delay 4 bridges the gap from row 4 to the flag at row 9: one event, held 4 rows after it
    assert run(AlarmLogic(off_delay=4)) == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]


def test_hysteresis_keeps_an_event_on_above_the_clear_level():
    flags = np.array([0, 1, 0, 0, 0, 0], dtype=bool)
    scores = [0.0, 5.0, 0.9, 0.7, 0.2, 0.9]  # threshold 1; clear level 0.5
    assert run(AlarmLogic(clear_level=0.5), flags, scores) == [0, 1, 1, 1, 0, 0]
    assert run(AlarmLogic(), flags, scores) == [0, 1, 0, 0, 0, 0]


def test_flags_of_an_ended_event_do_not_start_the_next():
    flags = np.array([1, 0, 0, 0, 0], dtype=bool)  # one flag in the last 5 rows starts an event (k=1, n=5)
    assert run(AlarmLogic(k=1, n=5), flags) == [1, 0, 0, 0, 0]


@pytest.mark.parametrize("logic", [AlarmLogic(), AlarmLogic(k=2, n=3, off_delay=2), AlarmLogic(k=3, n=5, off_delay=6),
                                   AlarmLogic(k=1, n=4, clear_level=0.3, off_delay=1)])
def test_a_stream_cut_anywhere_gives_the_alarms_of_one_pass(logic):
    rng = np.random.default_rng(0)
    flags = rng.random(120) < 0.3
    scores = np.where(flags, 2.0, rng.random(120))
    whole, _ = alarm_rows(flags, scores, 1.0, logic)
    for cuts in ([60], [1, 2, 3, 50, 51, 119], list(range(1, 120))):  # the last: one row per call
        state, parts = None, []
        for a, b in zip([0, *cuts], [*cuts, 120]):
            token = None if state is None else state.to_token(logic)
            part, state = alarm_rows(flags[a:b], scores[a:b], 1.0, logic,
                                     None if token is None else AlarmState.from_token(token, logic))
            parts.append(part)
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_a_token_for_other_settings_restarts_and_a_foreign_one_is_refused():
    _, state = alarm_rows(FLAGS, np.where(FLAGS, 5.0, 0.0), 1.0, AlarmLogic(k=2, n=3))
    token = state.to_token(AlarmLogic(k=2, n=3))
    assert AlarmState.from_token(token, AlarmLogic(k=2, n=3)) == state
    assert AlarmState.from_token(token, AlarmLogic(k=2, n=4)) is None
    for bad in ("not a token", "eyJ2IjogMn0=", ""):
        with pytest.raises(ValueError, match="alarm_state is not a token this model returned"):
            AlarmState.from_token(bad, AlarmLogic())


@pytest.mark.parametrize(("spec", "message"), [
    ({"k": 0}, "alarm k must be an int >= 1, got 0"),
    ({"k": 3, "n": 2}, "alarm n must be >= k, got k=3, n=2"),
    ({"off_delay": -1}, "alarm off_delay must be an int >= 0, got -1"),
    ({"clear_level": float("nan")}, "clear_level must be a finite number or null"),
    ({"window": 3}, r"unknown alarm key\(s\) \['window'\]"),
    ([1, 2], "alarm must be an object"),
])
def test_bad_alarm_settings_are_refused_naming_the_file(spec, message):
    with pytest.raises(ValueError, match=rf"x/ensemble.json: .*{message}"):
        AlarmLogic.from_spec(spec, "x/ensemble.json")


def test_parse_reads_the_command_line_form():
    assert AlarmLogic.parse("k=3,n=5,off_delay=10,clear_level=2.5") == AlarmLogic(3, 5, 2.5, 10)
    assert AlarmLogic.parse("") == AlarmLogic()
    with pytest.raises(ValueError, match="alarm setting 'm=3'"):
        AlarmLogic.parse("m=3")
    with pytest.raises(ValueError, match="'x' is not a number"):
        AlarmLogic.parse("k=x")


def test_events_have_start_end_and_peak():
    alarm = np.array([0, 1, 1, 1, 0, 1], dtype=bool)
    scores = np.array([0.0, 2.0, 7.0, 3.0, 0.0, 4.0])
    stamps = [f"t{i}" for i in range(6)]
    top = [[], ["a"], ["b", "a"], ["a"], [], ["c"]]
    assert alarm_events(alarm, scores, stamps, top) == [
        {"start": "t1", "end": "t3", "rows": 3, "peak_score": 7.0, "peak": "t2", "top_sensors": ["b", "a"]},
        {"start": "t5", "end": "t5", "rows": 1, "peak_score": 4.0, "peak": "t5", "top_sensors": ["c"]}]
    assert alarm_events(alarm, scores)[0] == {"start": 1, "end": 3, "rows": 3, "peak_score": 7.0, "peak": 2}
