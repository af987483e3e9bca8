"""`gate-cloud train`: synthesise, train the three models, quantize, evaluate, write models and cards.

Order matters: the verifier is trained first because it is the tiny model's teacher. Everything
random comes from one seeded generator per step, so a recipe and seed rebuild the same models.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import pickle
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cloud.train import corpus, dataset, embedded, fit, scenes
from cloud.train.models import build, cost, logits
from cloud.train.recipe import Recipe
from gate.kws.config import KwsConfig
from gate.kws.featurize import Featurizer
from gate.kws.stage import KeywordSpotter, sigmoid
from gate.segmenter import SegmenterConfig
from gate_core import metrics
from gate_core.detector import Detector
from gate_core.vocabulary import COMMANDS
from sensors.synth.tts import Utterance

log = logging.getLogger(__name__)
SR = 16_000
PARTS = ("verifier", "verifier_v2", "commands", "tiny")
CURVE = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)
# Threshold candidates on the dev scenes: steps of 0.01 up to 0.99 (a sigmoid-output int8 model tops out
# at 255/256), then finer steps near 1 for a logit-output model, which still ranks windows there.
THRESHOLDS = np.round(np.arange(0.30, 0.995, 0.01), 3)
LOGIT_THRESHOLDS = np.concatenate([THRESHOLDS, [0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995, 0.99999]])


@dataclass
class Options:
    teacher: bool = False          # also train a tiny model on the verifier's soft labels and compare
    scene_minutes: float | None = None  # override the recipe's evaluation length (quick runs)
    threads: int = 2
    evaluate: bool = True
    only: tuple[str, ...] | None = None  # a subset of PARTS; the tiny models' teacher needs "verifier"
    cache_dir: Path | None = None  # where synthesised renders are kept between runs (default: the output dir)


def cached_renders(cache: Path, what: str, items: list[tuple[str, Utterance]], make):
    """Renders are the slow, model-independent part: keep them for reruns, keyed by the plan itself
    (every utterance's kind, text, voice, rate and pitch), so whatever changes what would be said
    (recipe, seed, installed voices) makes new renders, and nothing else does."""
    plan = [[kind, u.text, u.voice.id, u.rate, u.pitch] for kind, u in items]
    key = hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]
    path = cache / f"renders-{what}-{key}.pkl"
    if path.is_file():
        with path.open("rb") as f:
            return pickle.load(f)
    renders = make()
    if renders is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(renders, f, protocol=pickle.HIGHEST_PROTOCOL)
    return renders


@dataclass
class _Meter:
    """CPU seconds of this process (all threads) x watts per busy core: the training energy figure."""

    watts: float
    cpu0: float = field(default_factory=time.process_time)

    def report(self) -> dict:
        cpu = time.process_time() - self.cpu0
        return {"cpu_s": round(cpu, 1), "watts_per_core": self.watts, "energy_j": round(cpu * self.watts, 1),
                "energy_wh": round(cpu * self.watts / 3600, 3), "method": "process CPU time x watts per busy core"}


def _rng(seed: int, step: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, step))])


def run(recipe: Recipe, out: Path, opts: Options) -> dict:
    if opts.only and set(opts.only) == {"eval"}:
        return reevaluate(recipe, out, opts)
    meter = _Meter(recipe.cpu_watts)
    fit.setup_tf(recipe.seed, opts.threads)
    out.mkdir(parents=True, exist_ok=True)
    card: dict = {"recipe": recipe.model_dump(mode="json"), "phrase": recipe.phrase, "seed": recipe.seed}

    # --- data -------------------------------------------------------------------------------
    c = recipe.corpus
    es = corpus.with_random_variants(corpus.engines(c.engines), c.random_variants, c.random_variant_seed)
    train_v, eval_v = corpus.split_voices(es, c.eval_voices, c.exclude_voices)
    variants = list(es.variants)
    train_items, accents, accents_skipped = train_plan(recipe, es)
    eval_items = eval_plan(recipe, eval_v)
    cache = opts.cache_dir or out
    train_r = cached_renders(cache, "train", train_items, lambda: corpus.synthesise(train_items, workers=c.workers,
                                                                                   desc="synth train"))
    eval_r = cached_renders(cache, "eval", eval_items, lambda: corpus.synthesise(eval_items, workers=c.workers,
                                                                                desc="synth eval"))
    card["data"] = _data_card(train_r, eval_r, train_v, eval_v, variants)
    card["data"]["accents"] = {"voices": [f"{v.id}: {text}" for v, text in accents], "skipped": accents_skipped,
                               "share": c.accent_share}

    babble = [r.audio for r in train_r if r.kind == "speech"][:400]
    eval_babble = [r.audio for r in eval_r if r.kind == "speech"]
    parts = set(opts.only or PARTS)
    streams = None
    if parts & {"verifier", "verifier_v2", "tiny"}:
        wake_r = [r for r in train_r if not r.kind.startswith("command:")]
        rng = _rng(recipe.seed, "clips")
        clips = dataset.wake_clips(wake_r, clip_s=recipe.clip_s, aug=recipe.augment, rng=rng, babble_pool=babble,
                                   noise_only=len(wake_r) // 6, desc="wake clips")
        test = dataset.wake_clips([r for r in eval_r if not r.kind.startswith("command:")], clip_s=recipe.clip_s,
                                  aug=recipe.augment, rng=_rng(recipe.seed, "test"), babble_pool=eval_babble,
                                  noise_only=60, desc="test clips")
        order = _rng(recipe.seed, "split").permutation(len(clips))
        n_val = max(1, len(clips) // 10)
        val_idx, tr_idx = order[:n_val], order[n_val:]
        card["data"]["wake_clips"] = {"train": int(tr_idx.size), "val": int(val_idx.size),
                                      "test_heldout_voices": len(test),
                                      "positives_train": int(clips.labels[tr_idx].sum()),
                                      "positives_test": int(test.labels.sum())}
        stream_scenes, mine_scenes = _stream_scenes(recipe, train_r)
        streams = _StreamFeatures(recipe, stream_scenes, mine_scenes)
        card["data"]["streams"] = {"minutes_each": recipe.streams.minutes,
                                   "mine_minutes_each": recipe.streams.mine_minutes,
                                   "scenes": [s.name for s in stream_scenes],
                                   "keywords": sum(len(s.keywords) for s in stream_scenes)}

    # --- verifier (float, cloud) --------------------------------------------------------------
    lm = Featurizer("logmel")
    models: dict[str, dict] = {}
    teacher_p = teacher_s = teacher_v2 = None
    if "verifier" in parts:
        vspec = recipe.verifier
        xv = dataset.featurize(clips, lm, vspec.window_frames, desc="verifier features")
        xv_test = dataset.featurize(test, lm, vspec.window_frames, desc="verifier test features")
        xs, ys = streams.windows("logmel", vspec.window_frames)
        if vspec.seed_per_model:
            fit.reseed(_model_seed(recipe.seed, "verifier"))
        t0 = time.process_time()
        verifier, hist, v_mined = _fit_binary(
            vspec, "verifier", lm.dim, np.concatenate([xv[tr_idx], xs]),
            np.concatenate([clips.labels[tr_idx].astype(np.float32), ys]), xv[val_idx], clips.labels[val_idx],
            recipe, streams.mine_streams("logmel"))
        v_bytes = fit.to_tflite(verifier, int8=False)
        (out / "verifier.tflite").write_bytes(v_bytes)
        vc = cost(verifier)
        teacher_p = fit.predict(verifier, xv)[:, 0]
        teacher_s = fit.predict(verifier, xs)[:, 0] if len(xs) else np.zeros(0, np.float32)
        del xs
        v_test_p = fit.tflite_predict(v_bytes, xv_test)[:, 0]
        vcard = {"model": "verifier", "feature_kind": "logmel", "features": lm.spec(),
                 "window_frames": vspec.window_frames,
                 "params": vc.params, "macs": vc.macs, "size_bytes": len(v_bytes), "dtype": "float32",
                 "threshold": recipe.evaluation.verifier_threshold,
                 "accuracy_val_float": fit.binary_accuracy(teacher_p[val_idx], clips.labels[val_idx]),
                 "accuracy_test_float": fit.binary_accuracy(v_test_p, test.labels),
                 "stream_windows": int(ys.size), "stream_positives": int(ys.sum()), "mined_negatives": len(v_mined),
                 "train_cpu_s": round(time.process_time() - t0, 1), "history": _last(hist)}
        (out / "verifier.json").write_text(json.dumps({"phrase": recipe.phrase, **vcard}, indent=2) + "\n")
        del xv
        models["verifier"] = vcard

    # --- verifier v2 (float, cloud): a head on the speech-embedding front end ---------------------
    if "verifier_v2" in parts:
        models["verifier_v2"], teacher_v2 = embedded.verifier_v2(
            recipe, out, clips=clips, tr_idx=tr_idx, val_idx=val_idx, test=test, stream_scenes=streams.scenes,
            mine_scenes=streams.mine_scenes, cache=cache, seed=_model_seed(recipe.seed, "verifier_v2"))
        (out / "verifier_v2.json").write_text(json.dumps({"phrase": recipe.phrase, **models["verifier_v2"]},
                                                         indent=2) + "\n")

    # --- command recogniser (float, cloud) ----------------------------------------------------
    if "commands" in parts:
        cspec = recipe.commands
        classes = [cmd.name for cmd in COMMANDS] + ["_unknown", "_silence"]
        # Every other utterance is an "_unknown" example: in use, most speech after a false wake is not a command.
        cmd_r = [r for r in train_r if r.kind.startswith("command:") or r.kind in ("speech", "confusable")]
        # Clips just long enough for the window, in tenths of a second (1.6 s for 158 frames).
        clip_s = math.ceil(float(lm.frame_end_s(cspec.window_frames - 1)) * 10 - 1e-9) / 10
        cclips = dataset.command_clips(cmd_r, classes, clip_s=clip_s, aug=recipe.augment, rng=_rng(recipe.seed, "cmd"),
                                       babble_pool=babble, noise_only=max(50, len(cmd_r) // 10), start_s=cspec.start_s)
        if cspec.scene_minutes > 0:
            crng = _rng(recipe.seed, "cmdscene")
            cclips = dataset.concat([cclips] + [
                dataset.command_windows(_scene(recipe, k, train_r, cspec.scene_minutes, "cmdscene",
                                               keywords_per_hour=450.0, level_jitter_db=recipe.streams.level_jitter_db),
                                        classes, clip_s=clip_s, rng=crng)
                for k in recipe.evaluation.scenes])
        ctest = dataset.command_clips([r for r in eval_r if r.kind.startswith("command:") or r.kind == "speech"],
                                      classes, clip_s=clip_s, aug=recipe.augment, rng=_rng(recipe.seed, "cmdtest"),
                                      babble_pool=eval_babble, noise_only=30, desc="command test clips",
                                      start_s=cspec.start_s)
        xc = dataset.featurize(cclips, lm, cspec.window_frames, desc="command features")
        xc_test = dataset.featurize(ctest, lm, cspec.window_frames, desc="command test features")
        corder = _rng(recipe.seed, "csplit").permutation(len(cclips))
        cv, ct = corder[: len(corder) // 10], corder[len(corder) // 10:]
        cm, cs = _stats(xc[ct])
        if cspec.seed_per_model:
            fit.reseed(_model_seed(recipe.seed, "commands"))
        t0 = time.process_time()
        cmodel = build(cspec, dim=lm.dim, n_out=len(classes), mean=cm, std=cs, name="commands")
        chist = fit.train(cmodel, xc[ct], cclips.labels[ct], epochs=cspec.epochs, batch=cspec.batch, lr=cspec.lr,
                          seed=recipe.seed, x_val=xc[cv], y_val=cclips.labels[cv], desc="commands")
        c_bytes = fit.to_tflite(cmodel, int8=False)
        (out / "commands.tflite").write_bytes(c_bytes)
        ccost = cost(cmodel)
        ccard = {"model": "commands", "feature_kind": "logmel", "features": lm.spec(), "classes": classes,
                 "window_frames": cspec.window_frames, "params": ccost.params, "macs": ccost.macs,
                 "size_bytes": len(c_bytes), "dtype": "float32", "clip_s": clip_s, "start_s": list(cspec.start_s),
                 "scene_windows": sum(k.startswith("scene_") for k in cclips.kinds),
                 "accuracy_val_float": fit.class_accuracy(fit.predict(cmodel, xc[cv]), cclips.labels[cv]),
                 "accuracy_test_float": fit.class_accuracy(fit.tflite_predict(c_bytes, xc_test), ctest.labels),
                 "train_cpu_s": round(time.process_time() - t0, 1), "history": _last(chist)}
        models["commands"] = ccard
        (out / "commands.json").write_text(json.dumps({"phrase": recipe.phrase, **ccard}, indent=2) + "\n")

    # --- tiny models (int8, node) ---------------------------------------------------------------
    tspec = recipe.tiny
    tiny_cards: dict[str, dict] = {}
    tiny_bytes: dict[str, bytes] = {}
    for kind in (recipe.feature_kinds if "tiny" in parts else []):
        fz = Featurizer(kind)
        x = dataset.featurize(clips, fz, tspec.window_frames, desc=f"tiny features {kind}")
        x_test = dataset.featurize(test, fz, tspec.window_frames, desc=f"tiny test features {kind}")
        xs, ys = streams.windows(kind, tspec.window_frames)
        x_tr = np.concatenate([x[tr_idx], xs])
        del xs
        hard = clips.labels.astype(np.float32)
        variants_to_train = [("hard", np.concatenate([hard[tr_idx], ys]))]
        if opts.teacher and kind == "logmel" and recipe.distill.teacher == "verifier_v2" and teacher_v2 is not None:
            teacher_p = teacher_v2["clips"]
            teacher_s = embedded.teacher_stream_scores(teacher_v2, streams.ends(kind), fz, recipe.verifier_v2.window)
        if opts.teacher and kind == "logmel" and teacher_p is not None:
            a = recipe.distill.alpha
            soft = a * hard + (1 - a) * teacher_p
            variants_to_train.append(("distilled", np.concatenate([soft[tr_idx], a * ys + (1 - a) * teacher_s])))
        for how, y_tr in variants_to_train:
            name = f"tiny_{kind}" + ("_distilled" if how == "distilled" else "")
            tc, b = _train_tiny(tspec, x_tr, y_tr, x[val_idx], hard[val_idx], x_test, test.labels, fz, recipe,
                                name, streams.mine_streams(kind))
            tc["stream_windows"], tc["stream_positives"] = int(ys.size), int(ys.sum())
            tiny_cards[name] = tc
            tiny_bytes[name] = b
            (out / f"{name}.tflite").write_bytes(b)

    # --- evaluation scenes ----------------------------------------------------------------------
    if opts.evaluate and not tiny_cards and "verifier_v2" in parts:
        tiny_cards = _shipped_tiny(recipe)  # a verifier-only run is judged behind the shipped node models
    if opts.evaluate and tiny_cards:
        card["evaluation"] = evaluate_scenes(recipe, out, tiny_cards, eval_r, train_r, opts)
    card["training"] = meter.report()
    card["models"] = {**models, **{n: m for n, m in tiny_cards.items() if "shipped_path" not in m}}
    _write_cards(out, card)
    return card


def _shipped_tiny(recipe: Recipe) -> dict[str, dict]:
    """The shipped node models of the recipe's feature kinds, as the evaluation takes them."""
    from gate.kws.stage import default_model_path, read_card

    found = {}
    for kind in recipe.feature_kinds:
        path = default_model_path(kind)
        if path.is_file():
            found[f"tiny_{kind}"] = {**read_card(path), "feature_kind": kind, "shipped_path": str(path)}
    return found


def _verifiers(out: Path, threshold: float) -> dict:
    """v1 and v2 as the evaluation runs them: this run's, else the shipped ones (v2 only where it exists)."""
    from cloud.verifier import DEFAULT_VERIFIER_V2, EmbeddingVerifier, Verifier

    own = out / "verifier.tflite"
    found = {"verifier": Verifier(threshold=threshold, **({"model_path": own} if own.is_file() else {}))}
    own2 = out / "verifier_v2.tflite"
    path2 = own2 if own2.is_file() else DEFAULT_VERIFIER_V2
    if path2.is_file():
        found["verifier_v2"] = EmbeddingVerifier(model_path=path2, threshold=threshold)
    return found


def reevaluate(recipe: Recipe, out: Path, opts: Options) -> dict:
    """Score the tiny models of a finished run on freshly built scenes (no training); rewrites its cards.
    A directory without a run's card.json scores the shipped node models and writes their cards there."""
    if (out / "card.json").is_file():
        card = json.loads((out / "card.json").read_text())
    else:
        out.mkdir(parents=True, exist_ok=True)
        card = {"phrase": recipe.phrase, "recipe": recipe.model_dump(mode="json"), "models": _shipped_tiny(recipe)}
    cache = opts.cache_dir or out
    eval_items = eval_plan(recipe)
    train_items = train_plan(recipe)[0]  # the dev scenes speak with training voices
    train_r = cached_renders(cache, "train", train_items, lambda: corpus.synthesise(
        train_items, workers=recipe.corpus.workers, desc="synth train"))
    eval_r = cached_renders(cache, "eval", eval_items, lambda: corpus.synthesise(
        eval_items, workers=recipe.corpus.workers, desc="synth eval"))
    tiny = {n: m for n, m in card["models"].items() if n.startswith("tiny_")}
    card["evaluation"] = evaluate_scenes(recipe, out, tiny, eval_r, train_r, opts)
    card["recipe"]["evaluation"] = recipe.evaluation.model_dump(mode="json")
    _write_cards(out, card)
    return card


def train_plan(recipe: Recipe, es=None) -> tuple[list, list, dict[str, str]]:
    """What the training corpus says, by which voice (every draw made here, from the seed), with the
    accent voices used and those skipped (and why)."""
    c = recipe.corpus
    es = es or corpus.with_random_variants(corpus.engines(c.engines), c.random_variants, c.random_variant_seed)
    train_v = corpus.split_voices(es, c.eval_voices, c.exclude_voices)[0]
    accents, skipped = corpus.accent_voices(c.accents)
    items = corpus.plan(recipe.phrase, voices=train_v, variants=list(es.variants), rng=_rng(recipe.seed, "plan"),
                        n_pos=c.positives, n_conf=c.confusables, n_speech=c.speech, n_cmd=c.command_renders,
                        rate=c.rate_wpm, pitch=c.pitch, accents=accents, accent_share=c.accent_share,
                        random_variants=es.random_variants, random_variant_share=c.random_variant_share)
    return items, accents, skipped


def eval_plan(recipe: Recipe, eval_voices=None) -> list:
    """Held-out-voice speech for test clips and scenes; no espeak variant (variants are training-only)."""
    c = recipe.corpus
    if eval_voices is None:
        eval_voices = corpus.split_voices(corpus.engines(c.engines), c.eval_voices)[1]
    ev = recipe.evaluation
    return corpus.plan(recipe.phrase, voices=eval_voices, variants=[], rng=_rng(recipe.seed, "eval"),
                       n_pos=ev.positive_renders, n_conf=ev.confusable_renders, n_speech=ev.speech_renders,
                       n_cmd=ev.command_renders, rate=c.rate_wpm, pitch=c.pitch)


def build_eval_scenes(recipe: Recipe, eval_r: list[corpus.Render], minutes: float) -> list[scenes.Scene]:
    ev = recipe.evaluation
    return [_scene(recipe, k, eval_r, minutes, "scene") for k in tqdm(ev.scenes, desc="eval scenes", leave=False)]


def _scene(recipe: Recipe, kind: str, renders: list[corpus.Render], minutes: float, step: str, *,
           positive_kinds: tuple[str, ...] = ("positive",), **options) -> scenes.Scene:
    """A scene of ``renders`` at the evaluation's densities; ``options`` override them (training streams)."""
    ev = recipe.evaluation
    options = {"keywords_per_hour": ev.keywords_per_hour, "confusables_per_hour": ev.confusables_per_hour,
               **options}
    return scenes.build(kind, minutes=minutes, rng=_rng(recipe.seed, step + kind),
                        positives=[r for r in renders if r.kind in positive_kinds],
                        others=[r for r in renders if r.kind == "speech"],
                        commands=[r for r in renders if r.kind.startswith("command:")],
                        confusables=[r for r in renders if r.kind == "confusable"], **options)


def _fit_binary(spec, name: str, dim: int, x_tr, y_tr, x_val, y_val, recipe: Recipe, mine_streams):
    """Train on clips and stream windows; then add the negatives this model gets most wrong on fresh
    streams and fine-tune (hard-negative mining). Returns the model, its history and the mined windows."""
    mean, std = _stats(x_tr)
    model = build(spec, dim=dim, n_out=1, mean=mean, std=std, name=name)
    hist = fit.train(model, x_tr, y_tr, epochs=spec.epochs, batch=spec.batch, lr=spec.lr, seed=recipe.seed,
                     x_val=x_val, y_val=np.asarray(y_val, np.float32), desc=name)
    ss = recipe.streams
    if not mine_streams or ss.mine_epochs == 0 or ss.mine_limit == 0:
        return model, hist, np.zeros((0, *x_tr.shape[1:]), np.float32)
    hard = dataset.mine(lambda w: fit.predict(model, w), mine_streams, spec.window_frames, stride=3,
                        threshold=ss.mine_threshold, limit=ss.mine_limit)
    log.info("%s: %d hard negatives mined", name, len(hard))
    if len(hard):
        hist = fit.train(model, np.concatenate([x_tr, hard]), np.concatenate([y_tr, np.zeros(len(hard), np.float32)]),
                         epochs=ss.mine_epochs, batch=spec.batch, lr=spec.lr / 3, seed=recipe.seed, x_val=x_val,
                         y_val=np.asarray(y_val, np.float32), desc=f"{name} +mined")
    return model, hist, hard


def _train_tiny(tspec, x_tr, y_tr, x_val, y_val, x_test, y_test, fz, recipe: Recipe, name,
                mine_streams) -> tuple[dict, bytes]:
    if tspec.seed_per_model:
        fit.reseed(_model_seed(recipe.seed, name))
    t0 = time.process_time()
    model, hist, hard = _fit_binary(tspec, name, fz.dim, x_tr, y_tr, x_val, y_val, recipe, mine_streams)
    train_s = time.process_time() - t0
    rep = x_tr[_rng(recipe.seed, "rep").permutation(len(x_tr))[:500]]
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
            "train_cpu_s": round(train_s, 1), "history": _last(hist)}
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


def _model_seed(seed: int, name: str) -> int:
    return int(_rng(seed, f"model:{name}").integers(2**31 - 1))


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


def _stream_scenes(recipe: Recipe, train_r: list[corpus.Render]) -> tuple[list, list]:
    """Training streams and hard-negative mining streams: scene kinds of the evaluation, training voices."""
    ss = recipe.streams
    talk = []
    if ss.real_speech and (ss.minutes or ss.mine_minutes):
        from sensors import real_speech  # recorded (not synthetic) talk, negatives only

        talk = [a for _, a in real_speech.load()]

    def make(kind: str, minutes: float, step: str) -> scenes.Scene:
        # Phrases said inside a sentence are wake phrases too (the render ends where the phrase ends).
        return _scene(recipe, kind, train_r, minutes, step, positive_kinds=("positive", "positive_ctx"),
                      keywords_per_hour=ss.keywords_per_hour, confusables_per_hour=ss.confusables_per_hour,
                      talk_gap_s=ss.talk_gap_s, level_jitter_db=ss.level_jitter_db, extra_talk=talk)

    # Streams hear the same speakers as the clips, speed-perturbed as often (one copy of each render).
    rng = _rng(recipe.seed, "stream-perturb")
    train_r = [corpus.Render(r.text, r.voice_id, r.kind, dataset.perturb(r.audio, rng, recipe.augment))
               for r in train_r]
    kinds = recipe.evaluation.scenes
    train = [make(k, ss.minutes, "stream") for k in tqdm(kinds, desc="train streams", leave=False)
             ] if ss.minutes else []
    mine = [make(k, ss.mine_minutes, "mine") for k in kinds] if ss.mine_minutes and ss.mine_epochs else []
    return train, mine


class _StreamFeatures:
    """Stream features per feature kind, computed once; window ends sampled once per kind, so the
    verifier (teacher) and the tiny log-mel model (student) see the same stream positions."""

    def __init__(self, recipe: Recipe, train: list, mine: list) -> None:
        self.recipe, self.scenes, self.mine_scenes = recipe, train, mine
        self._streams: dict[str, list] = {}
        self._mine: dict[str, list] = {}
        self._ends: dict[str, list] = {}

    def _get(self, kind: str) -> None:
        if kind in self._streams:
            return
        fz = Featurizer(kind)
        self._streams[kind] = [dataset.stream(s, fz) for s in tqdm(self.scenes, desc=f"stream features {kind}",
                                                                   leave=False)]
        self._mine[kind] = [dataset.stream(s, fz) for s in self.mine_scenes]
        ss = self.recipe.streams
        frames = max(self.recipe.tiny.window_frames, self.recipe.verifier.window_frames)
        self._ends[kind] = dataset.sample_ends(self._streams[kind], _rng(self.recipe.seed, "ends" + kind),
                                               frames=frames, pos_every=ss.positive_every,
                                               neg_every=ss.negative_every)

    def windows(self, kind: str, frames: int) -> tuple[np.ndarray, np.ndarray]:
        self._get(kind)
        if not self._streams[kind]:
            return np.zeros((0, frames, Featurizer(kind).dim), np.float32), np.zeros(0, np.float32)
        return dataset.gather(self._streams[kind], self._ends[kind], frames)

    def ends(self, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (positive, negative) window ends ``windows(kind, ...)`` gathers, per stream."""
        self._get(kind)
        return self._ends[kind]

    def mine_streams(self, kind: str) -> list:
        self._get(kind)
        return self._mine[kind]


def evaluate_scenes(recipe: Recipe, out: Path, tiny_cards: dict, eval_r, train_r, opts: Options) -> dict:
    """Detector threshold chosen on dev scenes (training voices), then scored on held-out-voice scenes."""
    from cloud.commands import CommandRecognizer

    ev = recipe.evaluation
    minutes = opts.scene_minutes or ev.minutes
    # Dev scenes (threshold tuning) speak with training voices: the held-out voices stay unseen until scoring.
    def last(kind: str, n: int) -> list:
        return [r for r in train_r if r.kind.startswith(kind)][-n:]

    dev_r = last("positive", 200) + last("speech", 400) + last("command:", 100) + last("confusable", 100)
    dev = [_scene(recipe, k, dev_r, max(min(5.0, minutes), minutes / 3), "dev")
           for k in tqdm(ev.scenes, desc="dev scenes", leave=False)]
    tests = build_eval_scenes(recipe, eval_r, minutes)
    checks = _verifiers(out, ev.verifier_threshold)
    # Each check's verdict on a fire depends only on the scene and the time: asked once, whichever tiny model,
    # threshold or table needs it.
    dev_passes = {v: _verdicts(m, dev) for v, m in checks.items()}
    test_passes = {v: _verdicts(m, tests) for v, m in checks.items()}
    own = out / "commands.tflite"
    recogniser = CommandRecognizer(**({"model_path": own} if own.is_file() else {}))
    result: dict = {"scene_minutes": minutes, "scenes": ev.scenes,
                    "note": "scenes built by cloud/train/scenes.py from held-out voices (eval_voices)"}
    for name in tiny_cards:
        kind = tiny_cards[name]["feature_kind"]
        base = KwsConfig(model_path=tiny_cards[name].get("shipped_path") or str(out / f"{name}.tflite"),
                         feature_kind=kind)
        dev_scores = [_posteriors(base, s) for s in dev]
        logit = KeywordSpotter.from_config(base).logits
        thr = _pick_threshold(base, dev, dev_scores, ev.dev_fa_per_hour, checks["verifier"] if ev.tune_for == "cascade"
                              else None, ev.dev_uploads_per_hour, logit=logit, passes=dev_passes["verifier"])
        cfg = base.model_copy(update={"threshold": thr})
        per_scene, tiny_all, all_scored, all_kept = {}, [], [], []
        hows = ["tiny"] + [f"tiny+{v}" for v in checks]
        checked: dict[str, list] = {h: [] for h in hows[1:]}
        voices: dict[str, list] = {h: [] for h in hows}
        sources: dict[str, list] = {h: [] for h in hows}
        cpu = 0.0
        for i, s in enumerate(tests):
            t0 = time.process_time()
            scored = _posteriors(cfg, s)
            cpu += time.process_time() - t0
            all_scored.append(scored)
            times = _detect(cfg, scored)
            tiny = metrics.span_score(times, s.keywords, s.hours)
            passed = {f"tiny+{v}": [t for t in times if ok(i, t)] for v, ok in test_passes.items()}
            all_kept.append(passed["tiny+verifier"])
            per_scene[s.name] = {"tiny": tiny.as_dict()}
            for how, kept in passed.items():
                score = metrics.span_score(kept, s.keywords, s.hours)
                per_scene[s.name][how] = score.as_dict()
                checked[how].append(score)
            tiny_all.append(tiny)
            for how, ts in (("tiny", times), *passed.items()):
                voices[how].append(metrics.by_voice(ts, s.keywords, s.keyword_voices))
                sources[how].append(metrics.false_accept_sources(ts, s.keywords, s.what_at))
        hours = sum(s.hours for s in tests)
        result[name] = {"threshold": thr, "tuned_for": ev.tune_for, "scenes": per_scene,
                        "tiny": metrics.combine(tiny_all).as_dict(),
                        **{how: metrics.combine(v).as_dict() for how, v in checked.items()},
                        # Where the misses and false accepts are, at the tuned threshold: per held-out voice, and
                        # by what was playing when a false accept fired.
                        "misses_by_voice": {h: metrics.voice_table(metrics.merge_breakdowns(v))
                                            for h, v in voices.items()},
                        "false_accepts_by_source": {h: metrics.merge_breakdowns(v) for h, v in sources.items()},
                        "commands_after_detection": command_accuracy(recogniser, tests, all_kept),
                        "kws_cpu_s_per_audio_hour_ungated": round(cpu / hours, 1),
                        "curve": _curve(base, tests, all_scored, test_passes),
                        "cascade_tuned": _cascade_tuned(base, dev, dev_scores, tests, all_scored, checks, dev_passes,
                                                        test_passes, ev, logit)}
    return result


def _cascade_tuned(base: KwsConfig, dev: list, dev_scores: list, tests: list, scored: list, checks: dict,
                   dev_passes: dict, test_passes: dict, ev, logit: bool) -> dict:
    """With a check behind it (the cloud's verifier, or the node's second stage on v2) the node can fire
    lower and let the check decide: per check, the node threshold tuned on the dev scenes for the cascade
    (the lowest whose checked false accepts stay within dev_fa_per_hour and whose uploads, or second-stage
    checks, within dev_uploads_per_hour), and what that gives on the held-out scenes."""
    out = {}
    hours = sum(s.hours for s in tests)
    for name, check in checks.items():
        thr = _pick_threshold(base, dev, dev_scores, ev.dev_fa_per_hour, check, ev.dev_uploads_per_hour, logit=logit,
                              passes=dev_passes[name])
        c = base.model_copy(update={"threshold": thr})
        passes = test_passes[name]
        node, kept = [], []
        for i, (s, sc) in enumerate(zip(tests, scored, strict=True)):
            times = _detect(c, sc)
            node.append(metrics.span_score(times, s.keywords, s.hours))
            kept.append(metrics.span_score([t for t in times if passes(i, t)], s.keywords, s.hours))
        a, b = metrics.combine(node), metrics.combine(kept)
        out[name] = {"threshold": thr, "node": a.as_dict(), "checked": b.as_dict(),
                     "candidates_per_hour": round((a.hits + a.false_accepts) / hours, 2)}
    return out


def _curve(cfg: KwsConfig, tests: list, scored: list, passes: dict) -> list[dict]:
    """Miss rate and FA/h of the tiny model alone and behind each verifier (``passes``: its verdicts on the
    ``tests``, as ``_verdicts`` gives them), across detector thresholds (``verified_*`` is v1,
    ``verified_v2_*`` the embedding verifier)."""
    out = []
    for thr in CURVE:
        c = cfg.model_copy(update={"threshold": thr})
        tiny, voices = [], []
        ver: dict[str, list] = {name: [] for name in passes}
        for i, (s, sc) in enumerate(zip(tests, scored, strict=True)):
            times = _detect(c, sc)
            tiny.append(metrics.span_score(times, s.keywords, s.hours))
            for name, ok in passes.items():
                ver[name].append(metrics.span_score([t for t in times if ok(i, t)], s.keywords, s.hours))
            voices.append(metrics.by_voice(times, s.keywords, s.keyword_voices))
        a = metrics.combine(tiny)
        by_voice = {v: m["miss_rate"] for v, m in metrics.voice_table(metrics.merge_breakdowns(voices)).items()}
        point = {"threshold": thr, "miss_rate": round(a.miss_rate, 4), "fa_per_hour": round(a.fa_per_hour, 3)}
        for name, scores in ver.items():
            b = metrics.combine(scores)
            tag = "verified" if name == "verifier" else f"verified_{name.removeprefix('verifier_')}"
            point[f"{tag}_miss_rate"], point[f"{tag}_fa_per_hour"] = round(b.miss_rate, 4), round(b.fa_per_hour, 3)
        out.append({**point, "miss_rate_by_voice": by_voice})
    return out


def _verdicts(verifier, scenes_: list):
    """``verified`` for (scene index, fire time), each asked once however many thresholds fire there."""
    @functools.cache
    def passes(i: int, t: float) -> bool:
        return verified(verifier, scenes_[i].audio, t)

    return passes


def command_accuracy(recogniser, scenes_: list, detections: list) -> dict:
    """What the cloud makes of the command said after each detected wake phrase: the segment as the node
    sends it (pre-roll and phrase before the fire, the command window after), read from the fire time."""
    after = SegmenterConfig().command_window_s
    unrecognised = 0
    by_scene: dict[str, dict[str, int]] = {}
    for s, times in zip(scenes_, detections, strict=True):
        here = by_scene.setdefault(s.name, {"detected_phrases": 0, "correct": 0})
        for t, j in zip(times, metrics.span_assign(times, s.keywords), strict=True):
            if j < 0:
                continue
            got = recogniser.recognise(*_segment(audio=s.audio, t=t, after_s=after)).name
            here["detected_phrases"] += 1
            here["correct"] += got == s.keyword_commands[j]
            unrecognised += got is None
    n = sum(v["detected_phrases"] for v in by_scene.values())
    correct = sum(v["correct"] for v in by_scene.values())
    return {"detected_phrases": n, "correct": correct, "accuracy": round(correct / n, 4) if n else None,
            "unrecognised": unrecognised, "wrong": n - correct - unrecognised, "scenes": by_scene,
            "read_offsets_s": recogniser.read_offsets_s,
            "note": "verified detections; the command recogniser reads from the fire time at each read offset "
                    "and the most confident read naming a command wins"}


def _segment(*, audio: np.ndarray, t: float, after_s: float) -> tuple[np.ndarray, float]:
    """A forwarded segment as the cloud gets it: the segmenter's pre-roll and phrase before the fire at
    ``t``, ``after_s`` after it; with the fire's time into the segment."""
    a = max(0, int((t - SegmenterConfig().before_detection_s) * SR))
    return audio[a:int((t + after_s) * SR)], t - a / SR


def verified(verifier, audio: np.ndarray, t: float) -> bool:
    """What the cloud does with a forwarded segment: pre-roll and phrase, 0.5 s after the fire."""
    return verifier.verify(*_segment(audio=audio, t=t, after_s=0.5))[0]


def _posteriors(cfg: KwsConfig, scene: scenes.Scene) -> list:
    kws = KeywordSpotter.from_config(cfg, keep_scores=True)
    step = SR  # one second per call, as a node would feed it
    for i in range(0, scene.audio.size, step):
        kws.process(scene.audio[i:i + step])
    return kws.scores


def _detect(cfg: KwsConfig, scored: list) -> list[float]:
    d = Detector(threshold=cfg.threshold, smoothing_s=cfg.smoothing_s, min_consecutive=cfg.min_consecutive,
                 refractory_s=cfg.refractory_s, period_s=cfg.stride_frames * 0.01)
    return [det.t_s for det in d.run(np.array([s.posterior for s in scored]), np.array([s.t_s for s in scored]))]


def _pick_threshold(cfg: KwsConfig, dev: list, dev_scores: list, fa_per_hour: float, verifier=None,
                    uploads_per_hour: float = float("inf"), *, logit: bool = False, passes=None) -> float:
    """Lowest threshold whose false accepts on the dev scenes stay within ``fa_per_hour``. With a
    ``verifier`` (tuning for the cascade) only the false accepts it passes count, and the node's own
    (what it uploads for the cloud to reject) must stay within ``uploads_per_hour``."""
    hours = sum(s.hours for s in dev)  # uploads are a rate over all audio; false accepts over non-wake time
    fa_hours = sum(metrics.non_wake_seconds(metrics.span_windows(s.keywords), s.hours * 3600.0) for s in dev) / 3600.0
    # ``passes``: the verifier's verdicts on ``dev`` already being collected (``_verdicts``), to share them.
    passes = (passes or _verdicts(verifier, dev)) if verifier is not None else None
    candidates = LOGIT_THRESHOLDS if logit else THRESHOLDS
    for thr in candidates:
        c = cfg.model_copy(update={"threshold": float(thr)})
        node_fa = cascade_fa = 0
        for i, (s, sc) in enumerate(zip(dev, dev_scores, strict=True)):
            times = _detect(c, sc)
            wrong = metrics.false_accept_times(times, s.keywords)
            node_fa += len(wrong)
            cascade_fa += sum(passes(i, t) for t in wrong) if passes is not None else 0
        if passes is None and node_fa <= fa_per_hour * fa_hours:
            return float(thr)
        if passes is not None and cascade_fa <= fa_per_hour * fa_hours and node_fa <= uploads_per_hour * hours:
            return float(thr)
    return float(candidates[-1])


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = x.reshape(-1, x.shape[-1])
    return flat.mean(axis=0), flat.std(axis=0) + 1e-3


def _last(hist: dict) -> dict:
    return {k: round(v[-1], 4) for k, v in hist.items()}


def _data_card(train_r, eval_r, train_v, eval_v, variants) -> dict:
    def counts(rs):
        out: dict[str, int] = {}
        for r in rs:
            k = r.kind.split(":")[0]
            out[k] = out.get(k, 0) + 1
        return out

    return {"synthetic_only": True, "engines": sorted({v.engine for v in train_v}),
            "train_voices": [v.id for v in train_v], "eval_voices": [v.id for v in eval_v],
            "espeak_variants": len(variants), "train_renders": counts(train_r), "eval_renders": counts(eval_r),
            "train_audio_s": round(sum(r.audio.size for r in train_r) / SR, 1),
            "policy": "espeak-ng (stock and random variants, mbrola through it), pico2wave and RHVoice (its CMU "
                      "ARCTIC speakers left out) speech, WORLD transforms of it, generated noise and reverb, "
                      "datasets/real_speech as other talk; no evaluation-only or reserved engine or sound"}


def _write_cards(out: Path, card: dict) -> None:
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    ev = card.get("evaluation", {})
    for name, m in card["models"].items():
        per = {"phrase": card["phrase"], **m}
        if name in ev:
            per["evaluation"] = ev[name]
            per["detector"] = {"threshold": ev[name]["threshold"]}
        (out / f"{name}.json").write_text(json.dumps(per, indent=2) + "\n")
