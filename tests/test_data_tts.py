from __future__ import annotations

import numpy as np
import pytest
from data_helpers import needs_espeak

from sensors.synth import tts
from sensors.synth.errors import TTSError


@needs_espeak
def test_every_installed_engine_renders_trimmed_16k_speech():
    es = tts.discover(None)
    for engine in es.engines:
        v = es.voices[engine][0]
        slow = tts.render(tts.Utterance("hey jarvis", v, rate=140))
        fast = tts.render(tts.Utterance("hey jarvis", v, rate=220))
        assert slow.dtype == np.float32 and 0.3 * 16_000 < slow.size < 2.0 * 16_000
        assert fast.size < slow.size  # the rate reaches every engine (pico through its markup)
        a, b = tts.speech_bounds(slow)
        assert a <= 400 and slow.size - b <= 400  # leading and trailing silence trimmed


@needs_espeak
def test_discover_lists_english_voices_and_variants():
    es = tts.discover(None)
    assert "espeak" in es.engines
    names = {v.name for v in es.voices["espeak"]}
    assert {"en-us", "en-gb"} <= names and all(v.language.startswith("en") for v in es.all_voices())
    assert {"f3", "m3", "klatt"} <= set(es.variants)


def test_unknown_engine_and_empty_text():
    with pytest.raises(TTSError, match="unknown TTS engine 'flite'"):
        tts.discover(["flite"])
    with pytest.raises(TTSError, match=r"unknown TTS engine 'festival' \(known: espeak, mbrola, pico, rhvoice\)"):
        tts.render(tts.Utterance("hey jarvis", tts.Voice("festival", "kal")))
    with pytest.raises(TTSError, match="empty text"):
        tts.render(tts.Utterance("  ", tts.Voice("espeak", "en-us")))


def test_speech_bounds_are_sample_exact():
    x = np.zeros(1000, np.float32)
    x[123:456] = 0.5
    x[300] = 1.0
    assert tts.speech_bounds(x) == (123, 456)
