"""Miss rate and false accepts per hour: pure functions of detection times and labelled spans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A detection counts for a wake phrase if it lands between the phrase's start and this long after
# its end (the model fires once it has heard the end; smoothing and min_consecutive add delay).
LATE_S = 0.8


@dataclass(frozen=True, slots=True)
class Score:
    keywords: int
    hits: int
    false_accepts: int
    hours: float

    @property
    def miss_rate(self) -> float:
        return 1.0 - self.hits / self.keywords if self.keywords else 0.0

    @property
    def fa_per_hour(self) -> float:
        return self.false_accepts / self.hours if self.hours > 0 else 0.0

    def as_dict(self) -> dict:
        return {"keywords": self.keywords, "hits": self.hits, "false_accepts": self.false_accepts,
                "hours": round(self.hours, 4), "miss_rate": round(self.miss_rate, 4),
                "fa_per_hour": round(self.fa_per_hour, 3)}


def match(times_s: Sequence[float], spans: Sequence[tuple[float, float]], late_s: float = LATE_S) -> np.ndarray:
    """For each detection, the index of the wake phrase it hits, or -1 (a false accept).
    A phrase is hit at most once; extra detections on it count as false accepts."""
    taken = set()
    out = np.full(len(times_s), -1, np.int64)
    for i, t in enumerate(times_s):
        for j, (a, b) in enumerate(spans):
            if j not in taken and a <= t <= b + late_s:
                taken.add(j)
                out[i] = j
                break
    return out


def score(times_s: Sequence[float], spans: Sequence[tuple[float, float]], hours: float) -> Score:
    m = match(times_s, spans)
    hits = int(np.sum(m >= 0))
    return Score(keywords=len(spans), hits=hits, false_accepts=int(np.sum(m < 0)), hours=hours)


def combine(scores: Sequence[Score]) -> Score:
    return Score(sum(s.keywords for s in scores), sum(s.hits for s in scores),
                 sum(s.false_accepts for s in scores), sum(s.hours for s in scores))


def by_voice(times_s: Sequence[float], spans: Sequence[tuple[float, float]], voices: Sequence[str]) -> dict:
    """Wake phrases and hits per speaking voice (``voices[j]`` says phrase ``j``): where the misses are."""
    if len(voices) != len(spans):
        raise ValueError(f"{len(voices)} voices for {len(spans)} wake phrases")
    hit = np.zeros(len(spans), bool)
    m = match(times_s, spans)
    hit[m[m >= 0]] = True
    out: dict[str, list[int]] = {}
    for v, h in zip(voices, hit, strict=True):
        k = out.setdefault(v, [0, 0])
        k[0] += 1
        k[1] += int(h)
    return {v: (k, h) for v, (k, h) in sorted(out.items())}


def false_accept_sources(times_s: Sequence[float], spans: Sequence[tuple[float, float]], what_at) -> dict[str, int]:
    """False accepts counted by what was playing when each fired (``what_at(t)``: speech, confusable, ...)."""
    out: dict[str, int] = {}
    for t, j in zip(times_s, match(times_s, spans), strict=True):
        if j < 0:
            kind = what_at(t)
            out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


def merge_breakdowns(parts: Sequence[dict]) -> dict:
    """Sum per-voice (keywords, hits) pairs or per-source counts over scenes."""
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            if isinstance(v, tuple):
                a, b = out.get(k, (0, 0))
                out[k] = (a + v[0], b + v[1])
            else:
                out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def voice_table(counts: dict) -> dict:
    """JSON form of ``by_voice``: keywords, hits and miss rate per voice."""
    return {v: {"keywords": k, "hits": h, "miss_rate": round(1 - h / k, 4) if k else 0.0}
            for v, (k, h) in counts.items()}
