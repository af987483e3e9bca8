"""The cloud's verifier v1 (float, log-mel): trained first, because it is the tiny models' teacher."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.train import dataset, fit
from cloud.train.data import WakeData
from cloud.train.models import cost
from cloud.train.recipe import Recipe
from cloud.train.seeds import model_seed
from gate.kws.featurize import Featurizer


@dataclass
class Teacher:
    """A verifier's scores on what the tiny log-mel model trains on: every wake clip and every stream window."""

    clips: np.ndarray
    streams: np.ndarray


def train(recipe: Recipe, out: Path, wake: WakeData) -> tuple[dict, Teacher]:
    """Train, export (float TFLite) and describe verifier v1; writes verifier.{tflite,json}."""
    lm = Featurizer("logmel")
    clips, test, tr_idx, val_idx = wake.clips, wake.test, wake.tr_idx, wake.val_idx
    vspec = recipe.verifier
    xv = dataset.featurize(clips, lm, vspec.window_frames, desc="verifier features")
    xv_test = dataset.featurize(test, lm, vspec.window_frames, desc="verifier test features")
    xs, ys = wake.streams.windows("logmel", vspec.window_frames)
    if vspec.seed_per_model:
        fit.reseed(model_seed(recipe.seed, "verifier"))
    t0 = time.process_time()
    verifier, hist, v_mined = fit.fit_binary(
        vspec, "verifier", lm.dim, np.concatenate([xv[tr_idx], xs]),
        np.concatenate([clips.labels[tr_idx].astype(np.float32), ys]), xv[val_idx], clips.labels[val_idx],
        recipe, wake.streams.mine_streams("logmel"))
    v_bytes = fit.to_tflite(verifier, int8=False)
    (out / "verifier.tflite").write_bytes(v_bytes)
    vc = cost(verifier)
    teacher = Teacher(fit.predict(verifier, xv)[:, 0],
                      fit.predict(verifier, xs)[:, 0] if len(xs) else np.zeros(0, np.float32))
    del xs
    v_test_p = fit.tflite_predict(v_bytes, xv_test)[:, 0]
    card = {"model": "verifier", "feature_kind": "logmel", "features": lm.spec(),
            "window_frames": vspec.window_frames,
            "params": vc.params, "macs": vc.macs, "size_bytes": len(v_bytes), "dtype": "float32",
            "threshold": recipe.evaluation.verifier_threshold,
            "accuracy_val_float": fit.binary_accuracy(teacher.clips[val_idx], clips.labels[val_idx]),
            "accuracy_test_float": fit.binary_accuracy(v_test_p, test.labels),
            "stream_windows": int(ys.size), "stream_positives": int(ys.sum()), "mined_negatives": len(v_mined),
            "train_cpu_s": round(time.process_time() - t0, 1), "history": fit.last(hist)}
    (out / "verifier.json").write_text(json.dumps({"phrase": recipe.phrase, **card}, indent=2) + "\n")
    return card, teacher
