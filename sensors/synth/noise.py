"""Noise for augmentation and scenes, generated in batches: arrays of shape (batch, samples).

Stationary colours (white, pink, brown), mains hum and fan noise come from :class:`NoiseStream`,
which carries filter state and phase between calls so a scene hours long can be generated block
by block without a seam. Each row is scaled by the generator's *theoretical* RMS, not by its
measured RMS, so the level is the same whatever the block size (streaming == batch).
Clicks and babble are non-stationary and are drawn per block.

Whole-clip generators, each scaled by its *measured* RMS over the clip, make the training clips'
backgrounds and the evaluation scenes' rooms (sensors/synth/augment.background): FFT-shaped
coloured noise, mains hum, kitchen clatter and talkers at random gains (``babble_mix``).
:func:`chain_talkers` lays utterances end to end for every babble, TV and talk background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
from scipy import signal

from gate_core.audio import SAMPLE_RATE

STATIONARY = ("white", "pink", "brown", "hum", "fan")
KINDS = STATIONARY + ("clicks", "babble")

# A 3-pole/3-zero approximation of a -3 dB/octave slope (J. O. Smith, "Spectral Audio Signal
# Processing"): accurate within about 0.3 dB over the audio band at any sample rate.
_PINK_B = np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786])
_PINK_A = np.array([1.0, -2.494956002, 2.017265875, -0.522189400])


def _sos_rms(sos: np.ndarray, length: int = 1 << 16) -> float:
    """RMS of the filter's output for unit white noise, from its impulse response energy."""
    imp = np.zeros(length)
    imp[0] = 1.0
    return float(np.sqrt(np.sum(signal.sosfilt(sos, imp) ** 2)))


@cache
def _pink() -> tuple[np.ndarray, float]:
    sos = signal.tf2sos(_PINK_B, _PINK_A)
    return sos, _sos_rms(sos)


@cache
def _brown(fs: int) -> tuple[np.ndarray, float]:
    # A leaky integrator (-6 dB/octave) after a 20 Hz high-pass, so the level does not wander.
    leak = signal.tf2sos([1.0], [1.0, -0.997])
    hp = signal.butter(2, 20, "highpass", fs=fs, output="sos")
    sos = np.vstack([hp, leak])
    return sos, _sos_rms(sos)


def _fan_sos(fs: int, cutoff: float) -> np.ndarray:
    return signal.butter(2, cutoff, "lowpass", fs=fs, output="sos")


class NoiseStream:
    """A stateful generator of one stationary noise kind for ``batch`` independent rows.

    ``params`` (hum frequency, fan blade rate...) are drawn once from ``rng`` at construction.
    Output rows have unit RMS on average.
    """

    def __init__(self, kind: str, rng: np.random.Generator, *, batch: int = 1, sample_rate: int = SAMPLE_RATE) -> None:
        if kind not in STATIONARY:
            raise ValueError(f"unknown stationary noise kind {kind!r} (known: {', '.join(STATIONARY)})")
        self.kind, self.rng, self.batch, self.fs = kind, rng, batch, sample_rate
        self.t = 0
        self.params: dict[str, float] = {}
        self._sos: np.ndarray | None = None
        if kind == "pink":
            self._sos, self._gain = _pink()
        elif kind == "brown":
            self._sos, self._gain = _brown(sample_rate)
        elif kind == "fan":
            cutoff = float(rng.uniform(300, 1500))
            self.params = {"cutoff_hz": cutoff, "blade_hz": float(rng.uniform(60, 240)),
                           "tone_db": float(rng.uniform(-15, -3))}
            self._sos = _fan_sos(sample_rate, cutoff)
            self._gain = _sos_rms(self._sos, 4096)  # a 300 Hz 2-pole low-pass rings out in ~20 ms
        elif kind == "hum":
            mains = float(rng.choice([50.0, 60.0]))
            self.params = {"mains_hz": mains}
            k = np.arange(1, 9)
            # Rectifier and transformer hum: odd harmonics dominate, falling off with order.
            amp = np.where(k % 2 == 1, 1.0, 0.35) / k ** rng.uniform(0.8, 1.6, size=(batch, 1))
            self._hum = (mains * k, amp, rng.uniform(0, 2 * np.pi, size=(batch, k.size)))
        if self._sos is not None:
            self._zi = np.zeros((self._sos.shape[0], batch, 2))

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` samples of every row, float32 (batch, n)."""
        rng, t = self.rng, np.arange(self.t, self.t + n) / self.fs
        self.t += n
        if self.kind == "white":
            return rng.standard_normal((self.batch, n), dtype=np.float32)
        if self.kind == "hum":
            freqs, amp, phase = self._hum
            arg = 2 * np.pi * freqs[None, :, None] * t[None, None, :] + phase[:, :, None]
            x = np.einsum("bk,bkn->bn", amp, np.sin(arg))
            return (x / np.sqrt(0.5 * np.sum(amp ** 2, axis=1, keepdims=True))).astype(np.float32)
        w = rng.standard_normal((self.batch, n))
        y, self._zi = signal.sosfilt(self._sos, w, axis=-1, zi=self._zi)
        y /= self._gain
        if self.kind == "fan":
            p = self.params
            tone = np.sin(2 * np.pi * p["blade_hz"] * t) + 0.5 * np.sin(4 * np.pi * p["blade_hz"] * t)
            tone_amp = 10 ** (p["tone_db"] / 20) / np.sqrt(0.625)
            y = (y + tone_amp * tone) / np.sqrt(1 + tone_amp ** 2 * 0.625)
        return y.astype(np.float32)


def clicks(rng: np.random.Generator, batch: int, n: int, *, rate_hz: tuple[float, float] = (2, 15),
           fs: int = SAMPLE_RATE) -> np.ndarray:
    """Sparse clicks and ticks: short decaying bursts at random times, unit RMS per row."""
    out = np.zeros((batch, n), dtype=np.float32)
    burst_len = int(0.004 * fs)
    decay = np.exp(-np.arange(burst_len) / (0.0008 * fs))
    for b in range(batch):
        count = max(1, rng.poisson(rng.uniform(*rate_hz) * n / fs))
        where = rng.integers(0, max(1, n - burst_len), size=count)
        amps = rng.uniform(0.2, 1.0, size=count) * rng.choice([-1, 1], size=count)
        for w, a in zip(where, amps, strict=True):
            out[b, w:w + burst_len] += a * decay * rng.standard_normal(burst_len)
        rms = np.sqrt(np.mean(out[b] ** 2))
        out[b] /= max(rms, 1e-9)
    return out


def babble(rng: np.random.Generator, batch: int, n: int, speech: Sequence[np.ndarray],
           *, talkers: tuple[int, int] = (3, 8)) -> np.ndarray:
    """Several synthetic talkers at once, each a chain of unit-RMS utterances from a random start, unit RMS
    per row: the batch augmenter's babble (``babble_mix`` is the training scenes')."""
    if not speech:
        raise ValueError("babble needs speech to build from")
    out = np.zeros((batch, n), dtype=np.float32)
    for b in range(batch):
        for _ in range(int(rng.integers(talkers[0], talkers[1] + 1))):
            talker = np.zeros(n, dtype=np.float32)
            pos = int(rng.integers(-n // 2, n // 2))
            while pos < n:
                u = speech[int(rng.integers(len(speech)))]
                u = u / max(float(np.sqrt(np.mean(u ** 2))), 1e-9)
                a, b0 = max(pos, 0), min(pos + u.size, n)
                if b0 > a:
                    talker[a:b0] += u[a - pos:b0 - pos]
                pos += u.size + int(rng.integers(0, int(0.3 * SAMPLE_RATE)))
            out[b] += talker * rng.uniform(0.5, 1.0)
        out[b] /= max(float(np.sqrt(np.mean(out[b] ** 2))), 1e-9)
    return out


def make(kind: str, rng: np.random.Generator, batch: int, n: int,
         speech: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, list[dict[str, float]]]:
    """``batch`` rows of ``n`` samples of ``kind`` and each row's drawn parameters."""
    if kind in ("white", "pink", "brown"):
        return NoiseStream(kind, rng, batch=batch).read(n), [{} for _ in range(batch)]
    if kind in STATIONARY:
        rows, params = [], []
        for _ in range(batch):
            # One stream per row: each clip gets its own hum frequency, fan cutoff...
            s = NoiseStream(kind, rng, batch=1)
            rows.append(s.read(n)[0])
            params.append(dict(s.params))
        return np.stack(rows), params
    if kind == "clicks":
        return clicks(rng, batch, n), [{} for _ in range(batch)]
    if kind == "babble":
        return babble(rng, batch, n, speech or ()), [{} for _ in range(batch)]
    raise ValueError(f"unknown noise kind {kind!r} (known: {', '.join(KINDS)})")


def music(rng: np.random.Generator, n: int, *, fs: int = SAMPLE_RATE) -> np.ndarray:
    """Music-like noise: chords and a melody of harmonic notes with envelopes, unit RMS.

    It has what matters to a detector: tonal, rhythmic, non-stationary energy in the speech band.
    """
    out = np.zeros(n, dtype=np.float64)
    beat = int(fs * 60 / rng.uniform(70, 140))
    root = 110 * 2 ** (rng.integers(0, 12) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    pos = 0
    while pos < n:
        length = min(beat * int(rng.choice([1, 2])), n - pos)
        t = np.arange(length) / fs
        env = np.minimum(1.0, t / 0.01) * np.exp(-t / rng.uniform(0.15, 0.6))
        chord = root * 2 ** (scale[rng.choice(8, size=3, replace=False)] / 12)
        melody = root * 4 * 2 ** (scale[rng.integers(0, 8)] / 12)
        note = np.zeros(length)
        for f, a in [(f, 0.4) for f in chord] + [(melody, 0.8)]:
            for h in range(1, 6):
                if f * h < fs / 2:
                    note += a / h ** 1.3 * np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6.3))
        out[pos:pos + length] += env * note
        if rng.random() < 0.5:  # a drum hit on the beat
            d = min(int(0.08 * fs), length)
            out[pos:pos + d] += 0.8 * rng.standard_normal(d) * np.exp(-np.arange(d) / (0.015 * fs))
        pos += length
    return (out / max(float(np.sqrt(np.mean(out ** 2))), 1e-9)).astype(np.float32)


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """1/f^exponent noise over one whole clip, shaped in the FFT domain, unit RMS (0 white, 1 pink, 2 brown).

    Exact to the slope at every frequency, where :class:`NoiseStream` is a streaming filter approximation."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    f[0] = f[1]
    x = np.fft.irfft(spec / f ** (exponent / 2.0), n)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def clatter(n: int, rng: np.random.Generator, rate_hz: float = 1.5) -> np.ndarray:
    """Dishes and cutlery: short decaying resonances at Poisson instants, unit RMS."""
    out = np.zeros(n, np.float32)
    t = 0
    while True:
        t += int(rng.exponential(SAMPLE_RATE / rate_hz))
        if t >= n:
            break
        length = int(rng.uniform(0.05, 0.4) * SAMPLE_RATE)
        tt = np.arange(length) / SAMPLE_RATE
        f0 = rng.uniform(800, 5000)
        burst = np.sin(2 * np.pi * f0 * tt) * np.exp(-tt * rng.uniform(15, 60))
        burst += 0.3 * rng.standard_normal(length) * np.exp(-tt * 80)
        end = min(n, t + length)
        out[t:end] += (burst[: end - t] * rng.uniform(0.3, 1.0)).astype(np.float32)
    return out / (np.std(out) + 1e-12)


def mains_hum(n: int, rng: np.random.Generator) -> np.ndarray:
    """50 or 60 Hz mains with harmonics 2, 3 and 5 at 1/k, random phases, unit RMS over the clip
    (``NoiseStream("hum")`` is the streaming rectifier hum with eight harmonics)."""
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    t = np.arange(n) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3, 5))
    return (x / np.std(x)).astype(np.float32)


def chain_talkers(out: np.ndarray, rng: np.random.Generator, speech: Sequence[np.ndarray], talkers: int, *,
                  start_s: float, gap_s: tuple[float, float], gain: tuple[float, float] | None = None) -> np.ndarray:
    """Adds ``talkers`` talkers to ``out`` (in place, and returns it), each a chain of utterances drawn
    from ``speech``: the first starts in the first ``start_s``, each next one a ``gap_s`` pause after
    the last; every utterance at a random gain in ``gain`` when given, as it is otherwise."""
    n = out.size
    first = int(start_s * SAMPLE_RATE)
    for _ in range(talkers):
        pos = int(rng.integers(0, first))
        while pos < n:
            u = speech[int(rng.integers(len(speech)))]
            m = min(u.size, n - pos)
            out[pos:pos + m] += u[:m] if gain is None else u[:m] * rng.uniform(*gain)
            pos += u.size + int(rng.uniform(*gap_s) * SAMPLE_RATE)
    return out


def babble_mix(n: int, rng: np.random.Generator, speech: Sequence[np.ndarray], talkers: int = 5) -> np.ndarray:
    """``talkers`` talkers at once, each utterance at a gain of 0.5-1, unit RMS; pink noise without speech."""
    if not speech:
        return coloured_noise(n, rng, 1.0)
    out = chain_talkers(np.zeros(n, np.float32), rng, speech, talkers, start_s=1.0, gap_s=(0.05, 0.6), gain=(0.5, 1.0))
    return out / (np.std(out) + 1e-12)


NoiseFn = Callable[[np.random.Generator, int, int], np.ndarray]
