"""The shipped cloud models: the verifier accepts true wake words and rejects near-misses; the
command recogniser names the command after the wake word."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensors.wavfile import read_audio

pytest.importorskip("ai_edge_litert")

DATA = Path(__file__).parent / "data" / "kws"
LABELS = json.loads((DATA / "labels.json").read_text())


@pytest.fixture(scope="module")
def verifier():
    from cloud.verifier import Verifier

    return Verifier()


@pytest.fixture(scope="module")
def recogniser():
    from cloud.commands import CommandRecognizer

    return CommandRecognizer()


def test_verifier_is_bigger_and_wider_than_the_tiny_model(verifier):
    from gate.kws.stage import default_model_path, read_card

    tiny = read_card(default_model_path("logmel"))
    assert verifier.card["params"] >= 10 * tiny["params"]
    assert verifier.frames >= 150  # >= 1.5 s of context


@pytest.mark.parametrize("name", sorted(n for n, lab in LABELS.items() if lab["wake"]))
def test_verifier_accepts_wake_words(verifier, name):
    x = read_audio(DATA / name)
    ok, p = verifier.verify(x, LABELS[name]["wake_end_s"] + 0.25)
    assert ok, (name, p)


@pytest.mark.parametrize("name", sorted(n for n, lab in LABELS.items() if not lab["wake"]))
def test_verifier_rejects_negatives(verifier, name):
    x = read_audio(DATA / name)
    for t in (1.2, 1.6, 2.0, 2.4):
        ok, p = verifier.verify(x, t)
        assert not ok, (name, t, p)


@pytest.mark.parametrize("name", sorted(n for n, lab in LABELS.items() if lab["wake"] and lab["command"]))
def test_recognises_the_command_after_the_wake_word(recogniser, name):
    lab = LABELS[name]
    res = recogniser.recognise(read_audio(DATA / name), lab["wake_end_s"])
    assert res.name == lab["command"], (name, res)


def test_command_classes_follow_the_vocabulary(recogniser):
    from gate.vocabulary import COMMANDS

    assert recogniser.classes[:len(COMMANDS)] == [c.name for c in COMMANDS]
    assert recogniser.classes[-2:] == ["_unknown", "_silence"]
