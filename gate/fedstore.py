"""The node's federated-learning store: feature windows labelled by the cascade, never audio.

A segment the cloud accepted is a positive, one it rejected is a hard negative. When the node
publishes a segment it computes the tiny model's input windows around the fire (``windows_at``)
and holds them, in memory, under the segment id; the verdict labels them and moves them to a
size-capped ring on disk (oldest overwritten). Background windows (audio the model already scores
low, sampled now and then) go to a second ring capped at ``background_share`` of the capacity.
Windows are stored int8, quantized as the model's input is (so 100 x 40 frames are 4000 bytes),
and the store survives a restart: it is one ``.npz`` replaced atomically on every change.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

POSITIVE, NEGATIVE = 1, 0
# Window ends around the fire, s: the detector fires just after the phrase, so positives stay close to
# it; a rejected segment's windows are all negatives, over a wider span.
POSITIVE_OFFSETS_S = (-0.09, -0.06, -0.03, 0.0, 0.03, 0.06, 0.09)
NEGATIVE_OFFSETS_S = (-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3)
# An accepted segment also holds what its speaker said after the phrase (the command window) and the phrase
# cut short (windows ending 0.45-0.6 s before the fire hear "hey jar-"): negatives in the same voice, so the
# head learns the whole phrase, not the speaker.
AFTER_OFFSETS_S = (-0.6, -0.45, 0.8, 1.1, 1.4, 1.7, 2.0, 2.3, 2.6)
MAX_PENDING = 64  # segments awaiting a verdict; the oldest is forgotten past this
CAPACITY = 4000  # windows (100 x 40 int8: about 16 MB)
BACKGROUND_SHARE = 0.3  # of the capacity, for background windows
# Background windows, for the simulated fleet and the node alike: the model already rejects them firmly
# (near-threshold ones wait for a verdict), and no fire is within BACKGROUND_FIRE_GAP_S of them either way.
BACKGROUND_MAX_POSTERIOR = 0.2
BACKGROUND_FIRE_GAP_S = 2.0
# The node takes at most one per BACKGROUND_EVERY_S of audio (600 an audio hour, the fleet's floor of 100 in
# a 10-minute scene) and writes them BACKGROUND_BATCH at a time: each write replaces the whole store file.
BACKGROUND_EVERY_S = 6.0
BACKGROUND_BATCH = 50


@dataclass(frozen=True, slots=True)
class Quant:
    """The model input's int8 quantization (scale, zero point)."""

    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(np.asarray(x, np.float32) / self.scale) + self.zero_point, -128, 127).astype(np.int8)

    @classmethod
    def of_input(cls, model) -> Quant:
        """The int8 quantization of ``model``'s input (a ``TFLiteModel``); ValueError for any other input."""
        inp = model.input
        if np.dtype(inp.dtype) != np.int8 or not inp.scale > 0:
            raise ValueError(f"the model's input is {np.dtype(inp.dtype).name}, not quantized int8: the store "
                             "keeps windows quantized as an int8 model's input")
        return cls(float(inp.scale), int(inp.zero_point))

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, np.float32) - self.zero_point) * self.scale


def windows_at(feats: np.ndarray, end_frames: list[int], frames: int) -> np.ndarray:
    """``frames``-long windows of ``feats`` ending (exclusive) at each of ``end_frames``; windows that
    would start before the first frame are left out."""
    out = [feats[e - frames:e] for e in end_frames if frames <= e <= feats.shape[0]]
    return np.stack(out) if out else np.zeros((0, frames, feats.shape[1]), feats.dtype)


def fire_windows(featurizer, samples: np.ndarray, fire_s: float, frames: int, accepted: bool | None = None,
                 offsets_s: tuple[float, ...] | None = None) -> np.ndarray:
    """Float feature windows of a segment (``samples``) ending around its fire at ``fire_s`` into it."""
    feats = featurizer.compute(np.asarray(samples))
    if offsets_s is None:
        offsets_s = NEGATIVE_OFFSETS_S if accepted is False else POSITIVE_OFFSETS_S
    return windows_at(feats, _ends(featurizer.period_s, fire_s, offsets_s), frames)


def is_background(posterior: float, t_s: float, fires_s) -> bool:
    """Whether the window scored ``posterior`` ending at ``t_s`` may be a background window: the model scores
    it below BACKGROUND_MAX_POSTERIOR and no fire (``fires_s``, audio times) is within BACKGROUND_FIRE_GAP_S."""
    return posterior < BACKGROUND_MAX_POSTERIOR and all(abs(f - t_s) > BACKGROUND_FIRE_GAP_S for f in fires_s)


def _ends(period_s: float, fire_s: float, offsets_s: tuple[float, ...]) -> list[int]:
    return sorted({int(round((fire_s + o) / period_s)) for o in offsets_s})


class FeatureStore:
    """Labelled int8 feature windows on disk (``root/fedstore.npz``), bounded by ``capacity`` windows."""

    def __init__(self, root: str | Path, *, capacity: int, frames: int, dim: int, quant: Quant,
                 background_share: float = BACKGROUND_SHARE) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 0.0 <= background_share < 1.0:
            raise ValueError("background_share must be in [0, 1)")
        self.root = Path(root)
        self.path = self.root / "fedstore.npz"
        self.capacity = int(capacity)
        self.background_cap = int(round(capacity * background_share))
        self.labelled_cap = self.capacity - self.background_cap
        self.frames, self.dim, self.quant = int(frames), int(dim), quant
        self._after: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: OrderedDict[str, tuple[np.ndarray, int, np.ndarray | None]] = OrderedDict()
        empty = np.zeros((0, self.frames, self.dim), np.int8)
        self.x, self.y = empty, np.zeros(0, np.int8)        # labelled ring
        self.bg = empty.copy()                               # background ring (all negatives)
        self.labelled_bytes_in = 0   # audio bytes of the segments whose verdicts labelled windows here
        if self.path.is_file():
            self._load()

    # -- the node's hooks ---------------------------------------------------------------------

    def hold(self, segment_id: str, windows: np.ndarray, audio_bytes: int = 0,
             if_rejected: np.ndarray | None = None) -> None:
        """Windows of a published segment, until its verdict arrives (memory only, bounded); a rejection
        labels ``if_rejected`` instead when given (the wider span of hard negatives)."""
        rej = self._q(if_rejected) if if_rejected is not None else None
        self._pending[segment_id] = (self._q(windows), int(audio_bytes), rej)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def hold_after(self, segment_id: str, windows: np.ndarray) -> None:
        """Windows after the phrase of a held segment: negatives whichever the verdict."""
        if segment_id in self._after or segment_id in self._pending:
            self._after[segment_id] = self._q(windows)
            while len(self._after) > MAX_PENDING:
                self._after.popitem(last=False)

    def verdict(self, segment_id: str, accepted: bool) -> int:
        """Label the held windows of ``segment_id``; returns how many joined the store (0: none held)."""
        held = self._pending.pop(segment_id, None)
        after = self._after.pop(segment_id, None)
        if held is None:
            return 0
        q, audio_bytes, rej = held
        if not accepted and rej is not None:
            q = rej
        y = np.full(len(q), POSITIVE if accepted else NEGATIVE, np.int8)
        if after is not None and len(after):
            q, y = np.concatenate([q, after]), np.concatenate([y, np.full(len(after), NEGATIVE, np.int8)])
        self.add(q, y, audio_bytes=audio_bytes)
        return len(q)

    def on_verdict(self, verdict) -> int:
        """A transport ``on_verdict`` callback's body: a ``Verdict`` with ``segment_id`` and ``accepted``."""
        return self.verdict(verdict.segment_id, bool(verdict.accepted))

    # -- the store ------------------------------------------------------------------------------

    def add(self, windows: np.ndarray, labels: np.ndarray, *, audio_bytes: int = 0) -> None:
        q = self._q(windows)
        self.x = np.concatenate([self.x, q])[-self.labelled_cap:] if self.labelled_cap else self.x
        self.y = np.concatenate([self.y, np.asarray(labels, np.int8)])[-self.labelled_cap:] if self.labelled_cap \
            else self.y
        self.labelled_bytes_in += int(audio_bytes)
        self._save()

    def add_background(self, windows: np.ndarray) -> None:
        if not self.background_cap:
            return
        self.bg = np.concatenate([self.bg, self._q(windows)])[-self.background_cap:]
        self._save()

    def dataset(self) -> tuple[np.ndarray, np.ndarray]:
        """(int8 windows, labels) of every stored window, background ones as negatives."""
        x = np.concatenate([self.x, self.bg])
        y = np.concatenate([self.y, np.zeros(len(self.bg), np.int8)])
        return x, y

    def __len__(self) -> int:
        return len(self.x) + len(self.bg)

    @property
    def counts(self) -> dict[str, int]:
        return {"positives": int(np.sum(self.y == POSITIVE)), "hard_negatives": int(np.sum(self.y == NEGATIVE)),
                "background": len(self.bg), "capacity": self.capacity,
                "bytes_on_disk": self.path.stat().st_size if self.path.is_file() else 0}

    def requantize(self, quant: Quant) -> None:
        """Keep every window, stored and held, quantized as ``quant`` from now on (a new model's input)."""
        if quant == self.quant:
            return
        old, self.quant = self.quant, quant

        def conv(q: np.ndarray | None) -> np.ndarray | None:
            return None if q is None else quant.quantize(old.dequantize(q))

        self.x, self.bg = conv(self.x), conv(self.bg)
        self._pending = OrderedDict((k, (conv(q), n, conv(r))) for k, (q, n, r) in self._pending.items())
        self._after = OrderedDict((k, conv(q)) for k, q in self._after.items())
        if len(self) or self.path.is_file():
            self._save()

    def _q(self, windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows)
        if w.ndim != 3 or w.shape[1:] != (self.frames, self.dim):
            raise ValueError(f"windows of shape {w.shape[1:]}; the store keeps ({self.frames}, {self.dim})")
        return w if w.dtype == np.int8 else self.quant.quantize(w)

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        meta = {"frames": self.frames, "dim": self.dim, "scale": self.quant.scale,
                "zero_point": self.quant.zero_point, "labelled_bytes_in": self.labelled_bytes_in}
        tmp = self.path.with_suffix(".tmp.npz")
        with tmp.open("wb") as f:
            np.savez(f, x=self.x, y=self.y, bg=self.bg, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _load(self) -> None:
        with np.load(self.path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if (meta["frames"], meta["dim"]) != (self.frames, self.dim):
                raise ValueError(f"{self.path}: windows of ({meta['frames']}, {meta['dim']}), "
                                 f"the model takes ({self.frames}, {self.dim})")
            x, y, bg = z["x"], z["y"], z["bg"]
        if (meta["scale"], meta["zero_point"]) != (self.quant.scale, self.quant.zero_point):
            old = Quant(float(meta["scale"]), int(meta["zero_point"]))
            x, bg = self.quant.quantize(old.dequantize(x)), self.quant.quantize(old.dequantize(bg))
        self.x, self.y = x[-self.labelled_cap:] if self.labelled_cap else x[:0], \
            y[-self.labelled_cap:] if self.labelled_cap else y[:0]
        self.bg = bg[-self.background_cap:] if self.background_cap else bg[:0]
        self.labelled_bytes_in = int(meta.get("labelled_bytes_in", 0))


class Collector:
    """The node's side of the store: ``on_segment`` is the cascade's hook for every published segment
    (``Cascade.on_segment``), ``on_verdict`` the transport's verdict callback. Only the feature windows
    around each fire are kept; the segment's audio goes nowhere but the upload it already was.

    The two hooks run on different threads (the node's loop, the transport's worker): a lock keeps the
    store whole between them. The cascade hands a segment to the publisher before ``on_segment``, so a
    prompt cloud's verdict can come first: it is kept (bounded) until the segment's windows are held."""

    def __init__(self, store: FeatureStore, featurizer) -> None:
        self.store = store
        self.featurizer = featurizer
        self._lock = threading.Lock()
        self._early: OrderedDict[str, bool] = OrderedDict()  # verdicts that came before their segment's windows

    def on_segment(self, published) -> None:
        seg = published.segment
        fire = seg.t_detect_s - seg.t_start_s
        feats = self.featurizer.compute(np.asarray(seg.samples))  # once: every window is cut from it

        def at(offsets_s: tuple[float, ...]) -> np.ndarray:
            return windows_at(feats, _ends(self.featurizer.period_s, fire, offsets_s), self.store.frames)

        pos, neg, after = at(POSITIVE_OFFSETS_S), at(NEGATIVE_OFFSETS_S), at(AFTER_OFFSETS_S)
        sid = published.encoded.segment_id
        with self._lock:
            self.store.hold(sid, pos, audio_bytes=int(seg.samples.size) * 2, if_rejected=neg)
            self.store.hold_after(sid, after)
            if sid in self._early:
                self.store.verdict(sid, self._early.pop(sid))

    def on_verdict(self, verdict) -> int:
        """Label the segment's windows; 0 when none are held (yet: an early verdict waits for them)."""
        with self._lock:
            n = self.store.on_verdict(verdict)
            if not n:
                self._early[verdict.segment_id] = bool(verdict.accepted)
                while len(self._early) > MAX_PENDING:
                    self._early.popitem(last=False)
            return n

    def add_background(self, windows: np.ndarray) -> None:
        """Background windows (``BackgroundSampler.ready``) into the store's background ring."""
        with self._lock:
            self.store.add_background(windows)

    def follow(self, featurizer, frames: int, dim: int, quant: Quant) -> None:
        """Another model between segments (an over-the-air release, a reload): its featurizer from now on,
        and every window requantized as its input. ValueError when its windows are not the store's shape."""
        if (int(frames), int(dim)) != (self.store.frames, self.store.dim):
            raise ValueError(f"{self.store.path}: windows of ({self.store.frames}, {self.store.dim}), "
                             f"the model takes ({frames}, {dim})")
        with self._lock:
            self.featurizer = featurizer
            self.store.requantize(quant)


class BackgroundSampler:
    """The node's background windows, chosen as the audio streams by (``is_background``): a scored window
    the model rates below BACKGROUND_MAX_POSTERIOR with no fire within BACKGROUND_FIRE_GAP_S before it is
    held until BACKGROUND_FIRE_GAP_S more audio has passed without a fire, then it is ``ready``; the next
    one is taken no sooner than BACKGROUND_EVERY_S after it. Every time is audio time, events are taken in
    time order, so the windows chosen depend on neither the chunk size nor how fast the audio is fed."""

    def __init__(self, every_s: float = BACKGROUND_EVERY_S) -> None:
        self.every_s = float(every_s)
        self._next_s = -math.inf
        self._fires: deque[float] = deque()
        self._held: tuple[float, float, np.ndarray] | None = None  # (t_s, posterior, window)
        self.ready: list[tuple[float, np.ndarray]] = []  # (t_s, window) chosen, not yet in the store
        self.taken = 0

    def fire(self, t_s: float) -> None:
        """The KWS fired at ``t_s``: a held window this close to it is no background."""
        self._fires.append(float(t_s))
        if self._held is not None and not is_background(self._held[1], self._held[0], (t_s,)):
            self._held = None

    def wants(self, t_s: float, posterior: float) -> bool:
        """Whether the window scored ``posterior`` at ``t_s`` is to be held (then ``hold`` it)."""
        self.advance(t_s)
        return self._held is None and t_s >= self._next_s and is_background(posterior, t_s, self._fires)

    def hold(self, t_s: float, posterior: float, window: np.ndarray) -> None:
        self._held = (float(t_s), float(posterior), window)

    def advance(self, now_s: float) -> None:
        """The audio has reached ``now_s`` (the KWS has fired at nothing later than its last ``fire``)."""
        held = self._held
        if held is not None and now_s - held[0] > BACKGROUND_FIRE_GAP_S:
            self._held = None
            if is_background(held[1], held[0], self._fires):
                self.ready.append((held[0], held[2]))
                self.taken += 1
                self._next_s = held[0] + self.every_s
        oldest = (now_s if self._held is None else min(now_s, self._held[0])) - BACKGROUND_FIRE_GAP_S
        while self._fires and self._fires[0] < oldest:
            self._fires.popleft()

    def finish(self, end_s: float) -> None:
        """The audio ended at ``end_s``: a held window keeps its place only if the gap after it was heard."""
        self.advance(end_s)
        self._held = None


class _FrameTee:
    """A spotter's featurizer, passed through, keeping the frames it produced since its last reset that a
    window ending at a later frame may still need (the last ``keep`` of them, plus each push's)."""

    def __init__(self, featurizer, keep: int) -> None:
        self.inner = featurizer
        self.keep = int(keep)
        self.frames = np.zeros((0, featurizer.dim), np.float32)
        self.first = 0  # index (since the reset) of frames[0]
        self.count = 0  # frames produced since the reset

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def reset(self) -> None:
        self.inner.reset()
        self.frames, self.first, self.count = self.frames[:0], 0, 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        out = self.inner.push(samples)
        if out.shape[0]:
            drop = max(0, self.frames.shape[0] - self.keep)
            self.frames = np.concatenate([self.frames[drop:], out])
            self.first += drop
            self.count += out.shape[0]
        return out


class BackgroundTap:
    """The node's KWS stage (a ``KeywordSpotter``) passed through, showing ``sampler`` every window it scores
    and every fire, in audio time. Nothing is featurized twice: the tap keeps the last frames the spotter's
    own featurizer produced (memory only, never written), so a window the sampler wants is exactly the
    model's input at that instant.

    The cascade resets the KWS at every gate opening; a tap put in while the gate is open waits for the
    next opening to know where its frames start. ``failed`` is set (and sampling stops) when sampling
    raises; the KWS's own work is never affected. ``untap`` gives the spotter back as it was."""

    def __init__(self, kws, sampler: BackgroundSampler) -> None:
        self.kws = kws
        self.sampler = sampler
        self.frames = int(kws.window_frames)
        self._tee = _FrameTee(kws.featurizer, self.frames - 1)
        kws.featurizer = self._tee
        kws.keep_scores = True
        self.failed: BaseException | None = None
        self._run = False  # True once a reset told where this run's frames start
        self._t0 = 0.0

    @property
    def inferences(self) -> int:
        return self.kws.inferences

    def reset(self, t0_s: float = 0.0) -> None:
        self.kws.reset(t0_s)
        self.kws.scores = []
        self.sampler.advance(t0_s)
        self._run, self._t0 = True, float(t0_s)

    def process(self, samples: np.ndarray):
        dets = self.kws.process(samples)
        scores, self.kws.scores = self.kws.scores, []
        if self.failed is None:
            try:
                self._sample(scores, dets)
            except Exception as exc:  # noqa: BLE001 - sampling must never stop the KWS
                self.failed = exc
        return dets

    def untap(self):
        """The spotter on its own again: its own featurizer, no scores kept."""
        self.kws.featurizer = self._tee.inner
        self.kws.keep_scores = False
        self.kws.scores = []
        return self.kws

    def _sample(self, scores: list, dets: list) -> None:
        events = sorted([(d.t_s, 0, 0.0) for d in dets] + [(s.t_s, 1, s.posterior) for s in scores])
        tee = self._tee
        for t, kind, p in events:
            if kind == 0:
                self.sampler.fire(t)
            elif self._run and self.sampler.wants(t, p):
                # Frame k (since the reset) ends at t0 + frame_end_s(k); the scored window ends at frame k.
                k = int(round((t - self._t0 - float(tee.frame_end_s(0))) / tee.period_s))
                a = k + 1 - self.frames - tee.first
                if a >= 0 and k < tee.count:
                    self.sampler.hold(t, p, tee.frames[a:a + self.frames].copy())
        if self._run:
            self.sampler.advance(self._t0 + float(tee.frame_end_s(tee.count - 1)) if tee.count else self._t0)
