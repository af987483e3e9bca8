"""Long labelled evaluation scenes, spoken only by held-out voices.

Built in memory from cached renders, for the training pipeline's dev and held-out scenes and
`make compare`: a room background, other speech and near-misses at random times, and the wake phrase
followed by a command at ``keywords_per_hour``. Labels are the sample spans of each wake phrase.
The mixing and placement (blocks, overlay, slots) are sensors/scenes.py's, which
`gate-data scenario` (sensors/scenario.py) also renders its files for `gate-node replay` with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cloud.train.corpus import SpeechRender
from gate_core.audio import float_to_int16
from sensors.scenes import Slots, blocks, overlay
from sensors.synth import augment

SR = 16_000
CHUNK_S = 60  # backgrounds are generated a minute at a time to bound memory

# (background RMS dBFS, speech peak dBFS range): levels a far-field mic in such rooms would see.
LEVELS = {
    "quiet_home": (-62.0, (-26.0, -8.0)),
    "noisy_kitchen": (-34.0, (-22.0, -6.0)),
    "office_babble": (-36.0, (-22.0, -6.0)),
}


@dataclass(slots=True)
class Scene:
    name: str
    audio: np.ndarray                     # int16
    keywords: list[tuple[float, float]]   # (start_s, end_s) of each wake phrase
    events: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, start_s, end_s) of every render
    keyword_voices: list[str] = field(default_factory=list)  # who says each wake phrase
    keyword_commands: list[str] = field(default_factory=list)  # the command said after each wake phrase
    keyword_snr_db: list[float] = field(default_factory=list)  # each wake phrase's SNR, where measured

    def what_at(self, t: float) -> str:
        """The kind of the last render that started at or before ``t`` and ended within 1 s before it."""
        best = "background"
        for kind, a, b in self.events:
            if a <= t <= b + 1.0:
                best = kind
        return best

    @property
    def hours(self) -> float:
        return self.audio.size / SR / 3600.0


def build(name: str, *, minutes: float, keywords_per_hour: float, rng: np.random.Generator,
          positives: Sequence[SpeechRender], others: Sequence[SpeechRender], commands: Sequence[SpeechRender],
          confusables: Sequence[SpeechRender] = (), confusables_per_hour: float = 0.0, talk_gap_s: float = 6.0,
          level_jitter_db: float = 0.0, extra_talk: Sequence[np.ndarray] = ()) -> Scene:
    """``others`` is everyday speech (about a third of the time at the default ``talk_gap_s``);
    ``confusables`` are near-misses of the phrase at ``confusables_per_hour`` (every detection on them
    counts as a false accept). Training streams vary the background level per minute by
    ``level_jitter_db`` and mix ``extra_talk`` (recorded speech) into the other talk."""
    n = int(minutes * 60 * SR)
    bg_db, (lo, hi) = LEVELS[name]
    babble_pool = [r.audio for r in others]
    out = np.zeros(n, np.float32)
    for a, b in blocks(n, CHUNK_S * SR):
        jitter = rng.uniform(-level_jitter_db, level_jitter_db) if level_jitter_db > 0 else 0.0
        out[a:b] = augment.background(name, b - a, rng, babble_pool) * 10 ** ((bg_db + jitter) / 20)

    events: list[tuple[str, float, float]] = []

    def put(x: np.ndarray, at: int, kind: str) -> tuple[int, int]:
        if rng.random() < 0.5:
            x = augment.reverb(x, rng)
        x = augment.set_peak(x, rng.uniform(lo, hi))
        at, end = overlay(out, x, at)
        events.append((kind, at / SR, end / SR))
        return at, end

    keywords: list[tuple[float, float]] = []
    voices: list[str] = []
    said: list[str] = []
    slots = Slots(int(minutes * 60))
    n_kw = min(slots.starts.size, max(1, int(round(keywords_per_hour * minutes / 60))))
    for s in np.sort(rng.choice(slots.starts, size=n_kw, replace=False)):
        kw = positives[int(rng.integers(len(positives)))]
        a, b = put(kw.audio, int(s * SR), "positive")
        keywords.append((a / SR, b / SR))
        voices.append(kw.voice_id)
        cmd = commands[int(rng.integers(len(commands)))]
        said.append(cmd.command)
        put(cmd.audio, b + int(rng.uniform(0.2, 0.6) * SR), "command")
        slots.take(s)
    # Near-misses sit in free 8 s slots, like the wake phrases, so that each is heard clearly.
    free = slots.free()
    n_conf = min(len(free), int(round(confusables_per_hour * minutes / 60))) if confusables else 0
    for sec in (rng.choice(free, size=n_conf, replace=False) if n_conf else []):
        put(confusables[int(rng.integers(len(confusables)))].audio, int(sec * SR), "confusable")
        slots.take(sec)
    # Other talk fills about a third of the time; it never overlaps a wake phrase's slot.
    talk = babble_pool + list(extra_talk)
    t = 0.0
    while t < minutes * 60 - 5:
        t += rng.exponential(talk_gap_s)
        sec = int(t)
        if not slots.clear(sec):
            continue
        r = talk[int(rng.integers(len(talk)))]
        a, b = put(r, int(t * SR), "speech")
        t = b / SR
    return Scene(name, float_to_int16(out), keywords, sorted(events, key=lambda e: e[1]), voices, said)
