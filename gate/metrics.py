"""Detection metrics against labelled scenarios: pure functions of detection times and labels.

A wake word is a ``wake`` span (a ``wake_command`` event labels its wake word with one too; a
``wake_command`` span with no ``wake`` span inside it is taken whole). A detection hits a wake word
when it fires inside ``[start_s - early_s, end_s + late_s]``: the KWS fires at the end of its
window, so some lateness is normal, and a little earliness covers a word whose tail the model did
not need. Each wake word is hit at most once; further detections inside a wake word's window are
``duplicates`` (the refractory period should prevent them), not false accepts.

False accepts per hour are counted over the audio outside the wake words' windows, the time in
which a false accept was possible at all (openWakeWord and the Picovoice benchmark do the same).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gate.kws.detector import Detector

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


@dataclass(frozen=True, slots=True)
class Match:
    hits: tuple[tuple[int, float], ...]  # (window index, detection time)
    false_accepts: tuple[float, ...]
    duplicates: tuple[float, ...]


def match(times_s: Iterable[float], windows: Sequence[Window]) -> Match:
    """Assign detections (in time order) to wake-word windows; each window is hit at most once."""
    hits: list[tuple[int, float]] = []
    fas: list[float] = []
    dups: list[float] = []
    used: set[int] = set()
    for t in sorted(times_s):
        inside = [i for i, w in enumerate(windows) if w.lo <= t <= w.hi]
        free = [i for i in inside if i not in used]
        if free:
            used.add(free[0])
            hits.append((free[0], t))
        elif inside:
            dups.append(t)
        else:
            fas.append(t)
    return Match(tuple(hits), tuple(fas), tuple(dups))


def non_wake_seconds(windows: Sequence[Window], audio_s: float) -> float:
    """Audio outside every wake-word window (overlapping windows counted once)."""
    covered, end = 0.0, -math.inf
    for w in sorted(windows, key=lambda w: w.lo):
        lo, hi = max(w.lo, end, 0.0), min(w.hi, audio_s)
        if hi > lo:
            covered += hi - lo
        end = max(end, w.hi)
    return max(0.0, audio_s - covered)


def score(detections: Mapping[str, Iterable[float]], streams: Mapping[str, tuple[Sequence[Window], float]]) -> dict:
    """Metrics over several streams. ``detections``: path -> detection times; ``streams``: path ->
    (wake windows, audio seconds). Detections on a path without labels are ignored."""
    keywords = hits = fas = dups = 0
    non_wake_s = 0.0
    latencies: list[float] = []
    for path, (windows, audio_s) in streams.items():
        m = match(detections.get(path, ()), windows)
        keywords += len(windows)
        hits += len(m.hits)
        fas += len(m.false_accepts)
        dups += len(m.duplicates)
        non_wake_s += non_wake_seconds(windows, audio_s)
        latencies.extend(t - windows[i].end_s for i, t in m.hits)
    hours = non_wake_s / 3600.0
    lat = np.asarray(latencies, np.float64)
    return {
        "keywords": keywords,
        "true_accepts": hits,
        "misses": keywords - hits,
        "miss_rate": (keywords - hits) / keywords if keywords else None,
        "false_accepts": fas,
        "duplicates": dups,
        "non_wake_hours": hours,
        "fa_per_hour": fas / hours if hours else None,
        "latency_s": {
            "mean": float(lat.mean()) if lat.size else None,
            "median": float(np.median(lat)) if lat.size else None,
            "p90": float(np.percentile(lat, 90)) if lat.size else None,
            "max": float(lat.max()) if lat.size else None,
        },
    }


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
