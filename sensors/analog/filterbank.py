"""Band-pass filter bank, modelled at the envelope rate in the frequency domain.

Each tick analyses one frame of ``frame_len`` samples ending at the tick (Hann window, real FFT on
float32) and weights the power spectrum with |H_k(f)|^2 of channel k's analog band-pass. That gives
the channel's short-time output power without running an IIR per sample, which is what makes the
model thousands of times faster than real time.

Level convention (dBFS): the weights are scaled so that a sine of amplitude A at a channel's
centre reads A (peak-equivalent amplitude) at that channel's output, i.e. a full-scale sine reads
0 dBFS. White noise of RMS s reads about s * sqrt(2 * B_k / (fs/2)) with B_k the channel's noise
bandwidth.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy.signal import get_window

ANALYSIS_S = 0.016  # frame long enough to resolve the lowest speech channels (62.5 Hz bins at 16 kHz)


def nominal_centres(f_low_hz: float, f_high_hz: float, n_channels: int) -> np.ndarray:
    """Geometrically spaced centres: constant-Q channels cover the speech band evenly in octaves."""
    return np.geomspace(f_low_hz, f_high_hz, n_channels)


def bandpass_power_response(f_hz: np.ndarray, fc_hz: np.ndarray, q: float, order: int) -> np.ndarray:
    """|H(f)|^2 of ``order/2`` identical resonators, shape (len(f), len(fc)), unity at fc."""
    f = np.asarray(f_hz, dtype=np.float64)[:, None]
    fc = np.asarray(fc_hz, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore"):
        detune = np.where(f > 0, f / fc - fc / np.where(f > 0, f, 1.0), np.inf)
    one = 1.0 / (1.0 + (q * detune) ** 2)
    return one ** (order // 2)


def frame_length(sample_rate: int, hop: int) -> int:
    """Power-of-two analysis frame of about 16 ms, never shorter than a hop (no sample unseen)."""
    want = max(ANALYSIS_S * sample_rate, hop)
    return int(2 ** np.ceil(np.log2(want)))


class FilterBank:
    """Streaming audio -> per-channel output power (amplitude squared), one row per tick.

    Tick i analyses the ``frame_len`` samples ending at sample (i+1)*hop; samples before the stream
    started count as zeros. The samples still needed for later frames are kept between calls, so
    any chunking yields the same ticks.
    """

    def __init__(self, *, sample_rate: int, hop: int, fc_hz: np.ndarray, gain_db: np.ndarray,
                 q: float, order: int) -> None:
        self.hop = hop
        self.frame_len = frame_length(sample_rate, hop)
        window = get_window("hann", self.frame_len).astype(np.float64)
        freqs = np.fft.rfftfreq(self.frame_len, 1.0 / sample_rate)
        resp = bandpass_power_response(freqs, fc_hz, q, order)
        # Calibrate each channel so a sine of amplitude A at its centre reads A^2: this fixes the
        # dBFS convention and absorbs the window's gain and main-lobe spread in one step.
        resp /= _sine_reading(window, sample_rate, np.asarray(fc_hz), resp)[None, :]
        gain = 10.0 ** (np.asarray(gain_db) / 10.0)  # power gain
        self.weights = (resp * gain[None, :]).astype(np.float32)
        self.window = window.astype(np.float32)
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(self.frame_len - self.hop, dtype=np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        """float32 samples -> (n_ticks, n_channels) float32 band power (amplitude squared)."""
        buf = np.ascontiguousarray(np.concatenate([self._pending, x]), dtype=np.float32)
        n = (buf.size - (self.frame_len - self.hop)) // self.hop
        if n <= 0:
            self._pending = buf
            return np.zeros((0, self.weights.shape[1]), dtype=np.float32)
        # A strided view, not a copy: frame i starts at i*hop (sliding_window_view costs ~30 us a call).
        frames = np.ndarray((n, self.frame_len), dtype=np.float32, buffer=buf,
                            strides=(self.hop * buf.itemsize, buf.itemsize))
        spec = scipy.fft.rfft(frames * self.window, axis=1)
        power = spec.real ** 2 + spec.imag ** 2
        self._pending = buf[n * self.hop:].copy()
        return power @ self.weights


def _sine_reading(window: np.ndarray, sample_rate: int, fc_hz: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """What each channel's weights read for a unit sine at its own centre, phase-averaged.

    The window's main lobe is wider than the lowest channels, so uncalibrated weights would read a
    centre tone up to ~1 dB low at Q=3; dividing by this reading trims every channel to read it
    exactly, as a board's gain trim would (the drawn gain mismatch is applied after the trim).
    """
    n = window.size
    t = np.arange(n) / sample_rate
    phases = np.linspace(0.0, np.pi, 8, endpoint=False)
    sines = np.sin(2 * np.pi * fc_hz[:, None, None] * t[None, None, :] + phases[None, :, None])
    power = np.abs(np.fft.rfft(sines * window, axis=-1)) ** 2          # (channel, phase, bin)
    return np.einsum("cpb,bc->c", power, weights) / phases.size
