"""Detection metrics against labelled scenarios: pure functions of detection times and labels.

A wake word is a ``wake`` span (a ``wake_command`` event labels its wake word with one too; a
``wake_command`` span with no ``wake`` span inside it is taken whole). A detection hits a wake word
when it fires inside ``[start_s - early_s, end_s + late_s]``: the KWS fires at the end of its
window, so some lateness is normal, and a little earliness covers a word whose tail the model did
not need. Each wake word is hit at most once; further detections inside a wake word's window are
``duplicates`` (the refractory period should prevent them), not false accepts.

False accepts per hour are counted over the audio outside the wake words' windows, the time in
which a false accept was possible at all (openWakeWord and the Picovoice benchmark do the same).

This is the project's one detection metric: replay reports, ``gate-node tune``, the training
pipeline's model cards, ``make compare`` and the cross-engine set all score with it. The window is
generous on the late side because the node's detector fires after the phrase (smoothing and
``min_consecutive`` add delay) and the segment it forwards still holds the whole phrase; duplicates
are not false accepts because the segmenter folds them into the segment already being collected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gate_core.detector import Detector

EARLY_S = 0.25
LATE_S = 1.0


@dataclass(frozen=True, slots=True)
class Window:
    """Where one wake word may be detected."""

    start_s: float  # the label's start and end: latency is measured from ``end_s``
    end_s: float
    early_s: float = EARLY_S
    late_s: float = LATE_S

    @property
    def lo(self) -> float:
        return self.start_s - self.early_s

    @property
    def hi(self) -> float:
        return self.end_s + self.late_s


def wake_windows(labels: Iterable, *, early_s: float = EARLY_S, late_s: float = LATE_S) -> list[Window]:
    """The wake words of one stream's labels (objects with ``start_s``, ``end_s``, ``label``), by time."""
    labels = list(labels)
    wakes = [(lab.start_s, lab.end_s) for lab in labels if lab.label == "wake"]
    for lab in labels:
        if lab.label == "wake_command" and not any(lab.start_s <= a and b <= lab.end_s for a, b in wakes):
            wakes.append((lab.start_s, lab.end_s))
    return [Window(a, b, early_s, late_s) for a, b in sorted(wakes)]


FALSE_ACCEPT = -1  # ``assign``'s answer for a detection outside every wake word's window
DUPLICATE = -2  # ... and for one inside a window another detection already hit


def assign(times_s: Sequence[float], windows: Sequence[Window]) -> np.ndarray:
    """For each detection (in the order given), the index of the wake-word window it hits,
    ``FALSE_ACCEPT`` or ``DUPLICATE``. Detections are matched in time order; each window is hit at
    most once, by the first detection inside it, and an overlap goes to the earlier free window."""
    times = np.asarray(times_s, np.float64).reshape(-1)
    out = np.full(times.size, FALSE_ACCEPT, np.int64)
    used: set[int] = set()
    for k in np.argsort(times, kind="stable"):
        t = times[k]
        inside = [i for i, w in enumerate(windows) if w.lo <= t <= w.hi]
        free = [i for i in inside if i not in used]
        if free:
            used.add(free[0])
            out[k] = free[0]
        elif inside:
            out[k] = DUPLICATE
    return out


@dataclass(frozen=True, slots=True)
class Match:
    hits: tuple[tuple[int, float], ...]  # (window index, detection time)
    false_accepts: tuple[float, ...]
    duplicates: tuple[float, ...]


def match(times_s: Iterable[float], windows: Sequence[Window]) -> Match:
    """Assign detections (in time order) to wake-word windows; each window is hit at most once."""
    times = sorted(times_s)
    a = assign(times, windows)
    return Match(tuple((int(j), t) for t, j in zip(times, a, strict=True) if j >= 0),
                 tuple(t for t, j in zip(times, a, strict=True) if j == FALSE_ACCEPT),
                 tuple(t for t, j in zip(times, a, strict=True) if j == DUPLICATE))


def non_wake_seconds(windows: Sequence[Window], audio_s: float) -> float:
    """Audio outside every wake-word window (overlapping windows counted once)."""
    covered, end = 0.0, -math.inf
    for w in sorted(windows, key=lambda w: w.lo):
        lo, hi = max(w.lo, end, 0.0), min(w.hi, audio_s)
        if hi > lo:
            covered += hi - lo
        end = max(end, w.hi)
    return max(0.0, audio_s - covered)


@dataclass(frozen=True, slots=True)
class Score:
    """One stream's (or several streams') counts under the rule above."""

    keywords: int
    hits: int
    false_accepts: int
    duplicates: int
    non_wake_hours: float

    @property
    def miss_rate(self) -> float:
        return 1.0 - self.hits / self.keywords if self.keywords else 0.0

    @property
    def fa_per_hour(self) -> float:
        return self.false_accepts / self.non_wake_hours if self.non_wake_hours > 0 else 0.0

    def as_dict(self) -> dict:
        return {"keywords": self.keywords, "hits": self.hits, "false_accepts": self.false_accepts,
                "duplicates": self.duplicates, "non_wake_hours": round(self.non_wake_hours, 4),
                "miss_rate": round(self.miss_rate, 4), "fa_per_hour": round(self.fa_per_hour, 3)}


def stream_score(times_s: Sequence[float], windows: Sequence[Window], audio_s: float) -> Score:
    """Score detection times on one stream of ``audio_s`` seconds with these wake-word windows."""
    return _counted(assign(times_s, windows), windows, audio_s)


def _counted(a: np.ndarray, windows: Sequence[Window], audio_s: float) -> Score:
    """The Score of one stream whose detections ``assign`` already matched (``a``)."""
    return Score(keywords=len(windows), hits=int(np.sum(a >= 0)), false_accepts=int(np.sum(a == FALSE_ACCEPT)),
                 duplicates=int(np.sum(a == DUPLICATE)), non_wake_hours=non_wake_seconds(windows, audio_s) / 3600.0)


def combine(scores: Iterable[Score]) -> Score:
    scores = list(scores)
    return Score(sum(s.keywords for s in scores), sum(s.hits for s in scores), sum(s.false_accepts for s in scores),
                 sum(s.duplicates for s in scores), sum(s.non_wake_hours for s in scores))


def score(detections: Mapping[str, Iterable[float]], streams: Mapping[str, tuple[Sequence[Window], float]]) -> dict:
    """Metrics over several streams. ``detections``: path -> detection times; ``streams``: path ->
    (wake windows, audio seconds). Detections on a path without labels are ignored."""
    parts: list[Score] = []
    latencies: list[float] = []
    for path, (windows, audio_s) in streams.items():
        times = sorted(detections.get(path, ()))
        a = assign(times, windows)
        parts.append(_counted(a, windows, audio_s))
        latencies.extend(t - windows[j].end_s for t, j in zip(times, a, strict=True) if j >= 0)
    total = combine(parts)
    lat = np.asarray(latencies, np.float64)
    hours = total.non_wake_hours
    return {
        "keywords": total.keywords,
        "true_accepts": total.hits,
        "misses": total.keywords - total.hits,
        "miss_rate": total.miss_rate if total.keywords else None,
        "false_accepts": total.false_accepts,
        "duplicates": total.duplicates,
        "non_wake_hours": hours,
        "fa_per_hour": total.false_accepts / hours if hours else None,
        "latency_s": {
            "mean": float(lat.mean()) if lat.size else None,
            "median": float(np.median(lat)) if lat.size else None,
            "p90": float(np.percentile(lat, 90)) if lat.size else None,
            "max": float(lat.max()) if lat.size else None,
        },
    }


# ----------------------------------------------------------------------------- labelled spans
# Scenes built in memory (training, cloud.compare, the cross-engine set) label their wake words as
# (start_s, end_s) spans; they are scored with the same windows and the same rule.


def span_windows(spans: Iterable[tuple[float, float]]) -> list[Window]:
    return [Window(float(a), float(b)) for a, b in spans]


def span_score(times_s: Sequence[float], spans: Sequence[tuple[float, float]], audio_hours: float) -> Score:
    """``stream_score`` for a scene of ``audio_hours`` whose wake words are ``spans``."""
    return stream_score(times_s, span_windows(spans), audio_hours * 3600.0)


def span_assign(times_s: Sequence[float], spans: Sequence[tuple[float, float]]) -> np.ndarray:
    return assign(times_s, span_windows(spans))


def false_accept_times(times_s: Sequence[float], spans: Sequence[tuple[float, float]]) -> list[float]:
    """The detections that are false accepts (duplicates on a hit wake word are not)."""
    return [t for t, j in zip(times_s, span_assign(times_s, spans), strict=True) if j == FALSE_ACCEPT]


def by_voice(times_s: Sequence[float], spans: Sequence[tuple[float, float]], voices: Sequence[str]) -> dict:
    """Wake phrases and hits per speaking voice (``voices[j]`` says phrase ``j``): where the misses are."""
    if len(voices) != len(spans):
        raise ValueError(f"{len(voices)} voices for {len(spans)} wake phrases")
    hit = np.zeros(len(spans), bool)
    a = span_assign(times_s, spans)
    hit[a[a >= 0]] = True
    out: dict[str, list[int]] = {}
    for v, h in zip(voices, hit, strict=True):
        k = out.setdefault(v, [0, 0])
        k[0] += 1
        k[1] += int(h)
    return {v: (k, h) for v, (k, h) in sorted(out.items())}


def false_accept_sources(times_s: Sequence[float], spans: Sequence[tuple[float, float]], what_at) -> dict[str, int]:
    """False accepts counted by what was playing when each fired (``what_at(t)``: speech, confusable, ...)."""
    out: dict[str, int] = {}
    for t in false_accept_times(times_s, spans):
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


# ----------------------------------------------------------------------------- threshold sweeps


def hold(times_s: Iterable[float], hold_s: float) -> list[float]:
    """Detections the segmenter would act on: one arriving while a segment is still being collected
    (within ``hold_s`` of the detection that opened it) is suppressed, as gate.segmenter does."""
    out: list[float] = []
    for t in sorted(times_s):
        if not out or t >= out[-1] + hold_s:
            out.append(t)
    return out


def segment_hold_s(segmenter: Any) -> float:
    """How long after a detection its segment is collected: the command window, unless capped."""
    return max(0.0, min(segmenter.command_window_s,
                        segmenter.max_segment_s - segmenter.preroll_s - segmenter.keyword_s))


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """The detector's state machine, minus the threshold being swept, and the segmenter's hold."""

    smoothing_s: float
    min_consecutive: int
    refractory_s: float
    period_s: float
    hold_s: float = 0.0

    def build(self, threshold: float) -> Detector:
        return Detector(threshold=threshold, smoothing_s=self.smoothing_s, min_consecutive=self.min_consecutive,
                        refractory_s=self.refractory_s, period_s=self.period_s)


def trace_detections(runs: Iterable[Mapping], params: DetectorParams, threshold: float) -> dict[str, list[float]]:
    """Detection times per path from recorded posterior runs, as the node's detector would fire at
    ``threshold``. A run is one uninterrupted stretch of inferences (``path``, ``t0_s`` of its first
    posterior, ``p``): the detector starts fresh at each, as the KWS does at each gate opening."""
    out: dict[str, list[float]] = {}
    for run in runs:
        p = np.asarray(run["p"], np.float64)
        t = run["t0_s"] + params.period_s * np.arange(p.size)
        dets = params.build(threshold).run(p, t)
        out.setdefault(run["path"], []).extend(d.t_s for d in dets)
    return {path: hold(times, params.hold_s) for path, times in out.items()}


def default_thresholds(n: int = 49) -> list[float]:
    """Even steps of the logit from -5 to 7 (0.0067 to 0.99909): dense near both ends, where posteriors
    bunch up. The top steps matter for a model with a logit output (gate.kws.stage.outputs_logits);
    a sigmoid-output int8 model cannot score above 255/256 = 0.996."""
    x = np.linspace(-5.0, 7.0, n)
    return [round(float(v), 5) for v in 1.0 / (1.0 + np.exp(-x))]


def det_curve(runs: Sequence[Mapping], params: DetectorParams, streams: Mapping[str, tuple[Sequence[Window], float]],
              thresholds: Sequence[float] | None = None) -> list[dict]:
    """Miss rate and FA/hour at each threshold, from recorded traces (no audio is re-run)."""
    rows = []
    for th in thresholds if thresholds is not None else default_thresholds():
        m = score(trace_detections(runs, params, th), streams)
        rows.append({"threshold": th, "miss_rate": m["miss_rate"], "fa_per_hour": m["fa_per_hour"],
                     "true_accepts": m["true_accepts"], "false_accepts": m["false_accepts"]})
    return rows
