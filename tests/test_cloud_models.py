"""The shipped cloud models: the verifier accepts true wake words and rejects near-misses; the
command recogniser names the command after the wake word."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    from cloud.verifier import DEFAULT_VERIFIER
    from gate.kws.interpreter import read_evaluation
    from gate.kws.stage import default_model_path

    tiny = read_evaluation(default_model_path("logmel"))
    assert read_evaluation(DEFAULT_VERIFIER)["params"] >= 10 * tiny["params"]
    assert verifier.frames >= 150  # >= 1.5 s of context


@pytest.mark.parametrize("late_s", [0.05, 0.25, 0.5])
@pytest.mark.parametrize("name", sorted(n for n, lab in LABELS.items() if lab["wake"]))
def test_verifier_accepts_wake_words(verifier, name, late_s):
    # The node fires some time after the phrase ends (smoothing, a run of hits): the verifier looks around.
    x = read_audio(DATA / name)
    ok, p = verifier.verify(x, LABELS[name]["wake_end_s"] + late_s)
    assert ok, (name, p)


def test_verifier_scores_the_best_run_of_windows_near_the_fire_time(verifier, monkeypatch):
    from cloud import verifier as v

    name = sorted(n for n, lab in LABELS.items() if lab["wake"])[0]
    x = read_audio(DATA / name)
    t = LABELS[name]["wake_end_s"] + 0.25
    searched = verifier.score(x, t)
    lo, hi = v.SEARCH_S
    monkeypatch.setattr(v, "SEARCH_S", (0.0, 0.0))  # one window only, ending at the fire time
    dense = np.array([verifier.score(x, t + d) for d in np.arange(lo, hi + 0.005, 0.01)])
    k, stride = v.SMOOTH_WINDOWS, v.SEARCH_STRIDE
    # The searched windows are every stride-th of these, from the first.
    runs = [np.convolve(dense[o::stride], np.full(k, 1.0 / k), mode="valid").max() for o in range(stride)]
    assert min(runs) - 0.02 <= searched <= max(runs) + 0.02, (searched, runs)
    assert dense.max() - dense.min() > 0.05  # the window's placement matters, so the search does too


def test_one_window_spike_is_not_a_wake_word(verifier, monkeypatch):
    """The near-miss "hey travis" spikes above threshold in a single window; a run of them is needed."""
    from cloud import verifier as v

    x = read_audio(DATA / "neg_travis.flac")
    monkeypatch.setattr(v, "SMOOTH_WINDOWS", 1)
    spiky = max(verifier.score(x, t) for t in (1.2, 1.6, 2.0, 2.4))
    monkeypatch.setattr(v, "SMOOTH_WINDOWS", 3)
    smooth = max(verifier.score(x, t) for t in (1.2, 1.6, 2.0, 2.4))
    assert smooth <= spiky + 1e-6 and smooth < verifier.threshold, (spiky, smooth)


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
    from gate_core.vocabulary import COMMANDS

    assert recogniser.classes[:len(COMMANDS)] == [c.name for c in COMMANDS]
    assert recogniser.classes[-2:] == ["_unknown", "_silence"]


@pytest.mark.parametrize("name", sorted(n for n, lab in LABELS.items() if lab["wake"] and lab["command"]))
def test_command_read_at_several_offsets_keeps_the_best_single_read(name):
    """Reading at (0, 0.1, 0.2) s after the start gives the best of the three single reads, each computed on
    its own from audio shifted by that offset (one feature pass serves all reads): the most confident read
    naming a command, else the most confident read."""
    from cloud.commands import CommandRecognizer

    x = read_audio(DATA / name)
    start = LABELS[name]["wake_end_s"]
    several = CommandRecognizer(read_offsets_s=(0.2, 0.0, 0.1)).recognise(x, start)
    one = CommandRecognizer(read_offsets_s=(0.0,))
    singles = [one.recognise(x, start + o) for o in (0.0, 0.1, 0.2)]
    pool = [i for i in range(3) if singles[i].name is not None] or range(3)
    best = max(pool, key=lambda i: singles[i].confidence)
    assert several.label == singles[best].label, (several, singles)
    assert several.confidence == pytest.approx(singles[best].confidence, abs=0.02)
    assert several.read_offset_s == pytest.approx((0.0, 0.1, 0.2)[best])
    assert several.name == LABELS[name]["command"]


def test_a_read_naming_a_command_wins_over_confident_unknown_reads():
    """A read shifted past the start of a short command hears its tail and may call it unknown, confidently;
    a read that names a command at min_confidence or more wins over it, a weaker one does not."""
    from cloud.commands import CommandRecognizer

    r = CommandRecognizer(read_offsets_s=(0.0, 0.1, 0.2))
    stop, unknown = r.classes.index("stop"), r.classes.index("_unknown")

    def scripted(*rows):
        calls = iter(rows)

        def model(_x):
            p = np.full(len(r.classes), 0.001, np.float32)
            i, conf = next(calls)
            p[i] = conf
            return p[None]
        return model

    x = np.zeros(3 * 16000, np.int16)
    r.model = scripted((stop, 0.9), (unknown, 0.99), (unknown, 0.98))
    got = r.recognise(x, 0.5)
    assert (got.name, got.label, got.read_offset_s) == ("stop", "stop", 0.0) and got.confidence == pytest.approx(0.9)
    r.model = scripted((stop, 0.4), (unknown, 0.99), (unknown, 0.98))
    got = r.recognise(x, 0.5)
    assert (got.name, got.label, got.read_offset_s) == (None, "_unknown", 0.1)
    r.model = scripted((stop, 0.4), (unknown, 0.3), (stop, 0.45))
    got = r.recognise(x, 0.5)  # no read is confident: the strongest, a weak command, is reported as none
    assert (got.name, got.label, got.read_offset_s) == (None, "stop", 0.2)


def test_command_reads_outside_the_segment_are_silence(recogniser):
    """A start before the segment's beginning or past its end reads zeros there instead of failing."""
    from cloud.commands import CommandRecognizer

    quiet = np.zeros(16000, np.int16)
    assert CommandRecognizer(read_offsets_s=(-0.5, 0.0)).recognise(quiet, 0.1).label == "_silence"
    assert recogniser.recognise(quiet, 5.0).label == "_silence"
    with pytest.raises(ValueError, match="read_offsets_s"):
        CommandRecognizer(read_offsets_s=())


def test_the_service_config_sets_the_command_read_offsets():
    from cloud.service.models import load_models
    from gate_core.cloud_config import COMMAND_READ_OFFSETS_S, CloudConfig

    assert load_models(CloudConfig()).commands._model.shifts == [round(o * 100) for o in COMMAND_READ_OFFSETS_S]
    assert load_models(CloudConfig(command_read_offsets_s=[0.3, 0.0])).commands._model.shifts == [0, 30]


def test_every_model_reads_its_card_through_one_reader(tmp_path):
    import shutil

    from cloud.commands import CommandRecognizer
    from cloud.verifier import DEFAULT_VERIFIER, Verifier
    from gate.kws.interpreter import ModelError, read_card
    from gate.kws.second_stage import DEFAULT_SECOND_STAGE, EmbeddingCheck

    bare = tmp_path / "bare.tflite"
    shutil.copy(DEFAULT_VERIFIER, bare)
    assert read_card(bare) == {}  # the node's KWS runs without one (threshold 0.5)
    for make, why in ((lambda: Verifier(model_path=bare), "names the classes"),
                      (lambda: CommandRecognizer(model_path=bare), "names the classes"),
                      (lambda: EmbeddingCheck(model_path=bare), "names the features and the threshold")):
        with pytest.raises(ModelError, match=f"bare.json: model card missing .*{why}"):
            make()
    bare.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="a model card is a JSON object, not list"):
        Verifier(model_path=bare)
    assert read_card(DEFAULT_SECOND_STAGE)["feature_kind"] == "speech_embedding"
