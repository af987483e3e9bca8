"""Audio files in and out: anything libsndfile reads, converted once to 16 kHz mono int16.

Frames come out fixed-size whatever block size the file is read with. A file that cannot be read
as audio raises :class:`gate_core.errors.AudioInputError` naming the file and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from gate_core.audio import SAMPLE_RATE, Frame, Framer, float_to_int16
from gate_core.errors import AudioInputError

READ_BLOCK = 1 << 16  # samples per read: bounded memory for same-rate files of any length
# Rates a real recording can have. A header outside them is corrupt or hostile: a claimed 2**31 Hz
# would ask the resampler for hundreds of GiB.
MIN_RATE, MAX_RATE = 1_000, 768_000
# Above this up/down factor a polyphase filter (about 20 taps per phase) costs more than an FFT.
MAX_POLYPHASE_FACTOR = 4096


@dataclass(frozen=True, slots=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    n_samples: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate


def probe(path: str | os.PathLike) -> AudioInfo:
    """Open the header of ``path``; raise AudioInputError for anything that is not readable audio."""
    p = Path(path)
    if not p.exists():
        raise AudioInputError(f"{p}: no such file", code="audio_missing")
    if p.is_dir():
        raise AudioInputError(f"{p}: is a directory, not an audio file", code="audio_unreadable")
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioInputError(f"{p}: not a readable audio file ({_reason(exc)})", code="audio_corrupt") from exc
    except OSError as exc:
        raise AudioInputError(f"{p}: cannot open ({exc.strerror or exc})", code="audio_unreadable") from exc
    if info.frames <= 0:
        raise AudioInputError(f"{p}: contains no audio samples", code="audio_empty")
    declared = _wav_declared_bytes(p) if info.format in ("WAV", "WAVEX") else None
    if declared is not None:
        available = p.stat().st_size
        if declared[1] > available:
            raise AudioInputError(
                f"{p}: truncated: the data chunk declares {declared[0]} bytes, the file ends "
                f"{declared[1] - available} bytes short", code="audio_truncated")
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise AudioInputError(
            f"{p}: sample rate {info.samplerate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz", code="audio_rate")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioInputError(
            f"{p}: invalid header (rate={info.samplerate}, channels={info.channels})", code="audio_corrupt")
    return AudioInfo(str(p), int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)


def _wav_declared_bytes(p: Path) -> tuple[int, int] | None:
    """(declared data bytes, offset where the data chunk must end) from a RIFF header.

    libsndfile quietly reads what is there when a WAV is cut short; a recorder that died or a
    partial copy should be reported instead. Streaming writers leave the size as 0 or 0xFFFFFFFF,
    which means "unknown" and is accepted.
    """
    with p.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"data":
                if size in (0, 0xFFFFFFFF):
                    return None
                return size, f.tell() + size
            f.seek(size + (size & 1), os.SEEK_CUR)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    # libsndfile prefixes its message with the path; keep only the reason.
    return text.split(": ", 1)[-1] if ": " in text else text


class AudioFileSource:
    """Yields fixed :class:`Frame` objects of 16 kHz mono int16 audio from a file.

    A file already at ``target_rate`` is streamed in blocks (constant memory). Other rates are
    resampled once, with a polyphase filter, over the whole (mono) file.
    """

    def __init__(self, path: str | os.PathLike, *, frame_samples: int = 160,
                 target_rate: int = SAMPLE_RATE, allow_resample: bool = True,
                 read_block: int = READ_BLOCK) -> None:
        self.info = probe(path)
        self.path = Path(path)
        self.frame_samples = frame_samples
        self.target_rate = target_rate
        self.read_block = read_block
        if self.info.sample_rate != target_rate and not allow_resample:
            raise AudioInputError(
                f"{self.path}: sample rate is {self.info.sample_rate} Hz, expected {target_rate} Hz",
                code="audio_rate")

    @property
    def duration_s(self) -> float:
        return self.info.duration_s

    def blocks(self) -> Iterator[np.ndarray]:
        """int16 mono blocks at ``target_rate`` (sizes vary; use :meth:`frames` for fixed frames)."""
        if self.info.sample_rate == self.target_rate:
            yield from self._read_blocks()
        else:
            yield self.read_all()

    def frames(self) -> Iterator[Frame]:
        framer = Framer(frame_samples=self.frame_samples, sample_rate=self.target_rate)
        for block in self.blocks():
            yield from framer.push(block)
        yield from framer.flush()

    def read_all(self) -> np.ndarray:
        """The whole file as int16 mono at ``target_rate``."""
        if self.info.sample_rate == self.target_rate:
            parts = list(self._read_blocks())
            return np.concatenate(parts) if parts else np.zeros(0, np.int16)
        mono = np.concatenate(list(self._read_blocks(as_float=True)))
        return float_to_int16(resample(mono, self.info.sample_rate, self.target_rate))

    def _read_blocks(self, as_float: bool = False) -> Iterator[np.ndarray]:
        got = 0
        try:
            with sf.SoundFile(str(self.path)) as f:
                dtype = "float32" if as_float or self.info.channels > 1 else "int16"
                for block in f.blocks(blocksize=self.read_block, dtype=dtype, always_2d=True):
                    got += block.shape[0]
                    if block.shape[1] > 1:
                        mono = block.mean(axis=1, dtype=np.float32)
                        yield mono if as_float else float_to_int16(mono)
                    else:
                        yield block[:, 0].copy()
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioInputError(
                f"{self.path}: read failed after {got} of {self.info.n_samples} samples ({_reason(exc)})",
                code="audio_truncated") from exc
        if got == 0:
            raise AudioInputError(f"{self.path}: contains no audio samples", code="audio_empty")
        if got < self.info.n_samples:
            raise AudioInputError(
                f"{self.path}: truncated: header declares {self.info.n_samples} samples, only {got} readable",
                code="audio_truncated")


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling of float audio (anti-aliased)."""
    if rate_in == rate_out:
        return np.asarray(x, dtype=np.float32)
    g = gcd(int(rate_in), int(rate_out))
    up, down = rate_out // g, rate_in // g
    x = np.asarray(x, dtype=np.float32)
    if max(up, down) > MAX_POLYPHASE_FACTOR:
        # Coprime rates (e.g. 767999 Hz): memory linear in the file instead of in up*down.
        return signal.resample(x, round(x.size * rate_out / rate_in)).astype(np.float32)
    return signal.resample_poly(x, up, down).astype(np.float32)


def read_audio(path: str | os.PathLike, *, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a whole file as 16 kHz (or ``target_rate``) mono int16."""
    return AudioFileSource(path, target_rate=target_rate).read_all()


def write_audio(path: str | os.PathLike, samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write int16 (or float in [-1, 1]) mono audio; the format follows the suffix (.wav, .flac, .ogg)."""
    p = Path(path)
    data = np.asarray(samples)
    if data.dtype != np.int16:
        data = float_to_int16(data)
    subtype = "PCM_16" if p.suffix.lower() in (".wav", ".flac") else None
    p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(p), data, sample_rate, subtype=subtype)
    return p
