"""Placing sounds over a background: the mixing primitives of the generated scenes.

``gate-data scenario`` (sensors/scenario.py) renders its streams block by block to files; the
training pipeline's labelled evaluation scenes (cloud/train/scenes.py) and the cross-engine
evaluation scenes (cloud/crossengine.py) are built whole in memory.
All lay the background down a block at a time (:func:`blocks`) and add every sound to the
samples it shares with the buffer at hand (:func:`overlay`); sounds that must be heard on their
own sit in :class:`Slots`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """[a, b) of consecutive blocks of ``size`` samples over ``n`` samples; the last may be shorter."""
    for a in range(0, n, size):
        yield a, min(n, a + size)


def overlap(a: int, b: int, start: int, end: int) -> tuple[int, int]:
    """[lo, hi), the part of [start, end) within [a, b); hi <= lo when they do not meet."""
    return max(a, start), min(b, end)


def overlay(buf: np.ndarray, x: np.ndarray, at: int, *, offset: int = 0, gain: float | None = None) -> tuple[int, int]:
    """Adds ``x``, which starts at sample ``at``, to ``buf``, which holds samples [offset, offset + buf.size),
    where the two meet (times ``gain`` when given); returns that part [lo, hi) in samples (hi <= lo: none)."""
    lo, hi = overlap(offset, offset + buf.size, at, at + x.size)
    if hi > lo:
        seg = x[lo - at:hi - at]
        buf[lo - offset:hi - offset] += seg if gain is None else gain * seg
    return lo, hi


class Slots:
    """Starts ``step`` s apart, from ``first`` s to ``tail`` s before the end of a ``seconds`` long scene, for
    sounds that must be heard on their own; a taken slot keeps 1 s before it and 6 s from its start busy."""

    def __init__(self, seconds: int, *, step: int = 8, first: int = 5, tail: int = 10) -> None:
        self.starts = np.arange(first, seconds - tail, step)
        self.busy = np.zeros(seconds + 1, bool)

    def take(self, sec: int) -> None:
        self.busy[max(0, sec - 1):sec + 6] = True

    def free(self) -> list[int]:
        """The starts no taken slot reaches."""
        return [int(s) for s in self.starts if not self.busy[max(0, s - 1):s + 6].any()]

    def reaches(self, sec: int, width: int) -> bool:
        """Whether a taken slot keeps any of the ``width`` s from second ``sec`` busy (the scene's end cuts them)."""
        return bool(self.busy[sec:sec + width].any())

    def clear(self, sec: int, width: int = 5) -> bool:
        """Whether the ``width`` s from second ``sec`` are inside the scene and outside every taken slot."""
        return sec < self.busy.size - width and not self.reaches(sec, width)
