"""The training run's data: what the corpus says (plans), its renders (cached between runs), the wake
clips and the scene-like streams the verifier and the tiny models learn from.

Every draw comes from a named step's generator (cloud.train.seeds), so a recipe and seed give the same
data whichever models a run trains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cloud.train import corpus, dataset, scenes
from cloud.train.recipe import Recipe
from cloud.train.seeds import step_rng
from gate.kws.featurize import Featurizer
from sensors.synth.tts import Utterance


def cached_renders(cache: Path, what: str, items: list[tuple[str, Utterance]], make):
    """Renders are the slow, model-independent part: keep them for reruns, keyed by the plan itself
    (every utterance's kind, text, voice, rate and pitch), so whatever changes what would be said
    (recipe, seed, installed voices) makes new renders, and nothing else does. Renders cached in the
    layout before SpeechRender read back migrated (corpus.load_renders)."""
    plan = [[kind, u.text, u.voice.id, u.rate, u.pitch] for kind, u in items]
    key = hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]
    path = cache / f"renders-{what}-{key}.pkl"
    if path.is_file():
        with path.open("rb") as f:
            return corpus.load_renders(f)
    renders = make()
    if renders is None:
        return None
    corpus.save_renders(path, renders)
    return renders


def train_plan(recipe: Recipe, es=None) -> tuple[list, list, dict[str, str]]:
    """What the training corpus says, by which voice (every draw made here, from the seed), with the
    accent voices used and those skipped (and why)."""
    c = recipe.corpus
    es = es or corpus.with_random_variants(corpus.engines(c.engines), c.random_variants, c.random_variant_seed)
    train_v = corpus.split_voices(es, c.eval_voices, c.exclude_voices)[0]
    accents, skipped = corpus.accent_voices(c.accents)
    items = corpus.plan(recipe.phrase, voices=train_v, variants=list(es.variants), rng=step_rng(recipe.seed, "plan"),
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
    return corpus.plan(recipe.phrase, voices=eval_voices, variants=[], rng=step_rng(recipe.seed, "eval"),
                       n_pos=ev.positive_renders, n_conf=ev.confusable_renders, n_speech=ev.speech_renders,
                       n_cmd=ev.command_renders, rate=c.rate_wpm, pitch=c.pitch)


def synthesised(recipe: Recipe, cache: Path, what: str, items: list):
    """The renders of ``items`` (the ``what`` plan: "train" or "eval"), from ``cache`` when they are there."""
    return cached_renders(cache, what, items, lambda: corpus.synthesise(items, workers=recipe.corpus.workers,
                                                                       desc=f"synth {what}"))


def make_scene(recipe: Recipe, kind: str, renders: list[corpus.SpeechRender], minutes: float, step: str, *,
               positive_kinds: tuple[str, ...] = ("positive",), **options) -> scenes.Scene:
    """A scene of ``renders`` at the evaluation's densities; ``options`` override them (training streams)."""
    ev = recipe.evaluation
    options = {"keywords_per_hour": ev.keywords_per_hour, "confusables_per_hour": ev.confusables_per_hour,
               **options}
    return scenes.build(kind, minutes=minutes, rng=step_rng(recipe.seed, step + kind),
                        positives=[r for r in renders if r.kind in positive_kinds],
                        others=[r for r in renders if r.kind == "speech"],
                        commands=[r for r in renders if r.kind == "command"],
                        confusables=[r for r in renders if r.kind == "confusable"], **options)


@dataclass
class Renders:
    """A run's synthesised speech and the background talk pools drawn from it."""

    train: list
    eval: list
    cache: Path

    @property
    def babble(self) -> list[np.ndarray]:
        return [r.audio for r in self.train if r.kind == "speech"][:400]

    @property
    def eval_babble(self) -> list[np.ndarray]:
        return [r.audio for r in self.eval if r.kind == "speech"]


@dataclass
class WakeData:
    """What the binary models (verifier v1, v2 and the tiny models) learn from: wake clips of training
    voices split into train and validation, test clips of held-out voices, and the training streams."""

    clips: dataset.Clips
    test: dataset.Clips
    tr_idx: np.ndarray
    val_idx: np.ndarray
    streams: StreamFeatures

    def card(self) -> dict:
        return {"train": int(self.tr_idx.size), "val": int(self.val_idx.size),
                "test_heldout_voices": len(self.test),
                "positives_train": int(self.clips.labels[self.tr_idx].sum()),
                "positives_test": int(self.test.labels.sum())}

    def streams_card(self) -> dict:
        ss = self.streams.recipe.streams
        return {"minutes_each": ss.minutes, "mine_minutes_each": ss.mine_minutes,
                "scenes": [s.name for s in self.streams.scenes],
                "keywords": sum(len(s.keywords) for s in self.streams.scenes)}


def wake_data(recipe: Recipe, renders: Renders) -> WakeData:
    wake_r = [r for r in renders.train if r.kind != "command"]
    clips = dataset.wake_clips(wake_r, clip_s=recipe.clip_s, aug=recipe.augment, rng=step_rng(recipe.seed, "clips"),
                               babble_pool=renders.babble, noise_only=len(wake_r) // 6, desc="wake clips")
    test = dataset.wake_clips([r for r in renders.eval if r.kind != "command"], clip_s=recipe.clip_s,
                              aug=recipe.augment, rng=step_rng(recipe.seed, "test"), babble_pool=renders.eval_babble,
                              noise_only=60, desc="test clips")
    order = step_rng(recipe.seed, "split").permutation(len(clips))
    n_val = max(1, len(clips) // 10)
    stream_scenes, mine_scenes = _stream_scenes(recipe, renders.train)
    return WakeData(clips, test, tr_idx=order[n_val:], val_idx=order[:n_val],
                    streams=StreamFeatures(recipe, stream_scenes, mine_scenes))


def _stream_scenes(recipe: Recipe, train_r: list[corpus.SpeechRender]) -> tuple[list, list]:
    """Training streams and hard-negative mining streams: scene kinds of the evaluation, training voices."""
    ss = recipe.streams
    talk = []
    if ss.real_speech and (ss.minutes or ss.mine_minutes):
        from sensors import real_speech  # recorded (not synthetic) talk, negatives only

        talk = [a for _, a in real_speech.load()]

    def make(kind: str, minutes: float, step: str) -> scenes.Scene:
        # Phrases said inside a sentence are wake phrases too (the render ends where the phrase ends).
        return make_scene(recipe, kind, train_r, minutes, step, positive_kinds=("positive", "positive_ctx"),
                          keywords_per_hour=ss.keywords_per_hour, confusables_per_hour=ss.confusables_per_hour,
                          talk_gap_s=ss.talk_gap_s, level_jitter_db=ss.level_jitter_db, extra_talk=talk)

    # Streams hear the same speakers as the clips, speed-perturbed as often (one copy of each render).
    rng = step_rng(recipe.seed, "stream-perturb")
    train_r = [replace(r, audio=dataset.perturb(r.audio, rng, recipe.augment)) for r in train_r]
    kinds = recipe.evaluation.scenes
    train = [make(k, ss.minutes, "stream") for k in tqdm(kinds, desc="train streams", leave=False)
             ] if ss.minutes else []
    mine = [make(k, ss.mine_minutes, "mine") for k in kinds] if ss.mine_minutes and ss.mine_epochs else []
    return train, mine


class StreamFeatures:
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
        self._ends[kind] = dataset.sample_ends(self._streams[kind], step_rng(self.recipe.seed, "ends" + kind),
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
