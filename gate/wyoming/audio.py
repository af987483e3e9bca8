"""Wyoming PCM (any rate, sample width and channel count) -> the cascade's 16 kHz mono int16.

Conversion is streaming and keeps its state: a stream cut into chunks of any size gives the same
samples as the whole stream converted at once, so detections do not depend on the client's chunking.
A frame split across two chunks is joined; a trailing partial frame at the end of a stream is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from gate_core.audio import SAMPLE_RATE, float_to_int16
from gate_core.errors import AudioInputError

MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_CHANNELS = 8
WIDTHS = (1, 2, 3, 4)  # bytes: unsigned 8-bit, then signed little-endian 16, 24 and 32-bit (as WAV and audioop)
MAX_RATIO_TERM = 1_000  # 44100 -> 16000 is 160/441; a rate with no small ratio to 16 kHz is refused


@dataclass(frozen=True, slots=True)
class PcmFormat:
    rate: int
    width: int
    channels: int

    def __str__(self) -> str:
        return f"{self.rate} Hz, {8 * self.width}-bit, {self.channels} channel{'s' if self.channels != 1 else ''}"

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels


def check_format(rate: object, width: object, channels: object) -> PcmFormat:
    """The format, or an AudioInputError naming the field that is out of range."""
    for name, value in (("rate", rate), ("width", width), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise AudioInputError(f"audio {name} {value!r} is not an integer", code="audio_format")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioInputError(f"audio rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz", code="audio_format")
    ratio = Fraction(SAMPLE_RATE, rate)
    if max(ratio.numerator, ratio.denominator) > MAX_RATIO_TERM:
        raise AudioInputError(f"audio rate {rate} Hz has no small ratio to {SAMPLE_RATE} Hz; use a standard rate "
                              "(8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000 Hz)", code="audio_format")
    if width not in WIDTHS:
        raise AudioInputError(f"audio width {width} bytes is not one of {', '.join(map(str, WIDTHS))}",
                              code="audio_format")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioInputError(f"audio channels {channels} is outside 1-{MAX_CHANNELS}", code="audio_format")
    return PcmFormat(rate, width, channels)


def to_float(data: bytes, fmt: PcmFormat) -> np.ndarray:
    """Whole frames of ``data`` as float32 in [-1, 1), shape (frames, channels)."""
    w = fmt.width
    if w == 1:
        x = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif w == 2:
        x = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    elif w == 3:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    else:
        x = (np.frombuffer(data, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    return x.reshape(-1, fmt.channels)


class PcmConverter:
    """One stream's conversion: bytes in the client's format -> 16 kHz mono int16, with state."""

    def __init__(self, fmt: PcmFormat) -> None:
        self.fmt = fmt
        self._rest = b""
        self._resampler = None
        if fmt.rate != SAMPLE_RATE:
            from sensors.microphone import StreamingResampler

            self._resampler = StreamingResampler(fmt.rate, SAMPLE_RATE)

    @property
    def passthrough(self) -> bool:
        return self.fmt == PcmFormat(SAMPLE_RATE, 2, 1)

    def convert(self, data: bytes) -> np.ndarray:
        if self._rest:
            data = self._rest + data
        fb = self.fmt.frame_bytes
        whole = len(data) - len(data) % fb
        self._rest = data[whole:]
        data = data[:whole]
        if self.passthrough:
            return np.frombuffer(data, "<i2").astype(np.int16)
        x = to_float(data, self.fmt)
        mono = x[:, 0] if self.fmt.channels == 1 else x.mean(axis=1)
        if self._resampler is not None:
            mono = self._resampler.process(mono)
        return float_to_int16(mono)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held for the next chunk."""
        return len(self._rest)
