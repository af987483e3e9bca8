"""Log-mel features: the ONE implementation used by training, the node and the cloud.

Frame i covers samples [i*hop, i*hop + win). Streaming (:meth:`LogMel.push`) keeps the samples a
later frame still needs and emits every frame that became complete; batch (:meth:`LogMel.compute`)
frames a whole signal. Both run the same per-frame arithmetic, and the mel projection uses
``np.einsum`` without BLAS, whose blocking (and so rounding) would otherwise depend on how many
frames are in a call. That is why streaming equals batch bit for bit, whatever the chunk sizes.

Input is int16 at 16 kHz (the ADC's word) or float in [-1, 1); int16 is scaled by 1/32768 first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gate_core.audio import SAMPLE_RATE

LOG_FLOOR = 1e-6  # power floor before the log: about -60 dB re full scale per band, below any mic's noise


@dataclass(frozen=True, slots=True)
class LogMelSpec:
    """What the features are; a model card stores it so a model is never fed the wrong features."""

    sample_rate: int = SAMPLE_RATE
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    n_mels: int = 40
    f_min_hz: float = 60.0
    f_max_hz: float = 7600.0

    @property
    def win(self) -> int:
        return int(round(self.win_ms * self.sample_rate / 1000.0))

    @property
    def hop(self) -> int:
        return int(round(self.hop_ms * self.sample_rate / 1000.0))

    @property
    def frames_per_s(self) -> float:
        return self.sample_rate / self.hop

    def n_frames(self, n_samples: int) -> int:
        return 0 if n_samples < self.win else 1 + (n_samples - self.win) // self.hop

    def as_dict(self) -> dict:
        return {"kind": "logmel", "sample_rate": self.sample_rate, "win_ms": self.win_ms, "hop_ms": self.hop_ms,
                "n_fft": self.n_fft, "n_mels": self.n_mels, "f_min_hz": self.f_min_hz, "f_max_hz": self.f_max_hz}


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale (what TensorFlow's and most KWS front ends use)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


VTLP_BOUNDARY_HZ = 4800.0  # above it the warp bends back to Nyquist (Jaitly and Hinton, 2013)


def vtlp_warp(f: np.ndarray, alpha: float, nyquist: float, boundary_hz: float = VTLP_BOUNDARY_HZ) -> np.ndarray:
    """Vocal-tract-length perturbation of frequencies (Jaitly and Hinton, ICML 2013 workshop): f -> alpha f
    up to boundary_hz * min(alpha, 1) / alpha, then a straight line that ends at Nyquist, so the band keeps its
    edges. alpha > 1 moves filters up (as a longer vocal tract's formants would need to be read lower)."""
    f = np.asarray(f, dtype=np.float64)
    knee = boundary_hz * min(alpha, 1.0) / alpha
    high = nyquist - (nyquist - boundary_hz * min(alpha, 1.0)) / (nyquist - knee) * (nyquist - f)
    return np.where(f <= knee, f * alpha, high)


def mel_matrix(spec: LogMelSpec, warp: float = 1.0) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangular filters on the HTK mel scale, unit peak; ``warp`` != 1 moves the
    filter edges by vtlp_warp (training-time augmentation only; the node always uses 1)."""
    if not 0 <= spec.f_min_hz < spec.f_max_hz <= spec.sample_rate / 2:
        raise ValueError(f"mel band {spec.f_min_hz}-{spec.f_max_hz} Hz does not fit below Nyquist")
    freqs = np.fft.rfftfreq(spec.n_fft, 1.0 / spec.sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(spec.f_min_hz), hz_to_mel(spec.f_max_hz), spec.n_mels + 2))
    if warp != 1.0:
        edges = vtlp_warp(edges, warp, spec.sample_rate / 2)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


class LogMel:
    """Log-mel filter bank energies, batch or streaming, identical either way."""

    def __init__(self, spec: LogMelSpec | None = None, warp: float = 1.0) -> None:
        self.spec = spec or LogMelSpec()
        if self.spec.win > self.spec.n_fft:
            raise ValueError(f"window of {self.spec.win} samples is longer than n_fft={self.spec.n_fft}")
        # Periodic Hann: overlap-adds to a constant at 50% hop, the usual choice for analysis.
        n = np.arange(self.spec.win)
        self._window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.spec.win)).astype(np.float32)
        self._mel = mel_matrix(self.spec, warp)
        self.reset()

    @property
    def n_mels(self) -> int:
        return self.spec.n_mels

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0

    def compute(self, samples: np.ndarray) -> np.ndarray:
        """Whole signal -> (n_frames, n_mels) float32. Stateless: does not touch the stream."""
        x = _as_float(samples)
        n = self.spec.n_frames(x.size)
        if n == 0:
            return np.zeros((0, self.spec.n_mels), np.float32)
        idx = np.arange(self.spec.win)[None, :] + self.spec.hop * np.arange(n)[:, None]
        return self._frames_to_logmel(x[idx])

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed any number of samples; returns the (k, n_mels) frames that became complete."""
        x = _as_float(samples)
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        n = self.spec.n_frames(buf.size)
        if n == 0:
            self._pending = buf.copy()
            return np.zeros((0, self.spec.n_mels), np.float32)
        idx = np.arange(self.spec.win)[None, :] + self.spec.hop * np.arange(n)[:, None]
        out = self._frames_to_logmel(buf[idx])
        self._pending = buf[n * self.spec.hop:].copy()
        self.frames_emitted += n
        return out

    def _frames_to_logmel(self, frames: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfft(frames * self._window, n=self.spec.n_fft, axis=-1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
        mel = np.einsum("fk,mk->fm", power, self._mel, optimize=False)
        return np.log(np.maximum(mel, np.float32(LOG_FLOOR))).astype(np.float32)


def _as_float(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise TypeError(f"features expect 1-D audio, got shape {x.shape}")
    if x.dtype == np.int16:
        return x.astype(np.float32) * np.float32(1.0 / 32768.0)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    raise TypeError(f"features expect int16 or float samples, got {x.dtype}")


@dataclass(frozen=True, slots=True)
class PcenSpec:
    """Per-channel energy normalisation (Wang et al., 2017, "Trainable frontend for robust and far-field
    keyword spotting"), fixed rather than trained: each mel band's energy is divided by a slow smoother
    of itself (automatic gain control), then compressed. A steady noise floor and the talker's distance
    mostly divide out; onsets stand out. ``smooth`` is per frame (0.025 at a 10 ms hop: about 0.4 s)."""

    smooth: float = 0.025
    alpha: float = 0.98
    delta: float = 2.0
    root: float = 0.5
    eps: float = 1e-6

    def as_dict(self) -> dict:
        return {"smooth": self.smooth, "alpha": self.alpha, "delta": self.delta, "root": self.root, "eps": self.eps}


class Pcen:
    """Streaming PCEN of log-mel frames: the smoother's state carries over between pushes, so frame by
    frame equals batch. A fresh state starts the smoother at the first frame's energy (no warm-up ramp)."""

    def __init__(self, spec: PcenSpec | None = None) -> None:
        self.spec = spec or PcenSpec()
        if not 0.0 < self.spec.smooth <= 1.0:
            raise ValueError(f"PCEN smooth must be in (0, 1], got {self.spec.smooth}")
        self.reset()

    def reset(self) -> None:
        self._m: np.ndarray | None = None

    def push(self, logmel: np.ndarray) -> np.ndarray:
        """(k, n_mels) log-mel frames -> (k, n_mels) PCEN frames, float32."""
        e = np.exp(np.asarray(logmel, np.float64))
        out = np.empty_like(e)
        s, sp = self.spec, 1.0 - self.spec.smooth
        m = self._m
        for i in range(e.shape[0]):  # one frame at a time, as the node does: batch cannot round differently
            m = e[i].copy() if m is None else sp * m + s.smooth * e[i]
            out[i] = (e[i] / (s.eps + m) ** s.alpha + s.delta) ** s.root - s.delta ** s.root
        self._m = m
        return out.astype(np.float32)

    def compute(self, logmel: np.ndarray) -> np.ndarray:
        """A whole clip from a fresh state; does not disturb a stream in progress."""
        keep = self._m
        self._m = None
        try:
            return self.push(logmel)
        finally:
            self._m = keep
