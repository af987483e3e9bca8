"""Envelope detectors, log amplifiers and adaptive noise floors, vectorised over ticks.

Each stage is a linear or order-statistic recursion whose state fits in one row, so a block of
ticks is processed at once and the row is carried to the next block: chunking never changes
the result.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter


def rc_coefficient(tau_s: float, tick_s: float) -> float:
    """Pole of an RC low-pass sampled every tick (impulse-invariant)."""
    return math.exp(-tick_s / tau_s)


class OnePole:
    """y[t] = a*y[t-1] + (1-a)*x[t] per channel; the first input primes the state.

    Priming with the first value (instead of zero) is what a circuit that has been powered and
    settled looks like, and keeps the log-domain trackers from starting 50 dB low.
    Short blocks (a live stream feeds one tick at a time) use the closed form, a small matrix
    product, because lfilter's call overhead dominates there; long blocks use lfilter.
    """

    SHORT = 32

    def __init__(self, pole: float) -> None:
        self.pole = pole
        self._b = np.array([1.0 - pole])
        self._a = np.array([1.0, -pole])
        k = np.arange(self.SHORT)
        lag = k[:, None] - k[None, :]
        # y[i] = (1-a) * sum_j a^(i-j) x[j] + a^(i+1) y[-1]
        self._impulse = np.where(lag >= 0, (1.0 - pole) * pole ** np.maximum(lag, 0), 0.0)
        self._carry = pole ** (k + 1.0)
        self.reset()

    def reset(self) -> None:
        self._last: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if n == 0:
            return x.copy()
        last = x[0] if self._last is None else self._last
        if n <= self.SHORT:
            y = self._impulse[:n, :n] @ x + self._carry[:n, None] * last[None, :]
        else:
            y, _ = lfilter(self._b, self._a, x, axis=0, zi=(self.pole * last)[None, :])
        # Computed in float64 and returned in the input's dtype, so the carried state is the same
        # whichever path a block took.
        y = y.astype(x.dtype, copy=False)
        self._last = y[-1].copy()
        return y


def to_dbfs(amplitude_sq: np.ndarray, abs_floor_dbfs: float) -> np.ndarray:
    """Log amplifier: the circuit's own noise is added in power, so readings never fall below it."""
    floor_power = 10.0 ** (abs_floor_dbfs / 10.0)
    return (10.0 * np.log10(amplitude_sq + floor_power)).astype(np.float32)


class FloorTracker:
    """Valley detector with constant upward slew in the log domain.

    floor[t] = min(slow[t], floor[t-1] + r): the floor falls at once to a quieter level and climbs
    at most r per tick. With g[t] = floor[t] - r*t this is g[t] = min(slow[t] - r*t, g[t-1]), a
    running minimum. t counts from the start of each call, so r*t stays small over hours.
    The first reading sets the floor, so noise present from power-up never opens the gate.
    """

    def __init__(self, *, smooth_pole: float, rise_per_tick_db: float) -> None:
        self._smooth = OnePole(smooth_pole)
        self.rise = rise_per_tick_db
        self.reset()

    def reset(self) -> None:
        self._smooth.reset()
        self._floor: np.ndarray | None = None

    def __call__(self, env_db: np.ndarray) -> np.ndarray:
        n = env_db.shape[0]
        if n == 0:
            return env_db.astype(np.float64)
        slow = self._smooth(env_db.astype(np.float64))
        ramp = self.rise * np.arange(n, dtype=np.float64)[:, None]
        start = np.full(slow.shape[1], np.inf) if self._floor is None else self._floor + self.rise
        g = np.minimum.accumulate(np.concatenate([start[None, :], slow - ramp]), axis=0)[1:]
        floor = g + ramp
        self._floor = floor[-1].copy()
        return floor
