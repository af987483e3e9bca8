"""Fixed-length labelled clips from renders: where the wake phrase ends decides the label.

A wake clip is ``clip_s`` long and ends where the detector should fire: a positive's phrase ends
0.05-0.35 s before the clip ends, so the tiny model (the clip's last second) and the verifier (all
of it) learn from the same examples, which is what lets the verifier teach the tiny model.
Hard negatives include the phrase cut off part-way ("hey jar..."), so the model fires at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from cloud.train.corpus import SpeechRender
from cloud.train.recipe import AugmentSpec
from gate.features import LogMel
from sensors.synth import augment, voicex

SR = 16_000


@dataclass(slots=True)
class Clips:
    audio: np.ndarray   # (n, samples) float32
    labels: np.ndarray  # (n,) int: 0/1 for the wake models, class index for commands
    kinds: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: np.ndarray) -> Clips:
        return Clips(self.audio[idx], self.labels[idx], [self.kinds[i] for i in idx])


def _place(speech: np.ndarray, n: int, end_at: int) -> np.ndarray:
    """speech positioned so that it ends at sample ``end_at`` of an n-sample clip (cut at the start)."""
    out = np.zeros(n, np.float32)
    start = end_at - speech.size
    src = speech[max(0, -start):]
    a = max(0, start)
    b = min(n, a + src.size)
    out[a:b] = src[: b - a]
    return out


def perturb(audio: np.ndarray, rng: np.random.Generator, aug: AugmentSpec) -> np.ndarray:
    """Another speaker with probability ``aug.world_prob`` (WORLD: F0, vocal-tract length, breathiness),
    then speed-perturbed with probability ``aug.speed_prob``; no draw at all for a probability of 0."""
    if aug.world_prob > 0 and rng.random() < aug.world_prob:
        audio = voicex.transform(audio, rng, f0_semitones=aug.world_f0_semitones, f0_range=aug.world_f0_range,
                                 alpha=aug.world_alpha, aperiodicity_db=aug.world_aperiodicity_db)
    if aug.speed_prob > 0 and rng.random() < aug.speed_prob:
        return augment.speed(audio, rng, *aug.speed)
    return audio


def _dress(x: np.ndarray, rng: np.random.Generator, aug: AugmentSpec, babble_pool: Sequence[np.ndarray],
           speech_mask: bool = True) -> np.ndarray:
    if speech_mask and rng.random() < aug.reverb_prob:
        x = augment.reverb(x, rng)
    kind = aug.backgrounds[int(rng.integers(len(aug.backgrounds)))]
    noise = augment.background(kind, x.size, rng, babble_pool)
    if speech_mask and np.any(x):
        snr = rng.uniform(*aug.snr_db) if rng.random() < 0.85 else rng.uniform(30, 50)
        y = augment.mix(x, noise, snr)
    else:
        y = noise
    if aug.channel_prob > 0 and rng.random() < aug.channel_prob:
        y = augment.channel(y, rng)  # the microphone hears speech and room alike
    lo, hi = aug.gain_db
    peak = rng.uniform(lo, hi) - 3.0
    if not np.any(x):
        peak -= rng.uniform(0, 30)  # background-only clips span quiet rooms too
    return augment.set_peak(y, peak)


def wake_clips(renders: Sequence[SpeechRender], *, clip_s: float, aug: AugmentSpec, rng: np.random.Generator,
               babble_pool: Sequence[np.ndarray], noise_only: int, desc: str = "clips") -> Clips:
    n = int(round(clip_s * SR))
    xs: list[np.ndarray] = []
    ys: list[int] = []
    kinds: list[str] = []
    for r in tqdm(renders, desc=desc, unit="utt", leave=False):
        positive = r.kind.startswith("positive")
        for _ in range(aug.copies):
            audio = perturb(r.audio, rng, aug)
            if positive:
                end = n - int(rng.uniform(0.05, 0.35) * SR)
                xs.append(_dress(_place(audio, n, end), rng, aug, babble_pool))
                ys.append(1)
                kinds.append(r.label)
            else:
                end = int(rng.uniform(0.5, 1.0) * n) if rng.random() < 0.5 else n - int(rng.uniform(0, 0.3) * SR)
                xs.append(_dress(_place(audio, n, end), rng, aug, babble_pool))
                ys.append(0)
                kinds.append(r.label)
        if r.kind == "positive" and rng.random() < 0.5:
            cut = r.audio[: int(r.audio.size * rng.uniform(0.4, 0.75))]
            xs.append(_dress(_place(cut, n, n - int(rng.uniform(0.0, 0.2) * SR)), rng, aug, babble_pool))
            ys.append(0)
            kinds.append("partial")
    for _ in range(noise_only):
        xs.append(_dress(np.zeros(n, np.float32), rng, aug, babble_pool, speech_mask=False))
        ys.append(0)
        kinds.append("noise")
    return Clips(np.stack(xs), np.asarray(ys, np.int64), kinds)


def command_clips(renders: Sequence[SpeechRender], class_names: Sequence[str], *, clip_s: float, aug: AugmentSpec,
                  rng: np.random.Generator, babble_pool: Sequence[np.ndarray], noise_only: int,
                  desc: str = "command clips", start_s: tuple[float, float] = (0.0, 0.3)) -> Clips:
    """Command after the wake word: the utterance starts ``start_s`` into the clip (a negative start cuts
    its beginning off, as when the node fires after the command began). Last classes: unknown, silence."""
    n = int(round(clip_s * SR))
    index = {c: i for i, c in enumerate(class_names)}
    unknown, silence = index["_unknown"], index["_silence"]
    xs, ys, kinds = [], [], []
    for r in tqdm(renders, desc=desc, unit="utt", leave=False):
        label = index.get(r.command, unknown) if r.kind == "command" else unknown
        copies = aug.copies
        for _ in range(copies):
            start = int(rng.uniform(*start_s) * SR)
            x = r.audio[max(0, -start):][: n - max(0, start)]
            xs.append(_dress(_place(x, n, max(0, start) + x.size), rng, aug, babble_pool))
            ys.append(label)
            kinds.append(r.label)
    for _ in range(noise_only):
        xs.append(_dress(np.zeros(n, np.float32), rng, aug, babble_pool, speech_mask=False))
        ys.append(silence)
        kinds.append("noise")
    return Clips(np.stack(xs), np.asarray(ys, np.int64), kinds)


def command_windows(scene, class_names: Sequence[str], *, clip_s: float, rng: np.random.Generator,
                    delay_s: tuple[float, float] = (0.05, 0.35)) -> Clips:
    """Command windows as the cloud reads them in a scene: from the node's fire time (the phrase's end plus
    the detector's delay) on, labelled with the command said; and as many from around the start of other
    talk, labelled unknown. Same rooms, levels and reverb as the scene, so the recogniser meets them in training."""
    n = int(round(clip_s * SR))
    index = {c: i for i, c in enumerate(class_names)}

    def cut(t: float) -> np.ndarray:  # only the window is converted to float, not the whole scene
        a = max(0, int(t * SR))
        x = scene.audio[a:a + n].astype(np.float32) / np.float32(32768.0)
        return np.pad(x, (0, n - x.size)) if x.size < n else x

    xs, ys, kinds = [], [], []
    for (_, end), said in zip(scene.keywords, scene.keyword_commands, strict=True):
        xs.append(cut(end + rng.uniform(*delay_s)))
        ys.append(index.get(said, index["_unknown"]))
        kinds.append(f"scene_command:{said}")
    talk = [a for kind, a, _ in scene.events if kind == "speech"]
    for k in rng.permutation(len(talk))[:len(scene.keywords)]:
        xs.append(cut(talk[k] + rng.uniform(-0.3, 0.3)))
        ys.append(index["_unknown"])
        kinds.append("scene_speech")
    return Clips(np.stack(xs), np.asarray(ys, np.int64), kinds)


def concat(parts: Sequence[Clips]) -> Clips:
    return Clips(np.concatenate([c.audio for c in parts]), np.concatenate([c.labels for c in parts]),
                 [k for c in parts for k in c.kinds])


def featurize(clips: Clips, featurizer, frames: int, desc: str = "features") -> np.ndarray:
    """(n, frames, dim) float32: the last ``frames`` feature frames of every clip."""
    out = np.zeros((len(clips), frames, featurizer.dim), np.float32)
    for i in tqdm(range(len(clips)), desc=desc, unit="clip", leave=False):
        f = featurizer.compute(clips.audio[i])
        if f.shape[0] < frames:
            raise ValueError(f"clip gives {f.shape[0]} feature frames, model needs {frames}")
        out[i] = f[-frames:]
    return out


class VtlpLogMel:
    """A log-mel featuriser whose mel bank is warped per clip (vocal-tract-length perturbation) for a share
    ``prob`` of the clips, with a factor drawn uniformly from ``alpha``; the others get the node's bank.
    Banks are kept per factor rounded to 0.005, so a run builds at most a few dozen."""

    def __init__(self, rng: np.random.Generator, prob: float, alpha: tuple[float, float]) -> None:
        self._rng, self._prob, self._alpha = rng, prob, alpha
        self._banks: dict[float, LogMel] = {1.0: LogMel()}
        self.dim = self._banks[1.0].n_mels

    def compute(self, samples: np.ndarray) -> np.ndarray:
        a = 1.0
        if self._rng.random() < self._prob:
            a = round(float(self._rng.uniform(*self._alpha)) / 0.005) * 0.005
        if a not in self._banks:
            self._banks[a] = LogMel(warp=a)
        return self._banks[a].compute(samples)


@dataclass(slots=True)
class Stream:
    """One long stream's features and where its labelled windows end (row index, exclusive)."""

    feats: np.ndarray     # (rows, dim) float32
    pos_ends: np.ndarray  # window ends that should fire: just after a wake phrase
    neg_ends: np.ndarray  # every window end that must not fire (outside the phrase's firing zone)


def stream(scene, featurizer, *, fire_after_s: tuple[float, float] = (0.05, 0.35),
           quiet_before_s: float = 0.2, quiet_after_s: float = 1.0) -> Stream:
    """Label every window of a scene as the detector will meet it in use.

    Windows ending ``fire_after_s`` after a wake phrase ends are positives. Windows ending from
    ``quiet_before_s`` before a phrase ends to ``quiet_after_s`` after are neither (the phrase is
    nearly or just heard; smoothing and refractory decide there). All other windows are negatives,
    including the ones that end inside the phrase, so that the model fires only once it has heard all of it.
    """
    feats = featurizer.compute(scene.audio.astype(np.float32) / 32768.0)
    ends_s = featurizer.frame_end_s(np.arange(feats.shape[0]))
    rows = np.arange(feats.shape[0]) + 1          # a window ending at row r (exclusive) ends at ends_s[r - 1]
    pos = np.zeros(rows.size, bool)
    skip = np.zeros(rows.size, bool)
    for _a, b in scene.keywords:
        pos |= (ends_s >= b + fire_after_s[0]) & (ends_s <= b + fire_after_s[1])
        skip |= (ends_s >= b - quiet_before_s) & (ends_s <= b + quiet_after_s)
    return Stream(feats, rows[pos], rows[~skip])


def windows(feats: np.ndarray, ends: np.ndarray, frames: int) -> np.ndarray:
    """(n, frames, dim) windows of ``feats`` ending at each row in ``ends`` (exclusive)."""
    idx = np.asarray(ends)[:, None] - frames + np.arange(frames)[None, :]
    return feats[idx]


def sample_ends(streams: Sequence[Stream], rng: np.random.Generator, *, frames: int, pos_every: int,
                neg_every: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stream, the (positive, negative) window ends to train on: every ``pos_every``-th positive
    end and a random ``1/neg_every`` of the negative ones, all with at least ``frames`` rows behind them."""
    out = []
    for s in streams:
        pos = s.pos_ends[s.pos_ends >= frames][:: max(1, pos_every)]
        neg = s.neg_ends[s.neg_ends >= frames]
        out.append((pos, neg[rng.random(neg.size) < 1.0 / neg_every]))
    return out


def gather(streams: Sequence[Stream], ends: Sequence[tuple[np.ndarray, np.ndarray]],
           frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``frames`` rows at the sampled ends, and their 0/1 labels."""
    xs, ys = [], []
    for s, (pos, neg) in zip(streams, ends, strict=True):
        xs += [windows(s.feats, pos, frames), windows(s.feats, neg, frames)]
        ys += [np.ones(pos.size, np.float32), np.zeros(neg.size, np.float32)]
    return np.concatenate(xs), np.concatenate(ys)


def mine(predict, streams: Sequence[Stream], frames: int, *, stride: int, threshold: float, limit: int,
         chunk: int = 8192) -> np.ndarray:
    """Hard negatives: the windows (every ``stride``-th negative end, as the node would run) that
    ``predict`` scores at or above ``threshold``; the ``limit`` highest-scoring ones."""
    found: list[tuple[float, int, int]] = []
    for si, s in enumerate(streams):
        ends = s.neg_ends[s.neg_ends >= frames][::stride]
        for a in range(0, ends.size, chunk):
            e = ends[a:a + chunk]
            p = np.asarray(predict(windows(s.feats, e, frames))).reshape(-1)
            found += [(float(p[i]), si, int(e[i])) for i in np.flatnonzero(p >= threshold)]
    found.sort(reverse=True)
    found = found[:limit]
    if not found:
        return np.zeros((0, frames, streams[0].feats.shape[1] if streams else 0), np.float32)
    return np.concatenate([windows(streams[si].feats, np.array([e]), frames) for _, si, e in found])
