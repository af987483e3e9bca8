"""Where the evaluation's misses and false accepts are: per voice and by what was playing."""

from __future__ import annotations

import pytest

from gate_core import metrics

SPANS = [(10.0, 11.0), (20.0, 21.0), (30.0, 31.0), (40.0, 41.0)]
VOICES = ["pico:en-GB", "mbrola:mb-us3", "pico:en-GB", "mbrola:mb-us3"]


def test_by_voice_counts_phrases_and_hits_per_speaker():
    # hits on 0 and 1 (twice: the second is a duplicate), a miss on 2 and 3, one false accept at 50 s
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
    # 10.5 hits phrase 0; 10.9 is a second detection on it: a duplicate, not a false accept
    assert got == {"background": 2, "speech": 1}
    sc = metrics.span_score([10.5, 10.9, 55.0, 70.0, 71.0], SPANS, 1.0)
    assert sum(got.values()) == sc.false_accepts and sc.duplicates == 1


def test_breakdowns_sum_over_scenes():
    a = {"v1": (2, 1), "v2": (1, 1)}
    b = {"v1": (3, 3)}
    assert metrics.merge_breakdowns([a, b]) == {"v1": (5, 4), "v2": (1, 1)}
    assert metrics.merge_breakdowns([{"speech": 2}, {"speech": 1, "confusable": 4}]) == {"confusable": 4, "speech": 3}


def test_command_accuracy_reads_each_detected_phrase_from_its_fire_time():
    import numpy as np

    from cloud.commands import CommandResult
    from cloud.train import evaluate, scenes
    from gate.segmenter import SegmenterConfig

    sr = 16_000
    audio = np.arange(60 * sr, dtype=np.int32) // 16  # each sample says its time in ms
    quiet = scenes.Scene("quiet_home", audio, SPANS, keyword_commands=["lights_on", "stop", "go", "up"])
    office = scenes.Scene("office_babble", audio, [(0.5, 1.3)], keyword_commands=["down"])
    heard = {10.6: "lights_on", 21.2: "play", 30.5: None, 55.0: "stop", 1.5: "down"}
    reads = []

    class Recogniser:  # names the command by the fire time it is read from
        read_offsets_s = [0.0, 0.1]

        def recognise(self, samples, start_s):
            t = round(samples[0] / 1000 + start_s, 3)
            reads.append((t, samples.size / sr, start_s))
            name = heard[t]
            return CommandResult(name=name, label=name or "_unknown", confidence=0.9)

    # quiet home: hits on phrases 0, 1 and 2 (right, wrong, not recognised), a miss on 3, a false accept at 55 s
    got = evaluate.command_accuracy(Recogniser(), [evaluate.Matched([10.6, 21.2, 30.5, 55.0], quiet),
                                                   evaluate.Matched([1.5], office)])
    assert (got["detected_phrases"], got["correct"], got["unrecognised"], got["wrong"]) == (4, 2, 1, 1)
    assert got["scenes"] == {"quiet_home": {"detected_phrases": 3, "correct": 1},
                             "office_babble": {"detected_phrases": 1, "correct": 1}}
    assert got["accuracy"] == 0.5 and got["read_offsets_s"] == [0.0, 0.1]
    after = SegmenterConfig().command_window_s
    assert [r[0] for r in reads] == [10.6, 21.2, 30.5, 1.5]  # never the false accept
    # the segmenter's pre-roll and phrase before the fire, the command window after; less near the start
    before = SegmenterConfig().before_detection_s
    assert all(r[1:] == pytest.approx((before + after, before)) for r in reads[:3])
    assert reads[3][1:] == pytest.approx((1.5 + after, 1.5))


def test_one_match_per_detection_set_gives_what_the_metric_functions_give():
    import numpy as np

    from cloud.train import evaluate, scenes

    rng = np.random.default_rng(5)
    for _ in range(50):
        starts = np.sort(rng.uniform(0, 50, 6))
        spans = [(float(a), float(a + rng.uniform(0.3, 2.0))) for a in starts]  # some windows overlap
        events = [(str(k), float(a), float(a + 2)) for k, a in zip(rng.choice(["speech", "confusable"], 8),
                                                                    rng.uniform(0, 60, 8), strict=True)]
        s = scenes.Scene("quiet_home", np.zeros(60 * 16_000, np.int16), spans, sorted(events, key=lambda e: e[1]),
                         keyword_voices=[f"v{i % 3}" for i in range(len(spans))])
        times = [float(t) for t in rng.uniform(0, 60, int(rng.integers(0, 12)))]
        times += [b + 0.1 for _, b in spans[:2]] * 2  # hits and their duplicates
        m = evaluate.Matched(times, s)
        assert m.score() == metrics.span_score(times, s.keywords, s.hours)
        assert m.by_voice() == metrics.by_voice(times, s.keywords, s.keyword_voices)
        assert m.false_accept_sources() == metrics.false_accept_sources(times, s.keywords, s.what_at)
        assert [j for _, j in m.hits()] == [int(j) for j in metrics.span_assign(times, s.keywords) if j >= 0]
