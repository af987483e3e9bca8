"""Gate events on the audio clock and the pure metrics computed from them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True, slots=True)
class GateEvent:
    """The gate opened or closed at audio time ``t_s`` (seconds of audio since the stream began)."""

    kind: Literal["open", "close"]
    t_s: float


def edges(gate: np.ndarray, was_open: bool, tick_times_s: np.ndarray) -> tuple[GateEvent, ...]:
    """Events at the ticks where ``gate`` differs from the tick before (``was_open`` before the block)."""
    if gate.size == 0 or (gate[0] == was_open and (gate.all() if was_open else not gate.any())):
        return ()
    prev = np.concatenate([[was_open], gate[:-1]])
    changed = np.flatnonzero(gate != prev)
    return tuple(GateEvent("open" if gate[i] else "close", float(tick_times_s[i])) for i in changed)


def open_intervals(events: Iterable[GateEvent], end_s: float) -> list[tuple[float, float]]:
    """(open, close) pairs in audio time; a gate still open at the end closes at ``end_s``."""
    out: list[tuple[float, float]] = []
    opened: float | None = None
    for ev in events:
        if ev.kind == "open" and opened is None:
            opened = ev.t_s
        elif ev.kind == "close" and opened is not None:
            out.append((opened, ev.t_s))
            opened = None
    if opened is not None:
        out.append((opened, max(opened, end_s)))
    return out


def duty_cycle(intervals: Iterable[tuple[float, float]], total_s: float) -> float:
    """Share of ``total_s`` the gate was open (0 for an empty stream)."""
    if total_s <= 0:
        return 0.0
    return sum(b - a for a, b in intervals) / total_s
