"""Noise, reverb and level for training clips and evaluation scenes; every draw from a passed-in rng.

The noises are generated, not downloaded: coloured noise, mains hum, kitchen clatter (decaying
resonances at random instants) and babble (several voices summed), which are the backgrounds of
the three evaluation scenes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import signal

SR = 16_000


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """1/f^exponent noise, unit RMS (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SR)
    f[0] = f[1]
    x = np.fft.irfft(spec / f ** (exponent / 2.0), n)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def clatter(n: int, rng: np.random.Generator, rate_hz: float = 1.5) -> np.ndarray:
    """Dishes and cutlery: short decaying resonances at Poisson instants, unit RMS."""
    out = np.zeros(n, np.float32)
    t = 0
    while True:
        t += int(rng.exponential(SR / rate_hz))
        if t >= n:
            break
        length = int(rng.uniform(0.05, 0.4) * SR)
        tt = np.arange(length) / SR
        f0 = rng.uniform(800, 5000)
        burst = np.sin(2 * np.pi * f0 * tt) * np.exp(-tt * rng.uniform(15, 60))
        burst += 0.3 * rng.standard_normal(length) * np.exp(-tt * 80)
        end = min(n, t + length)
        out[t:end] += (burst[: end - t] * rng.uniform(0.3, 1.0)).astype(np.float32)
    return out / (np.std(out) + 1e-12)


def hum(n: int, rng: np.random.Generator) -> np.ndarray:
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    t = np.arange(n) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3, 5))
    return (x / np.std(x)).astype(np.float32)


def babble(n: int, rng: np.random.Generator, speech: Sequence[np.ndarray], talkers: int = 5) -> np.ndarray:
    """Several talkers at once, each a chain of random utterances; unit RMS."""
    out = np.zeros(n, np.float32)
    if not speech:
        return coloured_noise(n, rng, 1.0)
    for _ in range(talkers):
        pos = int(rng.integers(0, SR))
        while pos < n:
            u = speech[int(rng.integers(len(speech)))]
            end = min(n, pos + u.size)
            out[pos:end] += u[: end - pos] * rng.uniform(0.5, 1.0)
            pos = end + int(rng.uniform(0.05, 0.6) * SR)
    return out / (np.std(out) + 1e-12)


def background(kind: str, n: int, rng: np.random.Generator, speech: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Unit-RMS background of one of the scene kinds (or a random training mix)."""
    if kind == "white":
        return coloured_noise(n, rng, 0.0)
    if kind == "pink":
        return coloured_noise(n, rng, 1.0)
    if kind == "brown":
        return coloured_noise(n, rng, 2.0)
    if kind == "quiet_home":
        x = coloured_noise(n, rng, 2.0) + 0.3 * hum(n, rng)
    elif kind == "noisy_kitchen":
        x = coloured_noise(n, rng, 1.0) + 0.8 * clatter(n, rng) + 0.2 * hum(n, rng)
    elif kind == "office_babble":
        x = babble(n, rng, speech) + 0.3 * coloured_noise(n, rng, 1.0)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


TRAIN_BACKGROUNDS = ("white", "pink", "brown", "quiet_home", "noisy_kitchen", "office_babble")


def reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exponentially decaying noise impulse response, RT60 0.2-0.8 s, direct path kept."""
    rt60 = rng.uniform(0.2, 0.8)
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * rng.uniform(0.1, 0.5)
    ir[0] = 1.0
    y = signal.fftconvolve(x, ir)[: x.size]
    return (y * (np.max(np.abs(x)) / (np.max(np.abs(y)) + 1e-12))).astype(np.float32)


def speed(x: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Speed perturbation: resampled by a random factor in [lo, hi] and played at the same rate, so pitch,
    formants (vocal-tract length) and tempo all move together, as between speakers. Factor in 1/40 steps."""
    k = int(round(rng.uniform(lo, hi) * 40))
    if k == 40:
        return x
    g = np.gcd(k, 40)
    return signal.resample_poly(x, 40 // g, k // g).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that speech RMS / noise RMS = snr_db (same length)."""
    k = rms(speech) / (rms(noise) * 10 ** (snr_db / 20.0))
    return (speech + k * noise).astype(np.float32)


def set_peak(x: np.ndarray, peak_db: float) -> np.ndarray:
    return (x * (10 ** (peak_db / 20.0) / (np.max(np.abs(x)) + 1e-12))).astype(np.float32)
