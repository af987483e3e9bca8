"""The node's tiny models (int8), one per feature kind: trained on hard labels, and with ``--teacher``
also distilled from a verifier's soft labels; each exported float and int8, with a pruned copy compared."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np

from cloud.train import dataset, embedded, fit
from cloud.train.data import WakeData
from cloud.train.models import cost, logits
from cloud.train.recipe import Recipe
from cloud.train.seeds import model_seed, step_rng
from cloud.train.verifier import Teacher
from gate.kws.featurize import Featurizer
from gate.kws.stage import sigmoid


def train_all(recipe: Recipe, out: Path, wake: WakeData, *, distill: bool, teacher: Teacher | None,
              teacher_v2: dict | None) -> dict[str, dict]:
    """Every tiny model of the recipe's feature kinds (and, with ``distill``, the log-mel one distilled from
    ``teacher``, or from verifier v2's ``teacher_v2`` when the recipe names it); writes each one's .tflite.
    Returns their cards by model name."""
    tspec = recipe.tiny
    clips, test, tr_idx, val_idx, streams = wake.clips, wake.test, wake.tr_idx, wake.val_idx, wake.streams
    teacher_p, teacher_s = (teacher.clips, teacher.streams) if teacher is not None else (None, None)
    cards: dict[str, dict] = {}
    for kind in recipe.feature_kinds:
        fz = Featurizer(kind)
        if kind == "logmel" and recipe.augment.vtlp_prob > 0:  # the training clips through warped mel banks
            vt = dataset.VtlpLogMel(step_rng(recipe.seed, "vtlp"), recipe.augment.vtlp_prob, recipe.augment.vtlp_alpha)
            x_clips = dataset.featurize(clips.subset(tr_idx), vt, tspec.window_frames, desc="tiny features vtlp")
            x_val = dataset.featurize(clips.subset(val_idx), fz, tspec.window_frames, desc=f"tiny features {kind}")
        else:
            x = dataset.featurize(clips, fz, tspec.window_frames, desc=f"tiny features {kind}")
            x_clips, x_val = x[tr_idx], x[val_idx]
            del x
        x_test = dataset.featurize(test, fz, tspec.window_frames, desc=f"tiny test features {kind}")
        xs, ys = streams.windows(kind, tspec.window_frames)
        x_tr = np.concatenate([x_clips, xs])
        del xs, x_clips
        hard = clips.labels.astype(np.float32)
        variants_to_train = [("hard", np.concatenate([hard[tr_idx], ys]))]
        if distill and kind == "logmel" and recipe.distill.teacher == "verifier_v2" and teacher_v2 is not None:
            teacher_p = teacher_v2["clips"]
            teacher_s = embedded.teacher_stream_scores(teacher_v2, streams.ends(kind), fz, recipe.verifier_v2.window)
        if distill and kind == "logmel" and teacher_p is not None:
            a = recipe.distill.alpha
            soft = a * hard + (1 - a) * teacher_p
            variants_to_train.append(("distilled", np.concatenate([soft[tr_idx], a * ys + (1 - a) * teacher_s])))
        for how, y_tr in variants_to_train:
            name = f"tiny_{kind}" + ("_distilled" if how == "distilled" else "")
            tc, b = _train_tiny(tspec, x_tr, y_tr, x_val, hard[val_idx], x_test, test.labels, fz, recipe,
                                name, streams.mine_streams(kind))
            tc["stream_windows"], tc["stream_positives"] = int(ys.size), int(ys.sum())
            cards[name] = tc
            (out / f"{name}.tflite").write_bytes(b)
    return cards


def _train_tiny(tspec, x_tr, y_tr, x_val, y_val, x_test, y_test, fz, recipe: Recipe, name,
                mine_streams) -> tuple[dict, bytes]:
    if tspec.seed_per_model:
        fit.reseed(model_seed(recipe.seed, name))
    t0 = time.process_time()
    model, hist, hard = fit.fit_binary(tspec, name, fz.dim, x_tr, y_tr, x_val, y_val, recipe, mine_streams)
    train_s = time.process_time() - t0
    rep = x_tr[step_rng(recipe.seed, "rep").permutation(len(x_tr))[:500]]
    f_bytes, q_bytes, predict = _export(model, tspec, rep)
    k = cost(model)
    pf, pq, pqv = predict(f_bytes, x_test), predict(q_bytes, x_test), predict(q_bytes, x_val)
    card = {"model": name, "feature_kind": fz.kind, "features": fz.spec(), "window_frames": tspec.window_frames,
            "params": k.params, "macs": k.macs, "size_bytes_int8": len(q_bytes), "size_bytes_float": len(f_bytes),
            "output": tspec.int8_output, "seed_per_model": tspec.seed_per_model,
            "mined_negatives": len(hard),
            "accuracy_val_float": fit.binary_accuracy(fit.predict(model, x_val)[:, 0], y_val),
            "accuracy_val_int8": fit.binary_accuracy(pqv, y_val),
            "accuracy_test_float": fit.binary_accuracy(pf, y_test),
            "accuracy_test_int8": fit.binary_accuracy(pq, y_test),
            "balanced_accuracy_test_float": fit.balanced_accuracy(pf, y_test),
            "balanced_accuracy_test_int8": fit.balanced_accuracy(pq, y_test),
            "int8_float_max_abs_diff_test": float(np.max(np.abs(pf - pq))) if pf.size else 0.0,
            "train_cpu_s": round(train_s, 1), "history": fit.last(hist)}
    if tspec.prune_sparsity > 0:
        # The pruned copy is fine-tuned on what the model was, mined negatives included. Only with per-model
        # seeds: more batches here would move the global generator, and the next tiny model with it, so the
        # shipped models (trained without per-model seeds) could not be rebuilt.
        extra = hard if tspec.seed_per_model else hard[:0]
        if len(extra):
            x_tr, y_tr = np.concatenate([x_tr, extra]), np.concatenate([y_tr, np.zeros(len(extra), np.float32)])
        card["pruned"] = _pruned(model, tspec, x_tr, y_tr, x_val, y_val, x_test, y_test, rep, q_bytes, recipe, name)
        card["pruned"]["mined_negatives"] = len(extra)
    return card, q_bytes


def _export(model, tspec, rep: np.ndarray):
    """Float and int8 TFLite of a binary model, and how to get probabilities back from either: the
    sigmoid in the graph, or (``int8_output: logit``) a logit output the reader passes through one."""
    head = logits(model) if tspec.int8_output == "logit" else model
    f_bytes = fit.to_tflite(head, int8=False)
    q_bytes = fit.to_tflite(head, int8=True, representative=rep)

    def predict(content: bytes, x: np.ndarray) -> np.ndarray:
        p = fit.tflite_predict(content, x)[:, 0]
        return sigmoid(p).astype(np.float32) if tspec.int8_output == "logit" else p

    return f_bytes, q_bytes, predict


def _pruned(model, tspec, x_tr, y_tr, x_val, y_val, x_test, y_test, rep, q_bytes: bytes, recipe: Recipe,
            name: str) -> dict:
    """The float vs int8 vs pruned comparison: a magnitude-pruned copy, fine-tuned and quantized like the
    model itself. TFLite stores kernels densely, so its zeros save flash only once compressed (zlib here)."""
    pruned, sparsity = fit.prune(model, sparsity=tspec.prune_sparsity, x=x_tr, y=y_tr, epochs=tspec.prune_epochs,
                                 batch=tspec.batch, lr=tspec.lr / 3, seed=recipe.seed, x_val=x_val,
                                 y_val=np.asarray(y_val, np.float32), desc=f"{name} pruned")
    _, pq_bytes, predict = _export(pruned, tspec, rep)
    return {"sparsity": round(sparsity, 3), "fine_tune_epochs": tspec.prune_epochs,
            "accuracy_test_float": fit.binary_accuracy(fit.predict(pruned, x_test)[:, 0], y_test),
            "accuracy_test_int8": fit.binary_accuracy(predict(pq_bytes, x_test), y_test),
            "size_bytes_int8": len(pq_bytes), "size_bytes_int8_zlib": len(zlib.compress(pq_bytes, 9)),
            "unpruned_size_bytes_int8_zlib": len(zlib.compress(q_bytes, 9)),
            "shipped": False}
