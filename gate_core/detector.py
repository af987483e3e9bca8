"""Posteriors -> detections: moving-average smoothing, threshold, consecutive hits, refractory period.

Time is the audio time of each posterior, passed in; nothing here reads a clock, so a replay at any
speed fires at the same audio instants. The smoothing window and refractory period are converted
to counts of inferences once, from the inference period, so they stay exact over hours of audio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Detection:
    t_s: float        # audio time of the posterior that fired (end of the model's window)
    score: float      # smoothed posterior at that instant
    peak: float = 0.0  # highest smoothed posterior during the run of hits


class Detector:
    def __init__(self, *, threshold: float, smoothing_s: float, min_consecutive: int, refractory_s: float,
                 period_s: float) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.threshold = float(threshold)
        self.min_consecutive = int(min_consecutive)
        self.period_s = float(period_s)
        self.window = max(1, int(round(smoothing_s / period_s)))
        self.refractory_steps = int(np.ceil(refractory_s / period_s - 1e-9))
        self.reset()

    def reset(self) -> None:
        self._recent: deque[float] = deque(maxlen=self.window)
        self._run = 0
        self._peak = 0.0
        self._quiet_left = 0

    def update(self, posterior: float, t_s: float) -> Detection | None:
        self._recent.append(float(posterior))
        smooth = sum(self._recent) / len(self._recent)
        if self._quiet_left > 0:
            self._quiet_left -= 1
            return None
        if smooth >= self.threshold:
            self._run += 1
            self._peak = max(self._peak, smooth)
        else:
            self._run = 0
            self._peak = 0.0
        if self._run >= self.min_consecutive:
            det = Detection(t_s=float(t_s), score=smooth, peak=self._peak)
            self._run = 0
            self._peak = 0.0
            self._quiet_left = self.refractory_steps
            return det
        return None

    def run(self, posteriors: np.ndarray, times_s: np.ndarray) -> list[Detection]:
        """Batch form of :meth:`update` (same state machine, continues from the current state)."""
        out = []
        for p, t in zip(np.asarray(posteriors, np.float64), np.asarray(times_s, np.float64), strict=True):
            d = self.update(p, t)
            if d is not None:
                out.append(d)
        return out
