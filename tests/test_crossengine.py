"""The cross-engine evaluation set: flite renders, labelled scenes with SNRs, per-voice/per-SNR tables."""

from __future__ import annotations

import numpy as np
import pytest

from cloud import crossengine as ce
from cloud.train.scenes import Scene
from gate_core import metrics
from gate_core.vocabulary import COMMANDS
from sensors.synth import augment

SR = ce.SR


def _small_plan(seed: int) -> list[ce.FliteUtterance]:
    return ce.plan("hey jarvis", seed=seed, n_pos=6, n_conf=3, n_speech=4, n_cmd=4)


@pytest.fixture(scope="module")
def renders() -> list:
    return ce.synthesise(_small_plan(7))


def test_the_plan_is_drawn_from_the_seed_over_the_five_voices():
    a, b, c = _small_plan(7), _small_plan(7), _small_plan(8)
    assert a == b and a != c
    big = ce.plan("hey jarvis", seed=1)
    assert {u.voice for u in big} == set(ce.VOICES) and "awb_time" not in {u.voice for u in big}
    assert {u.stretch for u in big} == set(ce.STRETCHES)
    assert {u.label for u in big if not u.label.startswith("command:")} == {"positive", "confusable", "speech"}
    assert all(u.text == "hey jarvis" for u in big if u.label == "positive")
    assert "hey jarvis" not in {u.text for u in big if u.label == "confusable"}
    names = {c.name for c in COMMANDS}
    assert {u.label.removeprefix("command:") for u in big if u.label.startswith("command:")} <= names


def test_flite_renders_are_deterministic_16k_float32_and_trimmed(renders):
    again = ce.synthesise(_small_plan(7))
    assert [r.voice_id for r in renders] == [r.voice_id for r in again]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(renders, again, strict=True))
    assert all(r.audio.dtype == np.float32 and r.voice_id.startswith("flite:") for r in renders)
    # "hey jarvis" lasts well under 2 s at any of the rates; trimmed renders start within 20 ms of speech.
    pos = [r for r in renders if r.kind == "positive"]
    assert pos and all(0.3 < r.audio.size / SR < 2.0 for r in pos)
    assert all(np.max(np.abs(r.audio[:480])) > 1e-3 for r in pos)


def test_the_8k_voice_is_resampled_to_16k():
    kal = ce.render(ce.FliteUtterance("positive", "hey jarvis", "kal", 1.0))
    kal16 = ce.render(ce.FliteUtterance("positive", "hey jarvis", "kal16", 1.0))
    assert abs(kal.size - kal16.size) < 0.15 * kal16.size


def test_a_rerun_reads_the_renders_back_from_the_cache(tmp_path, monkeypatch, renders):
    items = _small_plan(7)
    first = ce.cached_renders(tmp_path, items)
    assert len(list(tmp_path.glob("renders-crossengine-*.pkl"))) == 1

    def boom(*_a, **_k):
        raise AssertionError("re-synthesised a cached plan")

    monkeypatch.setattr(ce, "synthesise", boom)
    back = ce.cached_renders(tmp_path, items)
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(first, back, strict=True))
    with pytest.raises(AssertionError, match="re-synthesised"):
        ce.cached_renders(tmp_path, _small_plan(8))  # another plan is another key


def _known_background(kind, n, rng, talk):
    """White noise 10 dB louder in the second half: the SNR must be measured where each phrase is."""
    x = np.random.default_rng(5).standard_normal(n).astype(np.float32) * 10 ** (-50 / 20)
    x[n // 2:] *= 10 ** (10 / 20)
    return x


def test_a_one_minute_scene_has_its_labels_where_the_speech_is_and_snrs_as_measured(monkeypatch, renders):
    monkeypatch.setattr(ce, "background", _known_background)
    s = ce.build_scene("noise", minutes=1, rng=np.random.default_rng(3), renders=renders,
                       human=ce.human_speech()[:20], keywords_per_hour=240)
    assert s.audio.dtype == np.int16 and s.audio.size == 60 * SR and s.name == "flite_noise"
    n = len(s.keywords)
    assert n == 4 and len(s.keyword_voices) == len(s.keyword_commands) == len(s.keyword_snr_db) == n
    assert all(v.startswith("flite:") for v in s.keyword_voices)
    bg = _known_background("noise", s.audio.size, None, ())
    speech = s.audio / 32768.0 - bg
    positives = [(a, b) for k, a, b in s.events if k == "positive"]
    assert positives == s.keywords
    for (a, b), snr in zip(s.keywords, s.keyword_snr_db, strict=True):
        assert 0.0 <= snr <= 30.0
        i, j = int(round(a * SR)), int(round(b * SR))
        # The label spans the phrase: its render starts at the label (no silence before it).
        assert np.max(np.abs(speech[i:i + 320])) > 3 * np.std(speech[i - 1600:i - 160])
        measured = 20 * np.log10(ce._speech_rms(speech[i:j]) / augment.rms(bg[i:j]))
        assert measured == pytest.approx(snr, abs=0.2)
        # A command follows 0.2-0.6 s after each phrase; no other talk overlaps the phrase.
        assert any(k == "command" and 0.19 <= c - b <= 0.61 for k, c, _ in s.events)
        assert not any(k in ("speech", "human_speech", "confusable") and c < b and d > a for k, c, d in s.events)
    assert {"speech", "human_speech"} <= {k for k, _, _ in s.events}


@pytest.mark.parametrize("kind", ce.KINDS)
def test_every_scene_kind_builds_with_its_background(kind, renders):
    s = ce.build_scene(kind, minutes=1, rng=np.random.default_rng(1), renders=renders, human=ce.human_speech())
    assert len(s.keywords) == 1 and 0.0 <= s.keyword_snr_db[0] <= 30.0
    quiet = s.audio[: 4 * SR].astype(np.float64)  # the first 4 s hold only background (and maybe talk)
    assert np.sqrt(np.mean(quiet ** 2)) > 0.5  # never digital silence


def test_an_unknown_kind_or_too_short_a_scene_is_refused(renders):
    with pytest.raises(ValueError, match="unknown cross-engine scene kind 'disco'"):
        ce.build_scene("disco", minutes=1, rng=np.random.default_rng(0), renders=renders, human=())
    with pytest.raises(ce.CrossEngineError, match="minutes=0.1"):
        ce.build_scene("noise", minutes=0.1, rng=np.random.default_rng(0), renders=renders, human=())


def _scene(name: str, spans, voices, snrs) -> Scene:
    return Scene(name, np.zeros(600 * SR, np.int16), list(spans), keyword_voices=list(voices),
                 keyword_commands=["on"] * len(spans), keyword_snr_db=list(snrs))


def test_the_breakdown_accounts_for_every_wake_phrase():
    a = _scene("a", [(10, 11), (30, 31), (50, 51), (70, 71)], ["flite:slt", "flite:awb", "flite:slt", "flite:kal"],
               [0.0, 10.0, 19.99, 30.0])
    b = _scene("b", [(10, 11), (30, 31), (50, 51)], ["flite:rms", "flite:slt", "flite:kal16"], [9.99, 20.0, 25.0])
    times = [[10.5, 51.2, 100.0], [31.8, 32.0]]  # 100.0 and 32.0 are false accepts
    out = ce.breakdown([a, b], times)
    hits = sum(metrics.span_score(t, s.keywords, s.hours).hits for t, s in zip(times, [a, b], strict=True))
    for table in (out["by_voice"], out["by_snr"]):
        assert sum(r["keywords"] for r in table.values()) == 7
        assert sum(r["hits"] for r in table.values()) == hits == 3
    assert out["by_snr"] == {"0-10 dB": {"keywords": 2, "hits": 1, "miss_rate": 0.5},
                             "10-20 dB": {"keywords": 2, "hits": 1, "miss_rate": 0.5},
                             "20-30 dB": {"keywords": 3, "hits": 1, "miss_rate": round(1 - 1 / 3, 4)}}
    assert out["by_voice"]["flite:slt"] == {"keywords": 3, "hits": 3, "miss_rate": 0.0}


def test_the_breakdown_refuses_a_scene_without_snrs():
    s = _scene("a", [(10, 11)], ["flite:slt"], [])
    with pytest.raises(ValueError, match="scene a: 0 SNRs for 1 wake phrases"):
        ce.breakdown([s], [[]])
