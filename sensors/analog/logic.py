"""Comparators with hysteresis, the cross-channel decision, and the debounced gate with hangover.

All state is carried as the last row (comparator states) or as global tick indices (last tick the
decision was false, last tick it was confirmed), so a block of ticks is decided with cumulative
maxima instead of a loop, and the answer does not depend on how the ticks were chunked.
"""

from __future__ import annotations

import math

import numpy as np

from sensors.analog.config import DecisionConfig

_NEVER = np.int64(-(2 ** 62))  # a tick index older than any real one


class Hysteresis:
    """Per-channel Schmitt triggers: on above ``on_level``, off below ``off_level``, else hold."""

    def __init__(self, *, on_level: float, off_level: float, n_channels: int) -> None:
        if off_level > on_level:
            raise ValueError(f"off_level ({off_level}) must not exceed on_level ({on_level})")
        self.on_level = on_level
        self.off_level = off_level
        self._n = n_channels
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros(self._n, dtype=bool)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self._n), dtype=bool)
        turn_on = x > self.on_level
        settled = turn_on | (x < self.off_level)
        # Forward-fill the last tick that crossed a threshold; ticks in between hold it.
        last = np.maximum.accumulate(np.where(settled, np.arange(n)[:, None], -1), axis=0)
        filled = turn_on[np.maximum(last, 0), np.arange(self._n)[None, :]]
        out = np.where(last >= 0, filled, self.state[None, :])
        self.state = out[-1].copy()
        return out


def decide(above: np.ndarray, cfg: DecisionConfig) -> np.ndarray:
    """Combine comparator outputs (n_ticks, n_channels) into one wake decision per tick."""
    if cfg.rule == "k_of_n":
        return above.sum(axis=1) >= cfg.k
    w = np.ones(above.shape[1]) if cfg.weights is None else np.asarray(cfg.weights, dtype=np.float64)
    # Tolerance so that weights summing exactly to the threshold on paper also do in floating point.
    return above @ w >= cfg.threshold - 1e-9


def ticks_for(duration_s: float, tick_s: float) -> int:
    """Whole ticks needed to span ``duration_s`` (a hair of float slack so 0.3/0.01 gives 30)."""
    return max(0, math.ceil(duration_s / tick_s - 1e-9))


class DebouncedGate:
    """Opens once the decision has held ``min_open_ticks`` ticks in a row; closes ``hangover_ticks``
    ticks after the last tick at which that held.

    With the front end's durations rounded up to whole ticks: the gate opens at the tick where the
    decision has been true for min_open_s (one tick at least), and closes hangover_s after the
    first tick at which the decision dropped.

    A decision true for fewer ticks than the debounce neither opens the gate nor extends an open
    one: a click during the hangover does not keep the ADC awake.
    """

    def __init__(self, *, min_open_ticks: int, hangover_ticks: int) -> None:
        self.min_open_ticks = max(1, min_open_ticks)
        self.hangover_ticks = hangover_ticks
        self.reset()

    def reset(self) -> None:
        self.is_open = False
        self._last_false = np.int64(-1)  # before the stream the decision was false
        self._last_confirmed = _NEVER

    def __call__(self, decision: np.ndarray, first_tick: int) -> np.ndarray:
        n = decision.shape[0]
        if n == 0:
            return np.zeros(0, dtype=bool)
        idx = np.arange(first_tick, first_tick + n, dtype=np.int64)
        last_false = np.maximum(np.maximum.accumulate(np.where(decision, _NEVER, idx)), self._last_false)
        confirmed = idx - last_false >= self.min_open_ticks
        last_conf = np.maximum(np.maximum.accumulate(np.where(confirmed, idx, _NEVER)), self._last_confirmed)
        gate = idx - last_conf <= self.hangover_ticks
        self._last_false = last_false[-1]
        self._last_confirmed = last_conf[-1]
        self.is_open = bool(gate[-1])
        return gate
