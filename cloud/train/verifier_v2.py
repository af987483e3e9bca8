"""The cloud's verifier v2 (float): a small head on the speech-embedding front end (cloud.train.embedded
embeds the clips and streams and trains the head)."""

from __future__ import annotations

import json
from pathlib import Path

from cloud.train import embedded
from cloud.train.data import WakeData
from cloud.train.recipe import Recipe
from cloud.train.seeds import model_seed


def train(recipe: Recipe, out: Path, wake: WakeData, cache: Path) -> tuple[dict, dict]:
    """Train, export and describe verifier v2; writes verifier_v2.{tflite,json}. Returns its card and the
    teacher embedded.teacher_stream_scores reads (its clip scores, model and embedded streams)."""
    card, teacher = embedded.verifier_v2(
        recipe, out, clips=wake.clips, tr_idx=wake.tr_idx, val_idx=wake.val_idx, test=wake.test,
        stream_scenes=wake.streams.scenes, mine_scenes=wake.streams.mine_scenes, cache=cache,
        seed=model_seed(recipe.seed, "verifier_v2"))
    (out / "verifier_v2.json").write_text(json.dumps({"phrase": recipe.phrase, **card}, indent=2) + "\n")
    return card, teacher
