from __future__ import annotations

from data_helpers import needs_espeak

from gate_core.vocabulary import COMMANDS, WAKE_PHRASE, command_phrases, match_command, normalise
from sensors.synth import confusables
from sensors.synth.tts import phonemize


def test_candidates_cover_the_usual_mishearings():
    texts = {t for t, _ in confusables.candidates("hey jarvis")}
    for expected in ("jarvis", "hey", "hey jar", "hey travis", "hey marvis", "hi jarvis", "hey jervis"):
        assert expected in texts
    assert "hey jarvis" not in texts


@needs_espeak
def test_generate_drops_sound_alikes_and_ranks_by_distance():
    got = confusables.generate("hey jarvis", 200)
    texts = [c.text for c in got]
    assert {"jarvis", "hey jar"} <= set(texts)
    phrase_sound = phonemize(["hey jarvis"])[0].replace(" ", "")
    sounds = phonemize(texts)
    # Nothing that sounds exactly like the phrase, or contains it, may be a negative.
    assert all(phrase_sound not in s.replace(" ", "") for s in sounds)
    assert all(0 < c.distance <= 0.7 for c in got)
    edits = [c for c in got if ":" in c.how]
    assert edits and all(c.distance <= 0.5 for c in edits)
    assert confusables.generate("hey jarvis", 200) == got  # deterministic


@needs_espeak
def test_generate_works_for_other_phrases():
    got = [c.text for c in confusables.generate("alexa", 15)]
    assert got and "alexa" not in got


def test_edit_distance():
    assert confusables.edit_distance("kitten", "sitting") == 3
    assert confusables.edit_distance("", "abc") == 3


def test_vocabulary_is_one_list():
    assert WAKE_PHRASE == "hey jarvis"
    phrases = command_phrases()
    assert "turn on the lights" in phrases and "on" in phrases and len(phrases) == len(set(phrases))
    assert match_command("Turn on the lights!").name == "lights_on"
    assert match_command("please turn on").name == "on"
    assert match_command("banana") is None
    assert all(normalise(p) == p for c in COMMANDS for p in c.phrases)

