"""Augmentation of speech clips, every draw from a passed-in rng.

One clip at a time, for the training pipeline's clips and evaluation scenes: the backgrounds of
the scene rooms (:func:`background`), reverb in a statistical room, speed perturbation, mixing at
an SNR and peak level (:func:`reverb`, :func:`speed`, :func:`mix`, :func:`set_peak`).

Batched and vectorised, for ``gate-data synth`` (:func:`augment`): placement (time shift),
image-source room reverb, band limiting, additive noise at an exact SNR, and gain.

Order matters and is chosen so the reported SNR is the SNR in the written clip: speech and noise
pass through the same band-limiting channel *before* they are mixed, the noise is then scaled to
the target SNR over the speech span, and gain scales both together.
SNR definition: 10*log10(mean(speech^2) / mean(noise^2)) over the samples of the (dry) speech span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated

import numpy as np
from pydantic import Field, field_validator, model_validator
from scipy import fft as sp_fft
from scipy import signal

from gate_core.audio import SAMPLE_RATE, float_to_int16
from gate_core.strict import Strict
from sensors.synth import noise as noise_mod
from sensors.synth import rooms
from sensors.synth.recipe_io import Range

BANDS = ("telephone", "lowpass", "highpass")

# --- one clip at a time -----------------------------------------------------------------------

TRAIN_BACKGROUNDS = ("white", "pink", "brown", "quiet_home", "noisy_kitchen", "office_babble")
BACKGROUNDS = (*TRAIN_BACKGROUNDS, "music")  # every kind background() makes; TRAIN_BACKGROUNDS the default draw
_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def background(kind: str, n: int, rng: np.random.Generator, speech: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Unit-RMS background of one of BACKGROUNDS: a colour of noise, a scene room (a quiet home's brown
    noise and hum, a kitchen's clatter, an office's babble of ``speech``), or music in a room."""
    if kind in _COLOURS:
        return noise_mod.coloured_noise(n, rng, _COLOURS[kind])
    if kind == "quiet_home":
        x = noise_mod.coloured_noise(n, rng, 2.0) + 0.3 * noise_mod.mains_hum(n, rng)
    elif kind == "noisy_kitchen":
        x = noise_mod.coloured_noise(n, rng, 1.0) + 0.8 * noise_mod.clatter(n, rng) + 0.2 * noise_mod.mains_hum(n, rng)
    elif kind == "office_babble":
        x = noise_mod.babble_mix(n, rng, speech) + 0.3 * noise_mod.coloured_noise(n, rng, 1.0)
    elif kind == "music":
        x = noise_mod.music(rng, n) + 0.1 * noise_mod.coloured_noise(n, rng, 1.0)
    else:
        raise ValueError(f"unknown background kind {kind!r} (known: {', '.join(BACKGROUNDS)})")
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` in a statistical room (rooms.statistical_rir, RT60 0.2-0.8 s), cut to its length and
    scaled back to its peak."""
    y = signal.fftconvolve(x, rooms.statistical_rir(rng))[: x.size]
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


CHANNELS = (*BANDS, "narrowband")


def channel(x: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """``x`` heard through another microphone or line: one of :data:`BANDS` (:func:`band_sos`) or
    ``narrowband``, a source sampled at 8 kHz (anti-aliased down and back up: nothing above 4 kHz).
    ``kind`` None draws one of :data:`CHANNELS`. Same length; the level is the caller's to set."""
    kind = str(rng.choice(CHANNELS)) if kind is None else kind
    if kind == "narrowband":  # a codec's steep anti-alias filter, then 8 kHz and back
        y = signal.sosfilt(_butter(10, 3700, "lowpass"), x)
        return signal.resample_poly(signal.resample_poly(y, 1, 2), 2, 1)[: x.size].astype(np.float32)
    sos, _ = band_sos(kind, rng)
    return signal.sosfilt(sos, x).astype(np.float32)


# --- batches ----------------------------------------------------------------------------------


class AugmentConfig(Strict):
    """Probabilities and ranges of every augmentation; all draws come from the caller's seed."""

    clip_s: Annotated[float, Field(gt=0.1, le=10.0)] = 1.0
    margin_s: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    snr_db: Range = (-5.0, 30.0)
    p_clean: Annotated[float, Field(ge=0, le=1)] = 0.1
    noise_weights: dict[str, Annotated[float, Field(ge=0)]] = {
        "white": 1.0, "pink": 1.5, "brown": 1.0, "hum": 0.5, "fan": 1.0, "clicks": 0.5, "babble": 2.0}
    p_reverb: Annotated[float, Field(ge=0, le=1)] = 0.5
    rt60_s: Range = (0.15, 0.8)
    rooms: Annotated[int, Field(ge=1, le=4096)] = 64
    p_band: Annotated[float, Field(ge=0, le=1)] = 0.3
    level_dbfs: Range = (-40.0, -12.0)
    peak_dbfs: Annotated[float, Field(le=0)] = -0.5

    @field_validator("noise_weights")
    @classmethod
    def _kinds(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(noise_mod.KINDS)
        if unknown:
            raise ValueError(f"unknown noise kind(s) {sorted(unknown)} (known: {', '.join(noise_mod.KINDS)})")
        return v

    @field_validator("rt60_s")
    @classmethod
    def _rt60(cls, v: Range) -> Range:
        if v[0] <= 0.05:
            raise ValueError("must be above 0.05 s")
        return v

    @model_validator(mode="after")
    def _some_noise(self) -> AugmentConfig:
        if not any(w > 0 for w in self.noise_weights.values()) and self.p_clean < 1:
            raise ValueError("noise_weights: all zero, set p_clean to 1 for clean clips")
        return self

    @property
    def n_samples(self) -> int:
        return int(round(self.clip_s * SAMPLE_RATE))


@dataclass(slots=True)
class Batch:
    """Int16 clips and, per clip, what was done to it (JSON-serialisable)."""

    audio: np.ndarray
    info: list[dict[str, object]]
    speech: np.ndarray | None = field(default=None, repr=False)  # scaled speech component, for tests
    noise: np.ndarray | None = field(default=None, repr=False)   # scaled noise component, for tests


def band_sos(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """A channel: telephone band, a cheap mic's low-pass, or a high-pass (small speaker, wind filter).

    Edges are drawn on a 50 Hz grid so the filter designs can be cached: a batch reuses them.
    """
    if kind == "telephone":
        lo, hi = _grid(rng, 200, 400), _grid(rng, 3200, 3600)
        return _butter(4, (lo, hi), "bandpass"), {"low_hz": lo, "high_hz": hi}
    if kind == "lowpass":
        hi = _grid(rng, 2500, 7000)
        return _butter(6, hi, "lowpass"), {"high_hz": hi}
    if kind == "highpass":
        lo = _grid(rng, 150, 500)
        return _butter(4, lo, "highpass"), {"low_hz": lo}
    raise ValueError(f"unknown band kind {kind!r}")


def _grid(rng: np.random.Generator, lo: int, hi: int, step: int = 50) -> int:
    return int(lo + step * rng.integers(0, (hi - lo) // step + 1))


@lru_cache(maxsize=512)
def _butter(order: int, edges: int | tuple[int, int], btype: str) -> np.ndarray:
    return signal.butter(order, edges, btype, fs=SAMPLE_RATE, output="sos")


def fft_convolve_rows(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Row-wise linear convolution of x (B, n) with h (B, m), truncated to n samples."""
    n = x.shape[1]
    nfft = sp_fft.next_fast_len(n + h.shape[1] - 1, real=True)
    y = sp_fft.irfft(sp_fft.rfft(x, nfft, axis=1) * sp_fft.rfft(h, nfft, axis=1), nfft, axis=1)
    return np.ascontiguousarray(y[:, :n], dtype=np.float32)


class RirBank:
    """Room responses and their spectra, transformed once per process instead of once per batch."""

    def __init__(self, rirs: list[np.ndarray], info: list[dict[str, object]], n: int) -> None:
        self.info = info
        m = max(h.size for h in rirs)
        self.nfft = sp_fft.next_fast_len(n + m - 1, real=True)
        padded = np.zeros((len(rirs), m), dtype=np.float32)
        for i, h in enumerate(rirs):
            padded[i, :h.size] = h
        self.spectra = sp_fft.rfft(padded, self.nfft, axis=1)

    def __len__(self) -> int:
        return len(self.info)

    def apply(self, x: np.ndarray, pick: np.ndarray) -> np.ndarray:
        n = x.shape[1]
        y = sp_fft.irfft(sp_fft.rfft(x, self.nfft, axis=1) * self.spectra[pick], self.nfft, axis=1)
        return np.ascontiguousarray(y[:, :n], dtype=np.float32)


def augment(utterances: list[np.ndarray | None], rng: np.random.Generator, cfg: AugmentConfig, *,
            rirs: RirBank, babble_speech: list[np.ndarray], keep_whole: list[bool], keep_parts: bool = False) -> Batch:
    """Augment one batch. ``utterances[i]`` is trimmed float32 speech, or None for a noise-only clip.
    ``keep_whole[i]`` demands the whole utterance inside the clip (keywords); otherwise a random
    window of a longer utterance is taken."""
    B, n = len(utterances), cfg.n_samples
    margin = int(cfg.margin_s * SAMPLE_RATE)
    speech = np.zeros((B, n), dtype=np.float32)
    span = np.zeros((B, 2), dtype=np.int64)
    info: list[dict[str, object]] = [{} for _ in range(B)]
    for i, u in enumerate(utterances):
        if u is None:
            continue
        if u.size > n - 2 * margin and not keep_whole[i]:
            a = int(rng.integers(0, u.size - (n - 2 * margin) + 1))
            u = u[a:a + n - 2 * margin]
            info[i]["crop_start_s"] = round(a / SAMPLE_RATE, 4)
        if u.size > n:
            raise ValueError(f"utterance of {u.size} samples does not fit a {n}-sample clip")
        lo, hi = min(margin, n - u.size), max(min(margin, n - u.size), n - margin - u.size)
        off = int(rng.integers(lo, hi + 1))
        speech[i, off:off + u.size] = u
        span[i] = (off, off + u.size)
        info[i]["shift_s"] = round(off / SAMPLE_RATE, 4)
        info[i]["speech_s"] = [round(off / SAMPLE_RATE, 4), round((off + u.size) / SAMPLE_RATE, 4)]
    has_speech = np.array([u is not None for u in utterances])

    # Reverb: one FFT convolution for all reverberant rows at once.
    rev = np.nonzero(has_speech & (rng.random(B) < cfg.p_reverb))[0]
    if rev.size:
        pick = rng.integers(0, len(rirs), size=rev.size)
        for j, k in enumerate(pick):
            info[rev[j]]["room"] = rirs.info[k]
        speech[rev] = rirs.apply(speech[rev], pick)

    # Noise, grouped by kind so each generator runs once per batch.
    kinds = [k for k, w in sorted(cfg.noise_weights.items()) if w > 0 and (k != "babble" or babble_speech)]
    weights = np.array([cfg.noise_weights[k] for k in kinds], dtype=float)
    clean = has_speech & (rng.random(B) < cfg.p_clean) if kinds else has_speech.copy()
    chosen = rng.choice(len(kinds), size=B, p=weights / weights.sum()) if kinds else np.zeros(B, int)
    nz = np.zeros((B, n), dtype=np.float32)
    for ki, kind in enumerate(kinds):
        rows = np.nonzero((chosen == ki) & ~clean)[0]
        if rows.size:
            x, params = noise_mod.make(kind, rng, rows.size, n, speech=babble_speech)
            nz[rows] = x
            for r, p in zip(rows, params, strict=True):
                info[r]["noise"] = {"kind": kind, **{k: round(v, 2) for k, v in p.items()}}

    # Channel, applied to both parts alike.
    band_rows = np.nonzero(rng.random(B) < cfg.p_band)[0]
    for r in band_rows:
        band = str(rng.choice(BANDS))
        sos, p = band_sos(band, rng)
        speech[r] = signal.sosfilt(sos, speech[r])
        nz[r] = signal.sosfilt(sos, nz[r])
        info[r]["band"] = {"kind": band, **p}

    snr = rng.uniform(*cfg.snr_db, size=B)
    level = rng.uniform(*cfg.level_dbfs, size=B)
    for i in range(B):
        if has_speech[i]:
            a, b = span[i]
            ps = float(np.mean(speech[i, a:b].astype(np.float64) ** 2))
            if clean[i]:
                nz[i] = 0.0
                info[i]["snr_db"] = None
            else:
                pn = float(np.mean(nz[i, a:b].astype(np.float64) ** 2))
                nz[i] *= np.sqrt(ps / (max(pn, 1e-20) * 10 ** (snr[i] / 10)))
                info[i]["snr_db"] = round(float(snr[i]), 3)
            ref = ps
        else:
            ref = float(np.mean(nz[i].astype(np.float64) ** 2))
            info[i]["snr_db"] = None
        g = 10 ** (level[i] / 20) / np.sqrt(max(ref, 1e-20))
        peak = float(np.max(np.abs(speech[i] + nz[i]))) * g
        limit = 10 ** (cfg.peak_dbfs / 20)
        if peak > limit:  # keep clear of clipping; SNR is unchanged since both parts scale alike
            g *= limit / peak
        speech[i] *= g
        nz[i] *= g
        info[i]["gain_db"] = round(float(20 * np.log10(g)), 3)
        info[i]["level_dbfs"] = round(float(10 * np.log10(max(ref, 1e-20)) + 20 * np.log10(g)), 3)
    audio = float_to_int16(speech + nz)
    return Batch(audio, info, speech if keep_parts else None, nz if keep_parts else None)
