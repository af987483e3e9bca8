"""Testbench of the analog front end: stimuli (noise, hum, tones, TTS speech) and gate-quality metrics.

Shared by tests/test_analog_*.py and bench/analog.py. Levels here are RMS dBFS (a full-scale sine
is -3 dBFS RMS), unlike the front end's envelopes, which read a sine's amplitude. Speech frames are
the 10 ms frames of the *clean* speech whose energy is within ``within_db`` of the loudest frame,
so the metric does not depend on the noise that was mixed in.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SR = 16_000


def rms_dbfs(x: np.ndarray) -> float:
    return float(10.0 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-30))


def at_dbfs(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """``x`` scaled to an RMS of ``level_dbfs``."""
    return (x * 10.0 ** ((level_dbfs - rms_dbfs(x)) / 20.0)).astype(np.float32)


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power spectrum (shaped in the frequency domain), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def hum(n: int, *, fundamental_hz: float = 50.0, top_hz: float = 1000.0, sr: int = SR,
        rng: np.random.Generator) -> np.ndarray:
    """Mains hum: the fundamental and its harmonics up to ``top_hz``, amplitudes 1/k, random phases."""
    t = np.arange(n) / sr
    x = np.zeros(n)
    for k in range(1, int(top_hz // fundamental_hz) + 1):
        x += np.sin(2 * np.pi * k * fundamental_hz * t + rng.uniform(0, 2 * np.pi)) / k
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def tone(n: int, freq_hz: float, *, amplitude: float = 1.0, sr: int = SR) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq_hz * np.arange(n) / sr)).astype(np.float32)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, voice: str = "en-us", *, sr: int = SR) -> np.ndarray:
    """Synthesise ``text`` with espeak-ng, as float32 mono at ``sr``."""
    from sensors.wavfile import read_audio

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return read_audio(out, target_rate=sr).astype(np.float32) / 32768.0


def frame_energy_db(x: np.ndarray, hop: int = 160) -> np.ndarray:
    """Energy of each whole ``hop``-sample frame (frame j = samples [j*hop, (j+1)*hop)), dB."""
    n = x.size // hop
    frames = x[:n * hop].reshape(n, hop).astype(np.float64)
    return 10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-30)


def speech_frames(clean: np.ndarray, *, hop: int = 160, within_db: float = 35.0) -> np.ndarray:
    """Frames of the clean speech within ``within_db`` of its loudest frame."""
    e = frame_energy_db(clean, hop)
    return e > e.max() - within_db


def speech_scene(utterances: list[np.ndarray], *, lead_s: float = 2.0, gap_s: float = 1.0,
                 tail_s: float = 1.0, sr: int = SR) -> np.ndarray:
    """Utterances laid end to end with silent gaps, after a lead-in the floor trackers settle on."""
    parts = [np.zeros(int(lead_s * sr), np.float32)]
    for u in utterances:
        parts += [u.astype(np.float32), np.zeros(int(gap_s * sr), np.float32)]
    parts.append(np.zeros(int(tail_s * sr), np.float32))
    return np.concatenate(parts)


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, *, snr_db: float, noise_dbfs: float,
               hop: int = 160, within_db: float = 35.0) -> tuple[np.ndarray, np.ndarray]:
    """(mixture, speech frame mask): noise at ``noise_dbfs`` RMS, speech at ``snr_db`` above it,
    the speech level taken over its active frames only (so pauses do not flatter the SNR)."""
    mask = speech_frames(clean, hop=hop, within_db=within_db)
    n_frames = mask.size
    active = clean[:n_frames * hop].reshape(n_frames, hop)[mask]
    speech = clean * 10.0 ** ((noise_dbfs + snr_db - rms_dbfs(active)) / 20.0)
    mix = speech + at_dbfs(noise[:clean.size], noise_dbfs)
    return mix.astype(np.float32), mask


def coverage(gate_open: np.ndarray, speech_mask: np.ndarray, *, preroll_ticks: int = 0) -> float:
    """Share of speech frames during which the gate was open.

    Tick i ends where frame i ends, so they align one to one. ``preroll_ticks`` credits the frames a
    pre-roll ring of that length would hand on when the gate opens.
    """
    n = min(gate_open.size, speech_mask.size)
    covered = gate_open[:n].copy()
    if preroll_ticks:
        opens = np.flatnonzero(covered & ~np.concatenate([[False], covered[:-1]]))
        for i in opens:
            covered[max(0, i - preroll_ticks):i] = True
    speech = speech_mask[:n]
    return float(covered[speech].mean()) if speech.any() else 1.0


def duty(gate_open: np.ndarray, *, skip_ticks: int = 0) -> float:
    """Share of ticks the gate was open, ignoring the first ``skip_ticks``."""
    g = gate_open[skip_ticks:]
    return float(g.mean()) if g.size else 0.0
