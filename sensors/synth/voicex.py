"""Voice transformation with the WORLD vocoder: one render, another speaker.

WORLD splits speech into F0, a smooth spectral envelope and aperiodicity, which can be changed
independently before resynthesis (unlike a speed change, which moves pitch, formants and tempo
together). A transform shifts F0 and scales its range around the utterance's mean (intonation),
warps the envelope's frequency axis by ``alpha`` as a change of vocal-tract length (``alpha`` > 1
moves every formant up, as a shorter tract does), and raises or lowers the aperiodicity (more or
less breathy). The output has the input's length and RMS.

pyworld is imported when a transform runs, so the data tools work without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gate_core.audio import SAMPLE_RATE

FRAME_MS = 5.0
F0_FLOOR, F0_CEIL = 50.0, 600.0
MIN_SAMPLES = 1600  # below 0.1 s there is too little to analyse: returned unchanged


@dataclass(frozen=True, slots=True)
class VoiceTransform:
    f0_semitones: float     # F0 shift
    f0_range: float         # scale of log-F0 deviations from the utterance's mean (1 = unchanged)
    alpha: float            # frequency-warp factor of the spectral envelope (vocal-tract length)
    aperiodicity_db: float  # added to the aperiodicity in dB (> 0 breathier), capped at 0 dB


def draw(rng: np.random.Generator, *, f0_semitones: tuple[float, float] = (-4.0, 4.0),
         f0_range: tuple[float, float] = (0.7, 1.4), alpha: tuple[float, float] = (0.85, 1.2),
         aperiodicity_db: tuple[float, float] = (-6.0, 6.0)) -> VoiceTransform:
    """A transform with every parameter uniform in its range (four draws, always in this order)."""
    return VoiceTransform(float(rng.uniform(*f0_semitones)), float(rng.uniform(*f0_range)),
                          float(rng.uniform(*alpha)), float(rng.uniform(*aperiodicity_db)))


def warp_envelope(sp: np.ndarray, alpha: float) -> np.ndarray:
    """Envelope frames (frames, bins) with the frequency axis scaled: out(f) = in(f / alpha)."""
    bins = sp.shape[1]
    src = np.clip(np.arange(bins) / alpha, 0, bins - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, bins - 1)
    w = src - lo
    return sp[:, lo] * (1 - w) + sp[:, hi] * w


def apply(x: np.ndarray, t: VoiceTransform, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` (float mono) transformed by ``t``; float32, same length, same RMS."""
    import pyworld as pw

    x = np.asarray(x, dtype=np.float32)
    rms_in = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0
    if x.size < MIN_SAMPLES or rms_in <= 0:
        return x.copy()
    d = x.astype(np.float64)
    f0, times = pw.dio(d, sample_rate, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_MS)
    f0 = pw.stonemask(d, f0, times, sample_rate)
    sp = pw.cheaptrick(d, f0, times, sample_rate)
    ap = pw.d4c(d, f0, times, sample_rate)
    voiced = f0 > 0
    if voiced.any():
        logf = np.log(f0[voiced])
        mean = float(logf.mean())
        shifted = mean + (logf - mean) * t.f0_range + t.f0_semitones * np.log(2) / 12
        f0 = f0.copy()
        f0[voiced] = np.clip(np.exp(shifted), F0_FLOOR, F0_CEIL)
    sp = warp_envelope(sp, t.alpha)
    ap = np.clip(ap * 10 ** (t.aperiodicity_db / 20), 1e-6, 1.0)
    y = pw.synthesize(f0, np.ascontiguousarray(sp), np.ascontiguousarray(ap), sample_rate, frame_period=FRAME_MS)
    y = y[: x.size] if y.size >= x.size else np.pad(y, (0, x.size - y.size))
    rms_out = float(np.sqrt(np.mean(y ** 2)))
    if rms_out <= 0:
        return x.copy()
    return (y * (rms_in / rms_out)).astype(np.float32)


def transform(x: np.ndarray, rng: np.random.Generator, **ranges: tuple[float, float]) -> np.ndarray:
    """``x`` as another speaker: a transform drawn from ``rng`` (see ``draw`` for the ranges), applied."""
    return apply(x, draw(rng, **ranges))
