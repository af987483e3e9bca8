"""The cloud's command recogniser (float, log-mel): which command follows the wake phrase, or none."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from cloud.train import dataset, fit
from cloud.train.data import Renders, make_scene
from cloud.train.models import build, cost
from cloud.train.recipe import Recipe
from cloud.train.seeds import model_seed, step_rng
from gate.kws.featurize import Featurizer
from gate_core.vocabulary import COMMANDS


def train(recipe: Recipe, out: Path, renders: Renders) -> dict:
    """Train, export (float TFLite) and describe the recogniser; writes commands.{tflite,json}."""
    lm = Featurizer("logmel")
    cspec = recipe.commands
    classes = [cmd.name for cmd in COMMANDS] + ["_unknown", "_silence"]
    # Every other utterance is an "_unknown" example: in use, most speech after a false wake is not a command.
    cmd_r = [r for r in renders.train if r.kind in ("command", "speech", "confusable")]
    # Clips just long enough for the window, in tenths of a second (1.6 s for 158 frames).
    clip_s = math.ceil(float(lm.frame_end_s(cspec.window_frames - 1)) * 10 - 1e-9) / 10
    cclips = dataset.command_clips(cmd_r, classes, clip_s=clip_s, aug=recipe.augment, rng=step_rng(recipe.seed, "cmd"),
                                   babble_pool=renders.babble, noise_only=max(50, len(cmd_r) // 10),
                                   start_s=cspec.start_s)
    if cspec.scene_minutes > 0:
        crng = step_rng(recipe.seed, "cmdscene")
        cclips = dataset.concat([cclips] + [
            dataset.command_windows(make_scene(recipe, k, renders.train, cspec.scene_minutes, "cmdscene",
                                               keywords_per_hour=450.0, level_jitter_db=recipe.streams.level_jitter_db),
                                    classes, clip_s=clip_s, rng=crng)
            for k in recipe.evaluation.scenes])
    ctest = dataset.command_clips([r for r in renders.eval if r.kind in ("command", "speech")],
                                  classes, clip_s=clip_s, aug=recipe.augment, rng=step_rng(recipe.seed, "cmdtest"),
                                  babble_pool=renders.eval_babble, noise_only=30, desc="command test clips",
                                  start_s=cspec.start_s)
    xc = dataset.featurize(cclips, lm, cspec.window_frames, desc="command features")
    xc_test = dataset.featurize(ctest, lm, cspec.window_frames, desc="command test features")
    corder = step_rng(recipe.seed, "csplit").permutation(len(cclips))
    cv, ct = corder[: len(corder) // 10], corder[len(corder) // 10:]
    cm, cs = fit.stats(xc[ct])
    if cspec.seed_per_model:
        fit.reseed(model_seed(recipe.seed, "commands"))
    t0 = time.process_time()
    cmodel = build(cspec, dim=lm.dim, n_out=len(classes), mean=cm, std=cs, name="commands")
    chist = fit.train(cmodel, xc[ct], cclips.labels[ct], epochs=cspec.epochs, batch=cspec.batch, lr=cspec.lr,
                      seed=recipe.seed, x_val=xc[cv], y_val=cclips.labels[cv], desc="commands")
    c_bytes = fit.to_tflite(cmodel, int8=False)
    (out / "commands.tflite").write_bytes(c_bytes)
    ccost = cost(cmodel)
    card = {"model": "commands", "feature_kind": "logmel", "features": lm.spec(), "classes": classes,
            "window_frames": cspec.window_frames, "params": ccost.params, "macs": ccost.macs,
            "size_bytes": len(c_bytes), "dtype": "float32", "clip_s": clip_s, "start_s": list(cspec.start_s),
            "scene_windows": sum(k.startswith("scene_") for k in cclips.kinds),
            "accuracy_val_float": fit.class_accuracy(fit.predict(cmodel, xc[cv]), cclips.labels[cv]),
            "accuracy_test_float": fit.class_accuracy(fit.tflite_predict(c_bytes, xc_test), ctest.labels),
            "train_cpu_s": round(time.process_time() - t0, 1), "history": fit.last(chist)}
    (out / "commands.json").write_text(json.dumps({"phrase": recipe.phrase, **card}, indent=2) + "\n")
    return card
