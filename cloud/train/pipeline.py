"""`gate-cloud train`: synthesise, train the models, quantize, evaluate, write models and cards.

The phases, in order: the data (cloud.train.data), verifier v1 (cloud.train.verifier), verifier v2
(cloud.train.verifier_v2), the command recogniser (cloud.train.commands), the tiny node models
(cloud.train.tiny), then the evaluation (cloud.train.evaluate). Order matters: the verifier is trained
first because it is the tiny model's teacher, and models trained without per-model seeds draw from the
backend's one generator in this order. Everything else random comes from one seeded generator per
step (cloud.train.seeds), so a recipe and seed rebuild the same models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cloud.train import commands, corpus, data, evaluate, fit, tiny, verifier, verifier_v2
from cloud.train.recipe import Recipe
from gate_core.cards import write_cards as _write_cards

SR = 16_000
PARTS = ("verifier", "verifier_v2", "commands", "tiny")


@dataclass
class Options:
    teacher: bool = False          # also train a tiny model on the verifier's soft labels and compare
    scene_minutes: float | None = None  # override the recipe's evaluation length (quick runs)
    threads: int = 2
    evaluate: bool = True
    only: tuple[str, ...] | None = None  # a subset of PARTS; the tiny models' teacher needs "verifier"
    cache_dir: Path | None = None  # where synthesised renders are kept between runs (default: the output dir)


@dataclass
class _Meter:
    """CPU seconds of this process (all threads) x watts per busy core: the training energy figure."""

    watts: float
    cpu0: float = field(default_factory=time.process_time)

    def report(self) -> dict:
        cpu = time.process_time() - self.cpu0
        return {"cpu_s": round(cpu, 1), "watts_per_core": self.watts, "energy_j": round(cpu * self.watts, 1),
                "energy_wh": round(cpu * self.watts / 3600, 3), "method": "process CPU time x watts per busy core"}


def run(recipe: Recipe, out: Path, opts: Options) -> dict:
    if opts.only and set(opts.only) == {"eval"}:
        card = evaluate.reevaluate(recipe, out, cache_dir=opts.cache_dir, scene_minutes=opts.scene_minutes)
        _write_cards(out, card)
        return card
    meter = _Meter(recipe.cpu_watts)
    fit.setup_tf(recipe.seed, opts.threads)
    out.mkdir(parents=True, exist_ok=True)
    card: dict = {"recipe": recipe.model_dump(mode="json"), "phrase": recipe.phrase, "seed": recipe.seed}
    parts = set(opts.only or PARTS)
    renders = _renders(recipe, opts.cache_dir or out, card)
    wake = None
    if parts & {"verifier", "verifier_v2", "tiny"}:
        wake = data.wake_data(recipe, renders)
        card["data"]["wake_clips"] = wake.card()
        card["data"]["streams"] = wake.streams_card()
    models: dict[str, dict] = {}
    teacher = teacher_v2 = None
    if "verifier" in parts:
        models["verifier"], teacher = verifier.train(recipe, out, wake)
    if "verifier_v2" in parts:
        models["verifier_v2"], teacher_v2 = verifier_v2.train(recipe, out, wake, renders.cache)
    if "commands" in parts:
        models["commands"] = commands.train(recipe, out, renders)
    tiny_cards = (tiny.train_all(recipe, out, wake, distill=opts.teacher, teacher=teacher, teacher_v2=teacher_v2)
                  if "tiny" in parts else {})
    if opts.evaluate and not tiny_cards and "verifier_v2" in parts:
        tiny_cards = evaluate.shipped_tiny(recipe)  # a verifier-only run is judged behind the shipped node models
    if opts.evaluate and tiny_cards:
        card["evaluation"] = evaluate.evaluate_scenes(recipe, out, tiny_cards, renders.eval, renders.train,
                                                      scene_minutes=opts.scene_minutes)
    card["training"] = meter.report()
    card["models"] = {**models, **{n: m for n, m in tiny_cards.items() if "shipped_path" not in m}}
    _write_cards(out, card)
    return card


def _renders(recipe: Recipe, cache: Path, card: dict) -> data.Renders:
    """The run's training and evaluation speech (synthesised once, then read from ``cache``), described in
    ``card["data"]``."""
    c = recipe.corpus
    es = corpus.with_random_variants(corpus.engines(c.engines), c.random_variants, c.random_variant_seed)
    train_v, eval_v = corpus.split_voices(es, c.eval_voices, c.exclude_voices)
    variants = list(es.variants)
    train_items, accents, accents_skipped = data.train_plan(recipe, es)
    eval_items = data.eval_plan(recipe, eval_v)
    train_r = data.synthesised(recipe, cache, "train", train_items)
    eval_r = data.synthesised(recipe, cache, "eval", eval_items)
    card["data"] = _data_card(train_r, eval_r, train_v, eval_v, variants)
    card["data"]["accents"] = {"voices": [f"{v.id}: {text}" for v, text in accents], "skipped": accents_skipped,
                               "share": c.accent_share}
    return data.Renders(train_r, eval_r, cache)


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
