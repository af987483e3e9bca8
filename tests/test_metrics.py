"""Detection metrics on hand-made detections and labels."""

from dataclasses import dataclass

import pytest

from gate_core.metrics import (
    DetectorParams,
    Window,
    det_curve,
    hold,
    match,
    non_wake_seconds,
    score,
    trace_detections,
    wake_windows,
)


@dataclass
class L:
    start_s: float
    end_s: float
    label: str


LABELS = [L(10.0, 10.6, "wake"), L(10.0, 11.5, "wake_command"), L(10.8, 11.5, "command"),
          L(30.0, 30.7, "wake"), L(50.0, 51.0, "confusable"), L(70.0, 71.2, "wake_command")]


def test_wake_windows_take_wake_spans_and_whole_wake_commands_without_one():
    ws = wake_windows(LABELS)
    assert [(w.start_s, w.end_s) for w in ws] == [(10.0, 10.6), (30.0, 30.7), (70.0, 71.2)]


def test_match_hits_once_counts_duplicates_and_false_accepts():
    ws = wake_windows(LABELS, early_s=0.25, late_s=1.0)
    m = match([10.7, 11.2, 30.65, 50.8, 69.0, 72.2], ws)
    assert m.hits == ((0, 10.7), (1, 30.65), (2, 72.2))  # 72.2 = 71.2 + 1.0: the window's edge counts
    assert m.duplicates == (11.2,)
    assert m.false_accepts == (50.8, 69.0)


def test_non_wake_seconds_merges_overlapping_windows_and_clips_to_the_audio():
    ws = [Window(1.0, 2.0, 0.5, 1.0), Window(2.5, 3.0, 0.5, 1.0), Window(99.0, 99.5, 0.5, 1.0)]
    # [0.5, 3.0] U [2.0, 4.0] = 3.5 s; [98.5, 100.5] clipped to 100 s = 1.5 s
    assert non_wake_seconds(ws, 100.0) == pytest.approx(100.0 - 3.5 - 1.5)


def test_score_gives_rates_per_hour_of_non_wake_audio_and_latency_from_the_word_end():
    streams = {"a": (wake_windows(LABELS), 3600.0), "b": (wake_windows([L(5.0, 5.5, "wake")]), 3600.0)}
    m = score({"a": [10.9, 30.9, 200.0], "b": [900.0, 1800.0], "other": [1.0]}, streams)
    assert (m["keywords"], m["true_accepts"], m["misses"], m["false_accepts"]) == (4, 2, 2, 3)
    assert m["miss_rate"] == pytest.approx(0.5)
    covered = (0.6 + 1.25) + (0.7 + 1.25) + (1.2 + 1.25) + (0.5 + 1.25)
    assert m["non_wake_hours"] == pytest.approx((7200.0 - covered) / 3600.0)
    assert m["fa_per_hour"] == pytest.approx(3 / m["non_wake_hours"])
    assert m["latency_s"]["median"] == pytest.approx(((10.9 - 10.6) + (30.9 - 30.7)) / 2)


def test_score_without_keywords_or_audio_says_none_rather_than_zero():
    m = score({}, {"a": ([], 0.0)})
    assert m["miss_rate"] is None and m["fa_per_hour"] is None and m["latency_s"]["mean"] is None


def test_hold_suppresses_detections_inside_a_segment_being_collected():
    # 4.0 ends the first segment exactly, so it opens the next one; 4.1 falls inside that one.
    assert hold([1.0, 2.0, 4.1, 4.0, 9.0], 3.0) == [1.0, 4.0, 9.0]


def test_trace_sweep_matches_the_detector_and_a_det_curve_is_monotone():
    params = DetectorParams(smoothing_s=0.0, min_consecutive=1, refractory_s=0.5, period_s=0.1)
    # One run from 9.9 s: a 0.9 peak at the first wake word, a 0.6 bump where nothing was said.
    p = [0.0] * 7 + [0.9, 0.9] + [0.0] * 50 + [0.6] + [0.0] * 10
    runs = [{"path": "a", "t0_s": 9.9, "p": p}]
    assert trace_detections(runs, params, 0.5) == {"a": [pytest.approx(10.6), pytest.approx(15.8)]}
    assert trace_detections(runs, params, 0.7) == {"a": [pytest.approx(10.6)]}
    streams = {"a": (wake_windows(LABELS), 3600.0)}
    curve = det_curve(runs, params, streams, thresholds=[0.3, 0.5, 0.7, 0.95])
    fas = [r["fa_per_hour"] for r in curve]
    misses = [r["miss_rate"] for r in curve]
    assert fas == sorted(fas, reverse=True) and misses == sorted(misses)
    assert curve[-1]["true_accepts"] == 0 and curve[0]["false_accepts"] == 1


def test_span_scores_follow_the_same_rule_as_labelled_streams():
    from gate_core.metrics import combine, span_score

    spans = [(10.0, 11.0), (20.0, 21.0)]
    times = [9.8, 10.5, 11.9, 30.0, 21.0 + 1.01]  # early hit, duplicate, duplicate, false accept, just too late
    sc = span_score(times, spans, 60.0 / 3600)
    labels = [L(a, b, "wake") for a, b in spans]
    d = score({"x": times}, {"x": (wake_windows(labels), 60.0)})
    assert (sc.hits, sc.false_accepts, sc.duplicates) == (d["true_accepts"], d["false_accepts"], d["duplicates"])
    assert (sc.hits, sc.false_accepts, sc.duplicates) == (1, 2, 2)
    # false accepts per hour are over the audio outside the windows: 60 s minus 2 x 2.25 s
    assert sc.non_wake_hours == pytest.approx((60 - 4.5) / 3600) == d["non_wake_hours"]
    assert sc.fa_per_hour == pytest.approx(d["fa_per_hour"])
    both = combine([sc, sc])
    assert both.fa_per_hour == pytest.approx(sc.fa_per_hour) and both.keywords == 4


def test_assign_keeps_the_callers_order():
    from gate_core.metrics import DUPLICATE, FALSE_ACCEPT, assign, span_windows

    got = assign([10.6, 5.0, 10.2], span_windows([(10.0, 11.0)]))
    assert got.tolist() == [DUPLICATE, FALSE_ACCEPT, 0]  # the earlier detection takes the hit
