"""The shipped tiny model: detects the wake word in bundled labelled clips (held-out voices, never
trained on), rejects the negatives, and the stage is chunk-size invariant on the audio clock."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gate.kws.config import KwsConfig
from gate.kws.interpreter import read_evaluation
from gate.kws.stage import KeywordSpotter, default_model_path, read_card
from sensors.wavfile import read_audio

pytest.importorskip("ai_edge_litert")

DATA = Path(__file__).parent / "data" / "kws"
LABELS = json.loads((DATA / "labels.json").read_text())
# The clips were rendered by tests/data/kws/labels.json's voices: espeak-ng en-gb-x-gbcwmd, mbrola us3 and
# de5 and pico en-GB, the voices the recipe holds out of training.


def _config() -> KwsConfig:
    return KwsConfig()  # shipped model, the threshold tuned for it


def _detect(path: Path, chunk: int = 1600) -> list:
    x = read_audio(path)
    kws = KeywordSpotter.from_config(_config())
    out = []
    for i in range(0, x.size, chunk):
        out += kws.process(x[i:i + chunk])
    return out


def test_shipped_model_is_within_the_node_budget():
    card = read_card(default_model_path("logmel"))
    assert default_model_path("logmel").stat().st_size <= 64 * 1024
    assert read_evaluation(default_model_path("logmel"))["macs"] <= 3_000_000
    assert card["feature_kind"] == "logmel" and card["window_frames"] == 100


@pytest.mark.parametrize("name", sorted(n for n, lab in LABELS.items() if lab["wake"]))
def test_detects_the_wake_word(name):
    dets = _detect(DATA / name)
    end = LABELS[name]["wake_end_s"]
    assert dets, f"no detection in {name}"
    assert any(end - 0.4 <= d.t_s <= end + 1.0 for d in dets), (name, end, [d.t_s for d in dets])


@pytest.mark.parametrize("name", sorted(n for n, lab in LABELS.items() if not lab["wake"]))
def test_rejects_negatives(name):
    assert _detect(DATA / name) == []


def test_stage_is_chunk_size_invariant():
    x = read_audio(DATA / "pos_us3_cmd.flac")
    ref = None
    for chunk in (160, 1000, 4801, x.size):
        kws = KeywordSpotter.from_config(_config(), keep_scores=True)
        for i in range(0, x.size, chunk):
            kws.process(x[i:i + chunk])
        scores = np.array([(s.t_s, s.posterior) for s in kws.scores])
        if ref is None:
            ref = scores
        np.testing.assert_array_equal(scores, ref)
    # One inference every 30 ms once the first 1 s window is full.
    assert np.allclose(np.diff(ref[:, 0]), 0.03)


def test_reset_moves_the_audio_clock():
    x = read_audio(DATA / "pos_gbcwmd.flac")
    kws = KeywordSpotter.from_config(_config(), keep_scores=True)
    kws.process(x)
    first = [(s.t_s, s.posterior) for s in kws.scores]
    kws.reset(100.0)  # the gate reopened 100 s into the stream
    kws.process(x)
    again = [(s.t_s - 100.0, s.posterior) for s in kws.scores]
    np.testing.assert_allclose(again, first, atol=1e-9)


def test_analog_envelope_model_loads_when_shipped():
    assert default_model_path("analog_envelopes").is_file(), "committed analog-envelope model missing"
    kws = KeywordSpotter.from_config(KwsConfig(feature_kind="analog_envelopes"))
    kws.process(read_audio(DATA / "pos_gbcwmd.flac"))
    assert kws.inferences > 0


def test_a_corrupt_card_beside_a_model_is_a_clear_error(tmp_path):
    from gate.kws.interpreter import ModelError
    from gate.kws.stage import outputs_logits

    model = tmp_path / "kws.tflite"
    model.write_bytes(default_model_path("logmel").read_bytes())
    (tmp_path / "kws.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"kws\.json: not a readable model card"):
        KeywordSpotter.from_config(KwsConfig(model_path=str(model), threshold=0.5))
    (tmp_path / "kws.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="a model card is a JSON object"):
        KeywordSpotter.from_config(KwsConfig(model_path=str(model), threshold=0.5))
    # The shipped model outputs a probability (int8 over [0, 1]): read as is.
    kws = KeywordSpotter.from_config(_config())
    assert not kws.logits and not outputs_logits(kws.model, read_card(default_model_path("logmel")))


def test_features_the_model_was_not_trained_on_are_refused():
    from gate.kws.interpreter import ModelError

    # log-mel and PCEN frames are both 40 wide: the card is what tells them apart.
    logmel = str(default_model_path("logmel"))
    with pytest.raises(ModelError, match=r"trained on 'logmel' features but kws.feature_kind is 'pcen'") as err:
        KeywordSpotter.from_config(KwsConfig(model_path=logmel, feature_kind="pcen"))
    assert err.value.code == "model_mismatch"
    if not default_model_path("pcen").is_file():
        with pytest.raises(ModelError, match=r"no shipped model for feature_kind 'pcen'.*set kws.model_path"):
            KeywordSpotter.from_config(KwsConfig(feature_kind="pcen"))
