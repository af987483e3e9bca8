"""Segmenter: pre-roll ring + wake word + command window -> one Segment, all on the audio clock.

Positions are integer sample indices of the stream (audio time = index / sample_rate), so a segment
cut from a replay at 1000x real time is the same segment, sample for sample, as one cut live.

What the pre-roll holds (see also :mod:`gate.cascade`): the ADC only runs while the analog gate
holds it awake, so the ring only ever holds audio the ADC digitised. That audio starts at the
ADC's *run start*: the instant it became ready, minus whatever the front end's always-on analog
store handed over at wake (``segmenter.analog_preroll_s``, Aspinity-style; 0 for a front end
without one). The ring never invents audio from before the run: a segment whose ideal start lies
earlier starts at the run start instead, and says so (``preroll_clipped``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from gate_core.audio import SAMPLE_WIDTH, frozen_int16
from gate_core.strict import Strict
from gate_core.wire import DEFAULT_MAX_SECONDS

EndReason = Literal["command_window", "max_length", "adc_off", "end_of_stream"]


class SegmenterConfig(Strict):
    """What the node sends after a detection: pre-roll + wake word + command window, capped."""

    preroll_s: float = Field(
        0.5, ge=0.0, le=5.0,
        description="Audio kept before the wake word begins, s (a wake-word verifier wants about 0.5 s)")
    keyword_s: float = Field(
        1.5, gt=0.0, le=5.0,
        description="Longest wake word: the KWS fires at its end, so the segment reaches back this far plus "
                    "preroll_s from the detection instant, s")
    command_window_s: float = Field(
        3.0, ge=0.0, le=30.0, description="Audio kept after the detection instant for the command, s")
    max_segment_s: float = Field(
        8.0, gt=0.0, le=DEFAULT_MAX_SECONDS, description="Hard cap on a segment's length, s")
    analog_preroll_s: float = Field(
        0.5, ge=0.0, le=5.0,
        description="Audio the front end's always-on analog store hands the ADC when it wakes (Aspinity-style "
                    "pre-roll), s; digitising it is charged to the ADC. 0 = no store: the pre-roll then holds "
                    "only audio digitised since the ADC woke")
    codec: Literal["flac", "pcm_s16le"] = Field(
        "flac", description="Audio codec of published segments (FLAC is lossless, about half the bytes of PCM)")

    @property
    def before_detection_s(self) -> float:
        """Audio a segment holds before its detection instant: the pre-roll and the longest wake word."""
        return self.preroll_s + self.keyword_s

    @property
    def segment_s(self) -> float:
        """A whole segment's length when nothing cuts it short: before the detection, the command window after."""
        return min(self.max_segment_s, self.before_detection_s + self.command_window_s)

    @model_validator(mode="after")
    def _fits(self) -> SegmenterConfig:
        if self.max_segment_s < self.preroll_s + self.keyword_s:
            raise ValueError(f"max_segment_s ({self.max_segment_s}) is shorter than preroll_s + keyword_s "
                             f"({self.preroll_s + self.keyword_s}): the cap would cut into the wake word")
        return self


@dataclass(frozen=True, slots=True)
class Segment:
    """A cut of the ADC stream around one detection. Times are audio-clock seconds of this boot."""

    samples: np.ndarray
    sample_rate: int
    start_sample: int
    detect_sample: int
    score: float
    end_reason: EndReason
    preroll_clipped: bool = False
    seq: int = 0

    def __post_init__(self) -> None:
        s = frozen_int16(self.samples, "Segment.samples")
        if not self.start_sample <= self.detect_sample <= self.start_sample + s.size:
            raise ValueError("detect_sample must lie within the segment")
        object.__setattr__(self, "samples", s)

    @property
    def n_samples(self) -> int:
        return int(self.samples.size)

    @property
    def end_sample(self) -> int:
        return self.start_sample + self.n_samples

    @property
    def t_start_s(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def t_end_s(self) -> float:
        return self.end_sample / self.sample_rate

    @property
    def t_detect_s(self) -> float:
        return self.detect_sample / self.sample_rate

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate

    @property
    def nbytes(self) -> int:
        return self.n_samples * SAMPLE_WIDTH


class PrerollRing:
    """The last ``capacity`` samples of the current ADC run, addressed by stream sample index."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._buf = np.zeros(self.capacity, np.int16)
        self.reset(0)

    def reset(self, start_sample: int) -> None:
        """A new run: the next sample written is ``start_sample``; nothing older is held."""
        self.run_start = int(start_sample)
        self.end = int(start_sample)

    @property
    def oldest(self) -> int:
        return max(self.run_start, self.end - self.capacity)

    def write(self, x: np.ndarray) -> None:
        n = x.size
        if n >= self.capacity:
            tail = x[n - self.capacity:]
            i = (self.end + n - self.capacity) % self.capacity
            self._buf[i:] = tail[:self.capacity - i]
            self._buf[:i] = tail[self.capacity - i:]
        elif n:
            i = self.end % self.capacity
            k = min(n, self.capacity - i)
            self._buf[i:i + k] = x[:k]
            self._buf[:n - k] = x[k:]
        self.end += n

    def read(self, start: int) -> np.ndarray:
        """Samples [start, end); ``start`` must be >= :attr:`oldest`."""
        if start < self.oldest or start > self.end:
            raise ValueError(f"ring holds samples {self.oldest}..{self.end}, asked from {start}")
        idx = np.arange(start, self.end) % self.capacity
        return self._buf[idx]


@dataclass(slots=True)
class _Open:
    """A segment being collected."""

    start: int
    detect: int
    end_target: int
    score: float
    end_reason: EndReason
    preroll_clipped: bool
    parts: list[np.ndarray] = field(default_factory=list)
    n: int = 0


class Segmenter:
    """Feed the ADC stream (with the run breaks) and detections; get Segments when they are complete.

    Pure audio-time logic: no clock, no I/O. ``push`` takes samples at stream positions and the
    detections (as sample indices) that fall inside them, so the result does not depend on how the
    stream was chunked.
    """

    def __init__(self, *, config: SegmenterConfig, sample_rate: int = 16_000) -> None:
        self.config = config
        self.sample_rate = sample_rate
        self.lookback = _samples(config.preroll_s + config.keyword_s, sample_rate)
        self.command = _samples(config.command_window_s, sample_rate)
        self.max_len = _samples(config.max_segment_s, sample_rate)
        self._ring = PrerollRing(self.lookback)
        self.reset()

    @classmethod
    def from_config(cls, config: SegmenterConfig, sample_rate: int = 16_000) -> Segmenter:
        return cls(config=config, sample_rate=sample_rate)

    def reset(self) -> None:
        self._ring.reset(0)
        self._open: _Open | None = None
        self._running = False
        self.n_segments = 0
        self.suppressed = 0  # detections that fell inside a segment being collected

    @property
    def collecting(self) -> bool:
        return self._open is not None

    @property
    def pending_end(self) -> int | None:
        """Stream index at which the segment being collected completes (None if none is)."""
        return None if self._open is None else self._open.end_target

    @property
    def position(self) -> int:
        return self._ring.end

    def start_run(self, start_sample: int) -> None:
        """The ADC stream (re)starts at ``start_sample`` after a gap; audio before it does not exist."""
        if self._running and start_sample == self._ring.end:
            return
        if self._open is not None:
            raise RuntimeError("the ADC cannot restart while a segment is being collected")
        self._ring.reset(start_sample)
        self._running = True

    def stop_run(self) -> list[Segment]:
        """The ADC went off: a segment being collected ends here."""
        self._running = False
        return self._finish("adc_off") if self._open is not None else []

    def flush(self) -> list[Segment]:
        """End of stream: a segment being collected ends where the audio does."""
        return self._finish("end_of_stream") if self._open is not None else []

    def push(self, samples: np.ndarray, *, start_sample: int,
             detections: list[tuple[int, float]] = ()) -> list[Segment]:
        """ADC samples at ``start_sample`` (contiguous with the run) and detections as (sample index, score)."""
        if not self._running:
            raise RuntimeError("push before start_run")
        if start_sample != self._ring.end:
            raise ValueError(f"samples at {start_sample} do not continue the run at {self._ring.end}")
        out: list[Segment] = []
        pos = start_sample
        end = start_sample + samples.size
        for det, score in sorted(detections):
            det = min(max(det, pos), end)
            out += self._feed(samples[pos - start_sample:det - start_sample], pos)
            pos = det
            self._trigger(det, score)
        out += self._feed(samples[pos - start_sample:], pos)
        return out

    def _feed(self, x: np.ndarray, pos: int) -> list[Segment]:
        out: list[Segment] = []
        while x.size:
            if self._open is None:
                self._ring.write(x)
                break
            take = min(x.size, self._open.end_target - pos)
            part = x[:take]
            self._ring.write(part)
            self._open.parts.append(part.copy())
            self._open.n += take
            pos += take
            x = x[take:]
            if pos >= self._open.end_target:
                out += self._finish(self._open.end_reason)
        if self._open is not None and pos >= self._open.end_target:
            out += self._finish(self._open.end_reason)
        return out

    def _trigger(self, det: int, score: float) -> None:
        if self._open is not None:
            self.suppressed += 1
            return
        ideal = det - self.lookback
        start = max(ideal, self._ring.oldest)
        by_window = det + self.command
        by_cap = start + self.max_len
        reason: EndReason = "command_window" if by_window <= by_cap else "max_length"
        head = self._ring.read(start)
        self._open = _Open(start=start, detect=det, end_target=min(by_window, by_cap), score=float(score),
                           end_reason=reason, preroll_clipped=start > ideal, parts=[head.copy()], n=head.size)

    def _finish(self, reason: EndReason) -> list[Segment]:
        o = self._open
        self._open = None
        if o is None:
            return []
        samples = np.concatenate(o.parts) if o.parts else np.zeros(0, np.int16)
        if not samples.size:
            return []  # a detection at the very first sample with no command window: nothing to send
        seg = Segment(samples=samples, sample_rate=self.sample_rate, start_sample=o.start, detect_sample=o.detect,
                      score=o.score, end_reason=reason, preroll_clipped=o.preroll_clipped, seq=self.n_segments)
        self.n_segments += 1
        return [seg]


def _samples(seconds: float, sample_rate: int) -> int:
    # A hair of slack so 0.3 s at 16 kHz is 4800 samples, not 4801 from float rounding.
    return max(0, math.ceil(seconds * sample_rate - 1e-6))
