"""Audio units on the audio clock.

Every time in gate is an *audio* time: seconds of samples seen since the stream started. Nothing
reads the wall clock, so a replay at 1000x real time gives exactly the answers of a live run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2  # bytes per int16 sample


def frozen_int16(samples: object, what: str) -> np.ndarray:
    """``samples`` as a read-only 1-D int16 array (copied if the caller could still write to it),
    so a frozen audio value cannot change after it is made."""
    if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
        raise TypeError(f"{what} must be a 1-D int16 numpy array")
    if samples.flags.writeable:
        samples = samples.copy()
        samples.flags.writeable = False
    return samples


@dataclass(frozen=True, slots=True)
class Frame:
    """A fixed block of mono int16 samples and where it sits on the audio clock."""

    samples: np.ndarray
    sample_rate: int
    seq: int
    t0_s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", frozen_int16(self.samples, "Frame.samples"))
        if self.sample_rate <= 0:
            raise ValueError(f"Frame.sample_rate must be positive, got {self.sample_rate}")

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate

    @property
    def t1_s(self) -> float:
        return self.t0_s + self.duration_s

    @property
    def nbytes(self) -> int:
        return self.n_samples * SAMPLE_WIDTH

    def as_float(self) -> np.ndarray:
        """Samples scaled to [-1, 1) as float32."""
        return self.samples.astype(np.float32) / 32768.0


@dataclass(slots=True)
class Framer:
    """Accepts chunks of any size, keeps the remainder, and emits fixed-size frames.

    Frame times come from the count of samples emitted, not from summing float durations,
    so the clock never drifts however long the stream runs.
    """

    frame_samples: int
    sample_rate: int = SAMPLE_RATE
    _buf: np.ndarray = field(init=False, repr=False)
    _seq: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {self.frame_samples}")
        self._buf = np.zeros(0, dtype=np.int16)

    def push(self, chunk: np.ndarray) -> list[Frame]:
        chunk = np.asarray(chunk)
        if chunk.dtype != np.int16 or chunk.ndim != 1:
            raise TypeError("Framer.push expects a 1-D int16 array")
        buf = np.concatenate([self._buf, chunk]) if self._buf.size else chunk
        n = buf.shape[0] // self.frame_samples
        frames = [self._emit(buf[i * self.frame_samples:(i + 1) * self.frame_samples]) for i in range(n)]
        self._buf = buf[n * self.frame_samples:].copy()
        return frames

    def flush(self) -> list[Frame]:
        """Emit what is left, zero-padded to a whole frame (nothing if empty)."""
        if not self._buf.size:
            return []
        pad = np.zeros(self.frame_samples - self._buf.size, dtype=np.int16)
        frame = self._emit(np.concatenate([self._buf, pad]))
        self._buf = np.zeros(0, dtype=np.int16)
        return [frame]

    def reset(self) -> None:
        self._buf = np.zeros(0, dtype=np.int16)
        self._seq = 0

    @property
    def pending_samples(self) -> int:
        return int(self._buf.size)

    def _emit(self, samples: np.ndarray) -> Frame:
        t0 = self._seq * self.frame_samples / self.sample_rate
        frame = Frame(samples=samples.copy(), sample_rate=self.sample_rate, seq=self._seq, t0_s=t0)
        self._seq += 1
        return frame


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """Clip float audio in [-1, 1] to int16 (the ADC's full scale)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)
