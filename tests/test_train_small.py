"""A small end-to-end `gate-cloud train` run: a few hundred clips, every model, card written; the tiny
model must beat chance on held-out voices. Budget: under 3 minutes on a 2-core CI machine."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

pytestmark = [pytest.mark.slow, pytest.mark.needs_espeak,
              pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")]

RECIPE = """
name: small
phrase: hey jarvis
seed: 3
corpus: {positives: 160, confusables: 60, speech: 80, command_renders: 60, engines: [espeak],
         eval_voices: ["espeak:en-gb-x-gbcwmd"], accent_share: 0.1,
         accents: [{voice: "espeak:de", phrase: "hey dscharvis"}]}
augment: {copies: 1, snr_db: [10, 30]}
tiny: {window_frames: 100, stem: 16, blocks: [[24, 2], [32, 2]], kernel: 5, epochs: 20, batch: 32, lr: 0.005,
       prune_sparsity: 0.5, prune_epochs: 1, int8_output: logit, seed_per_model: true}
verifier: {window_frames: 198, stem: 24, blocks: [[32, 2], [48, 2]], kernel: 5, epochs: 2, batch: 32}
commands: {window_frames: 158, stem: 16, blocks: [[24, 2]], kernel: 5, epochs: 1, batch: 32, scene_minutes: 1}
verifier_v2: {hidden: 16, layers: 2, epochs: 12, batch: 32, lr: 0.003, mine_epochs: 1}
distill: {teacher: verifier_v2}
streams: {minutes: 1, mine_minutes: 1, mine_epochs: 1, mine_threshold: 0.05}
feature_kinds: [logmel]
evaluation: {scenes: [quiet_home], minutes: 1, keywords_per_hour: 240, positive_renders: 60, confusable_renders: 40,
             speech_renders: 80, command_renders: 60}
"""


def test_small_training_run_beats_chance_and_writes_a_card(tmp_path):
    from cloud.cli import main

    recipe = tmp_path / "small.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["train", "--recipe", str(recipe), "--out", str(out), "--scene-minutes", "1", "--threads", "2",
                 "--teacher"]) == 0
    card = json.loads((out / "card.json").read_text())
    tiny = card["models"]["tiny_logmel"]
    # Balanced accuracy: 0.5 is chance whatever the share of positives among the held-out clips.
    assert tiny["balanced_accuracy_test_float"] > 0.65, tiny
    assert tiny["balanced_accuracy_test_int8"] > 0.65, tiny
    assert tiny["size_bytes_int8"] < 64 * 1024 and tiny["macs"] < 3_000_000
    assert card["training"]["energy_j"] > 0 and card["training"]["cpu_s"] > 0
    assert card["data"]["eval_voices"] == ["espeak:en-gb-x-gbcwmd"]
    assert "espeak:en-gb-x-gbcwmd" not in card["data"]["train_voices"]
    for f in ("tiny_logmel.tflite", "verifier.tflite", "commands.tflite", "tiny_logmel.json", "verifier.json",
              "commands.json", "verifier_v2.tflite", "verifier_v2.json", "tiny_logmel_distilled.tflite"):
        assert (out / f).is_file(), f
    # Split as gate_core.cards.write_cards writes them, every model's runtime card and record validate,
    # and shipping the run installs each model with both.
    from cloud.train.ship import ship
    from gate.kws.interpreter import read_card, read_evaluation
    from gate_core import cards

    (tmp_path / "split").mkdir()
    cards.write_cards(tmp_path / "split", card)
    for name in card["models"]:
        assert cards.read_runtime(tmp_path / "split" / f"{name}.tflite")["model"] == name
        assert cards.read_record(tmp_path / "split" / f"{name}.tflite")["model"] == name
    shipped = ship(out, tmp_path / "gate_models", tmp_path / "cloud_models")
    assert {"verifier", "commands", "verifier_v2"} <= set(shipped)
    for path in shipped.values():
        assert read_card(path)["phrase"] == "hey jarvis" and read_evaluation(path)["training"]["cpu_s"] > 0
    # Stream windows (scene-like audio spoken by training voices) and mined hard negatives were used.
    assert tiny["stream_windows"] > 300 and tiny["stream_positives"] > 0, tiny
    assert card["data"]["streams"]["keywords"] > 0
    assert "mined_negatives" in tiny and "mined_negatives" in card["models"]["verifier"]
    assert "tiny" in card["evaluation"]["tiny_logmel"]
    # A logit output: the spotter reads it as a probability (the curve's miss rate falls as the threshold
    # does), with thresholds above the 0.996 that a sigmoid-output int8 model cannot pass.
    assert tiny["output"] == "logit"
    curve = card["evaluation"]["tiny_logmel"]["curve"]
    assert [c["threshold"] for c in curve][-3:] == [0.995, 0.999, 0.9999]
    misses = [c["miss_rate"] for c in curve]
    assert misses == sorted(misses) and misses[0] < 1.0
    ev = card["evaluation"]["tiny_logmel"]
    assert np.isfinite(ev["tiny"]["fa_per_hour"])
    # The breakdown accounts for every phrase and false accept, by the held-out voice and by what was playing.
    by_voice = ev["misses_by_voice"]["tiny"]
    assert list(by_voice) == ["espeak:en-gb-x-gbcwmd"]
    assert by_voice["espeak:en-gb-x-gbcwmd"]["keywords"] == ev["tiny"]["keywords"]
    assert by_voice["espeak:en-gb-x-gbcwmd"]["hits"] == ev["tiny"]["hits"]
    assert sum(ev["false_accepts_by_source"]["tiny"].values()) == ev["tiny"]["false_accepts"]
    assert sum(ev["false_accepts_by_source"]["tiny+verifier"].values()) == ev["tiny+verifier"]["false_accepts"]
    assert all(set(c["miss_rate_by_voice"]) == {"espeak:en-gb-x-gbcwmd"} for c in curve)
    # Every verified hit's command was read by the run's own recogniser, and each reading was sorted.
    cmd = ev["commands_after_detection"]
    assert cmd["detected_phrases"] == ev["tiny+verifier"]["hits"]
    assert cmd["correct"] + cmd["unrecognised"] + cmd["wrong"] == cmd["detected_phrases"]
    assert sum(v["detected_phrases"] for v in cmd["scenes"].values()) == cmd["detected_phrases"]
    assert card["models"]["commands"]["clip_s"] == 1.6
    assert card["models"]["commands"]["scene_windows"] > 0  # scene command windows joined the clips
    # Accented speakers took part; the pruned copy is reported (half its kernel weights zero, so it
    # compresses smaller than the dense model), not shipped.
    assert card["data"]["accents"]["voices"] == ["espeak:de: hey dscharvis"]
    pruned = tiny["pruned"]
    assert 0.45 <= pruned["sparsity"] <= 0.55, pruned
    assert pruned["size_bytes_int8_zlib"] < pruned["unpruned_size_bytes_int8_zlib"], pruned
    assert 0.0 <= pruned["accuracy_test_int8"] <= 1.0 and pruned["shipped"] is False
    # With per-model seeds the pruned copy is fine-tuned on the mined negatives too.
    assert pruned["mined_negatives"] == tiny["mined_negatives"]
    # Verifier v2: a head on the speech embeddings, its licence recorded, reported beside v1 everywhere;
    # and the tiny model distilled from it.
    v2 = card["models"]["verifier_v2"]
    assert v2["feature_kind"] == "speech_embedding" and v2["window_embeddings"] == 16
    assert "Apache-2.0" in v2["licence"]["embedding_model"]
    assert v2["stream_windows"] > 0 and v2["stream_positives"] > 0
    assert v2["balanced_accuracy_test_float"] > 0.6, v2
    for how in ("tiny", "tiny+verifier", "tiny+verifier_v2"):
        assert how in ev and how in ev["misses_by_voice"], how
    assert ev["tiny+verifier_v2"]["keywords"] == ev["tiny"]["keywords"]
    assert all("verified_v2_miss_rate" in c and "verified_v2_fa_per_hour" in c for c in curve)
    assert "tiny_logmel_distilled" in card["models"]
