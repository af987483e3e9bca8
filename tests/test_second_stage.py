"""The shipped speech-embedding head: the node's second stage and the cloud's verifier v2 (one model).
Real models in a real interpreter: the bundled clips, the cascade built from a thresholds file, the
cloud service's v1/v2 choice, and clear errors for a wrong model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from node_helpers import feed

from gate.kws.interpreter import ModelError, read_evaluation
from gate.kws.second_stage import DEFAULT_SECOND_STAGE, SEARCH_S, EmbeddingCheck
from sensors.wavfile import read_audio

DATA = Path(__file__).parent / "data" / "kws"
LABELS = json.loads((DATA / "labels.json").read_text())
POS = sorted(n for n, lab in LABELS.items() if lab["wake"])
NEG = sorted(n for n, lab in LABELS.items() if not lab["wake"])


@pytest.fixture(scope="module")
def check() -> EmbeddingCheck:
    return EmbeddingCheck()


def test_shipped_head_card_names_its_features_and_licence(check):
    card = check.card
    assert card["feature_kind"] == "speech_embedding" and check.frames == card["window_embeddings"] == 16
    size = read_evaluation(DEFAULT_SECOND_STAGE)["size_bytes"]
    assert "Apache-2.0" in card["licence"]["embedding_model"] and size < 2_000_000
    assert DEFAULT_SECOND_STAGE.stat().st_size == size


@pytest.mark.parametrize("late_s", [0.05, 0.25, 0.5])
@pytest.mark.parametrize("name", POS)
def test_accepts_the_wake_phrase_of_held_out_voices(check, name, late_s):
    ok, p = check.verify(read_audio(DATA / name), LABELS[name]["wake_end_s"] + late_s)
    assert ok, (name, p)


@pytest.mark.parametrize("name", NEG)
def test_rejects_near_misses_and_other_talk(check, name):
    x = read_audio(DATA / name)
    for t in (1.2, 1.6, 2.0, 2.4):
        ok, p = check.verify(x, t)
        assert not ok, (name, t, p)


def test_reads_only_the_audio_its_windows_need(check):
    x = read_audio(DATA / POS[0])
    long = np.concatenate([np.zeros(16_000 * 5, x.dtype), x, np.zeros(16_000 * 5, x.dtype)])
    t = LABELS[POS[0]]["wake_end_s"] + 0.2
    before = check.audio_s
    # The grid of embeddings is the segment's own, so 5 s of silence in front (a multiple of 80 ms) changes nothing.
    assert check.score(long, t + 5.0) == pytest.approx(check.score(x, t), abs=1e-5)
    read = (check.audio_s - before) / 2
    assert read <= check.span_s() + 0.1 and check.span_s() == pytest.approx(1.982 - SEARCH_S[0] + SEARCH_S[1])


def test_a_log_mel_model_is_refused_with_its_path(tmp_path):
    from cloud.verifier import DEFAULT_VERIFIER

    for suffix in (".tflite", ".json"):
        shutil.copyfile(DEFAULT_VERIFIER.with_suffix(suffix), (tmp_path / "v1").with_suffix(suffix))
    with pytest.raises(ModelError, match=r"v1.tflite: model card says feature_kind .logmel."):
        EmbeddingCheck(model_path=tmp_path / "v1.tflite")
    (tmp_path / "v1.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a readable model card"):
        EmbeddingCheck(model_path=tmp_path / "v1.tflite")


def test_the_cloud_loads_v1_or_v2_by_name_or_by_card():
    from cloud.service.models import TFLiteVerifier
    from cloud.verifier import DEFAULT_VERIFIER_V2, EmbeddingVerifier, Verifier, load_verifier

    assert isinstance(load_verifier(DEFAULT_VERIFIER_V2), EmbeddingVerifier)
    assert type(load_verifier()) is Verifier
    x = read_audio(DATA / POS[0])
    t = LABELS[POS[0]]["wake_end_s"] + 0.2
    for version in ("v1", "v2"):
        r = TFLiteVerifier(version=version).score(x, 16_000, fired_at_s=t)
        assert r.accepted, (version, r)


def test_node_cascade_with_the_second_stage_from_the_thresholds_file():
    """A Pi profile, second stage on: a wake phrase goes up, talk the tiny model fires on at a low threshold
    stays on the node; both checks are charged to the second_stage stage."""
    from gate.cascade import Cascade
    from gate.config import GateSettings
    from gate.energy import SECOND_STAGE, EnergyModel, load_profile

    s = GateSettings()
    s.kws.second_stage.enabled = True
    s.kws.threshold = 0.05  # fire on nearly anything: the second stage decides
    s.energy.profile = "pi4"
    c = Cascade.from_config(s)
    assert isinstance(c.second_stage, EmbeddingCheck)
    rng = np.random.default_rng(0)
    bed = lambda n: (rng.standard_normal(n) * 20).astype(np.int16)  # noqa: E731 - a quiet room
    parts = [bed(16_000 * 2), read_audio(DATA / POS[0]), bed(16_000 * 4), read_audio(DATA / "neg_travis.flac"),
             bed(16_000 * 4)]
    published, rejected = feed(c, np.concatenate(parts), 1600)
    assert len(published) == 1 and 2.0 < published[0].segment.t_detect_s < 2.0 + 3.0, published
    snap = c.ledger.snapshot()
    assert snap[SECOND_STAGE].invocations == len(published) + len(rejected) >= 1
    priced = EnergyModel(profile=load_profile("pi4")).price(snap)
    assert priced.stage_j[SECOND_STAGE] == pytest.approx(0.291 * snap[SECOND_STAGE].invocations)
    assert SECOND_STAGE not in priced.unpriced
