"""Where the evaluation's misses and false accepts are: per voice and by what was playing."""

from __future__ import annotations

import pytest

from cloud.train import metrics

SPANS = [(10.0, 11.0), (20.0, 21.0), (30.0, 31.0), (40.0, 41.0)]
VOICES = ["pico:en-GB", "mbrola:mb-us3", "pico:en-GB", "mbrola:mb-us3"]


def test_by_voice_counts_phrases_and_hits_per_speaker():
    # hits on 0 and 1 (twice: the second is a false accept), a miss on 2 and 3, one false accept at 50 s
    got = metrics.by_voice([10.5, 21.2, 21.3, 50.0], SPANS, VOICES)
    assert got == {"mbrola:mb-us3": (2, 1), "pico:en-GB": (2, 1)}
    table = metrics.voice_table(got)
    assert table["pico:en-GB"] == {"keywords": 2, "hits": 1, "miss_rate": 0.5}


def test_by_voice_needs_one_voice_per_phrase():
    with pytest.raises(ValueError, match="3 voices for 4"):
        metrics.by_voice([], SPANS, VOICES[:3])


def test_false_accepts_are_sorted_by_what_was_playing():
    def what_at(t: float) -> str:
        return "speech" if t < 60 else "background"

    got = metrics.false_accept_sources([10.5, 10.9, 55.0, 70.0, 71.0], SPANS, what_at)
    # 10.5 hits phrase 0; 10.9 is a second detection on it (a false accept during the phrase)
    assert got == {"background": 2, "speech": 2}
    assert sum(got.values()) == metrics.score([10.5, 10.9, 55.0, 70.0, 71.0], SPANS, 1.0).false_accepts


def test_breakdowns_sum_over_scenes():
    a = {"v1": (2, 1), "v2": (1, 1)}
    b = {"v1": (3, 3)}
    assert metrics.merge_breakdowns([a, b]) == {"v1": (5, 4), "v2": (1, 1)}
    assert metrics.merge_breakdowns([{"speech": 2}, {"speech": 1, "confusable": 4}]) == {"confusable": 4, "speech": 3}
