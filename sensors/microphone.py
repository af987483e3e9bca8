"""A live microphone through PortAudio (sounddevice), delivered as 16 kHz mono int16.

The PortAudio callback runs on the audio driver's thread and must never block: it only copies the
block into a bounded queue and counts trouble (driver overruns, blocks the queue had no room for).
Resampling, when the device cannot capture at 16 kHz, happens on the reader's thread.

Nothing is imported or opened at import time: sounddevice loads libportaudio when imported, and a
node replaying files must not need a sound card.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import signal

from gate_core.audio import SAMPLE_RATE, float_to_int16
from gate_core.errors import AudioInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MicStats:
    device: str
    device_rate: int
    blocks: int
    overruns: int  # callbacks that reported input_overflow: the driver lost audio
    dropped_blocks: int  # blocks the processing thread was too slow to take
    dropped_samples: int  # at the device rate


class StreamingResampler:
    """Rational polyphase resampler that keeps its history, so any block sizes give the same output."""

    def __init__(self, rate_in: int, rate_out: int, *, taps_per_phase: int | None = None) -> None:
        ratio = Fraction(int(rate_out), int(rate_in))
        self.up, self.down = ratio.numerator, ratio.denominator
        # The filter spans taps_per_phase input samples; decimating by d needs d times the span for
        # the same transition band, so 24 input samples per unit of decimation.
        taps_per_phase = taps_per_phase or 24 * max(1, math.ceil(self.down / self.up))
        self._k = taps_per_phase
        n = taps_per_phase * self.up
        # Cut-off just under the lower Nyquist, Kaiser window (beta 8: about 80 dB stop band).
        h = signal.firwin(n, 0.95 / max(self.up, self.down), window=("kaiser", 8.0)) * self.up
        # phases[p, t] = h[p + t*up]: the taps that meet input sample b - t for an output of phase p.
        self._phases = np.ascontiguousarray(h.reshape(taps_per_phase, self.up).T, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        self._hist = np.zeros(self._k - 1, np.float32)  # the implicit silence before the stream
        # Upsampled position of the next output, relative to index 0 of hist + block.
        self._next = (self._k - 1) * self.up

    def process(self, x: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._hist, np.asarray(x, np.float32)])
        top = buf.size * self.up - 1  # last upsampled position an output may sit at
        n_out = 0 if top < self._next else (top - self._next) // self.down + 1
        y = np.zeros(0, np.float32)
        if n_out:
            pos = self._next + self.down * np.arange(n_out, dtype=np.int64)
            idx = (pos // self.up)[:, None] - np.arange(self._k)[None, :]
            y = np.einsum("jt,jt->j", buf[idx], self._phases[pos % self.up]).astype(np.float32)
            self._next = int(pos[-1]) + self.down
        drop = buf.size - (self._k - 1)
        self._hist = buf[drop:].copy()
        self._next -= drop * self.up
        return y


class Microphone:
    """Capture from one input device; :meth:`read` returns 16 kHz mono int16 blocks.

    ``device`` is a PortAudio device index or a (sub)string of its name; None is the default input.
    ``samplerate`` None tries 16 kHz first and falls back to the device's default rate.
    """

    def __init__(self, *, device: int | str | None = None, channels: int = 1, samplerate: int | None = None,
                 blocksize_ms: float = 20.0, queue_s: float = 2.0, target_rate: int = SAMPLE_RATE) -> None:
        self.device = device
        self.channels = channels
        self.requested_rate = samplerate
        self.blocksize_ms = blocksize_ms
        self.queue_s = queue_s
        self.target_rate = target_rate
        self._stream = None
        self._queue: queue.Queue[np.ndarray] | None = None
        self._lock = threading.Lock()
        self._n = dict(blocks=0, overruns=0, dropped_blocks=0, dropped_samples=0)
        self.device_name = ""
        self.device_rate = 0
        self._resampler: StreamingResampler | None = None

    def start(self) -> None:
        sd = _sounddevice()
        try:
            info = sd.query_devices(self.device, kind="input") if self.device is not None else \
                sd.query_devices(kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            names = _input_names(sd)
            if not names:
                raise AudioInputError(NO_INPUT_DEVICE, code="mic_none") from None
            what = f"microphone {self.device!r}" if self.device is not None else "the default microphone"
            raise AudioInputError(f"{what}: {exc}; inputs: {names}", code="mic_device") from None
        self.device_name = str(info["name"])
        index = int(info["index"])
        self.device_rate = self._pick_rate(sd, index, int(round(info["default_samplerate"])))
        if self.device_rate != self.target_rate:
            why = "as configured" if self.requested_rate is not None else f"{self.target_rate} Hz is not supported"
            log.info("%s: capturing at %d Hz (%s) and resampling to %d Hz",
                     self.device_name, self.device_rate, why, self.target_rate)
            self._resampler = StreamingResampler(self.device_rate, self.target_rate)
        blocksize = max(1, int(round(self.blocksize_ms * self.device_rate / 1000)))
        self._queue = queue.Queue(maxsize=max(2, math.ceil(self.queue_s * 1000 / self.blocksize_ms)))
        try:
            self._stream = sd.InputStream(device=index, channels=self.channels, samplerate=self.device_rate,
                                          blocksize=blocksize, dtype="int16", callback=self._callback)
            self._stream.start()
        except sd.PortAudioError as exc:
            self._stream = None
            raise AudioInputError(f"microphone {self.device_name!r}: cannot open ({exc})", code="mic_open") from None
        log.info("capturing from %r (index %d) at %d Hz, %d channel(s), %d-sample blocks",
                 self.device_name, index, self.device_rate, self.channels, blocksize)

    def _pick_rate(self, sd, index: int, default_rate: int) -> int:
        if self.requested_rate is not None:
            return int(self.requested_rate)
        try:
            sd.check_input_settings(device=index, channels=self.channels, samplerate=self.target_rate, dtype="int16")
            return self.target_rate
        except (ValueError, sd.PortAudioError):
            return default_rate

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio's thread: never block
        with self._lock:
            self._n["blocks"] += 1
            if status.input_overflow:
                self._n["overruns"] += 1
        mono = indata[:, 0].copy() if indata.shape[1] == 1 else _downmix(indata)
        try:
            self._queue.put_nowait(mono)
        except queue.Full:
            with self._lock:
                self._n["dropped_blocks"] += 1
                self._n["dropped_samples"] += frames

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """The next block at 16 kHz (possibly empty while the resampler fills), or None on timeout."""
        if self._queue is None:
            raise RuntimeError("Microphone.read before start")
        try:
            block = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if self._resampler is None:
            return block
        return float_to_int16(self._resampler.process(block.astype(np.float32) / 32768.0))

    def stats(self) -> MicStats:
        with self._lock:
            return MicStats(device=self.device_name, device_rate=self.device_rate, **self._n)

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.stop()
            finally:
                self._stream.close()
                self._stream = None

    def __enter__(self) -> Microphone:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _downmix(indata: np.ndarray) -> np.ndarray:
    return np.round(indata.mean(axis=1)).astype(np.int16)


def _sounddevice():
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise AudioInputError(f"sounddevice/PortAudio unavailable ({exc}); pip install sounddevice and "
                              "apt-get install libportaudio2", code="mic_unavailable") from None
    return sd


NO_INPUT_DEVICE = ("no input device found: check that the system sees a microphone (`arecord -l`; with "
                   "PulseAudio or PipeWire, `pactl list short sources`) and that this user may use it (group audio)")


def _input_names(sd) -> str:
    try:
        return ", ".join(f"{d['index']}: {d['name']}" for d in sd.query_devices() if d["max_input_channels"] > 0)
    except Exception:  # noqa: BLE001 - only for an error message
        return "(cannot list devices)"


def list_inputs() -> list[dict]:
    """Input devices PortAudio sees (index, name, channels, default rate)."""
    sd = _sounddevice()
    return [{"index": d["index"], "name": d["name"], "channels": d["max_input_channels"],
             "default_rate": d["default_samplerate"]} for d in sd.query_devices() if d["max_input_channels"] > 0]
