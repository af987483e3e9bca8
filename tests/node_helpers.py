"""Inputs for the whole-node tests: a room with "hey jarvis, turn on the lights" at known times."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from kws_standin import STANDIN, shipped_kws_model

from gate.config import GateSettings
from gate_core.audio import float_to_int16
from sensors.wavfile import resample, write_audio

SR = 16000
PHRASE = "hey jarvis, turn on the lights"
ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")


def espeak(text: str, voice: str = "en-us") -> np.ndarray:
    """``text`` spoken by espeak-ng, float32 at 16 kHz."""
    wav = subprocess.run([ESPEAK, "-v", voice, "--stdout", text], capture_output=True, check=True, timeout=60).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return resample(x, rate, SR)


def at_dbfs(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """``x`` scaled to an RMS of ``level_dbfs``."""
    rms = np.sqrt(np.mean(np.square(x, dtype=np.float64)))
    return (x * (10 ** (level_dbfs / 20) / max(rms, 1e-12))).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power spectrum, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[1:] /= np.sqrt(np.arange(1, spec.size))
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def hum(n: int, rng: np.random.Generator, fundamental_hz: float = 50.0) -> np.ndarray:
    """Mains hum: harmonics up to 1 kHz, amplitudes 1/k, random phases; unit RMS."""
    t = np.arange(n) / SR
    x = sum(np.sin(2 * np.pi * k * fundamental_hz * t + rng.uniform(0, 2 * np.pi)) / k
            for k in range(1, int(1000 // fundamental_hz) + 1))
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def wake_scene(path: Path, *, seconds: float, at_s: list[float], speech_dbfs: float = -24.0,
               bed_dbfs: float = -62.0, sample_rate: int = SR) -> tuple[Path, np.ndarray, float]:
    """(file, int16 samples at 16 kHz, phrase length s): a quiet pink bed with the phrase at ``at_s``."""
    phrase = at_dbfs(espeak(PHRASE), speech_dbfs)
    x = at_dbfs(pink_noise(int(seconds * SR), np.random.default_rng(5)), bed_dbfs).astype(np.float64)
    for t in at_s:
        a = int(t * SR)
        x[a:a + phrase.size] += phrase
    pcm = float_to_int16(x)
    if sample_rate != SR:
        from sensors.wavfile import resample

        write_audio(path, resample(pcm.astype(np.float32) / 32768.0, SR, sample_rate), sample_rate=sample_rate)
    else:
        write_audio(path, pcm)
    return path, pcm, phrase.size / SR


def node_settings(tmp_path: Path, model: str = "standin") -> GateSettings:
    """Settings for a node under test.

    ``model="standin"``: the loudness stand-in, so a plumbing test does not hinge on a model's
    accuracy. ``"shipped"``: gate/models' log-mel model (committed, so required).
    """
    path = STANDIN if model == "standin" else shipped_kws_model()
    s = GateSettings()
    s.kws.model_path = str(path)
    s.mqtt.spool_dir = str(tmp_path / "spool")
    s.node.heartbeat_s = 2.0
    return s


def feed(cascade, x, chunk: int) -> tuple[list, list]:
    """Feed ``x`` to a cascade ``chunk`` samples at a time, then flush: (published segments, second-stage
    rejections)."""
    published, rejected = [], []
    for a in range(0, x.size, chunk):
        out = cascade.process(x[a:a + chunk])
        published += out.segments
        rejected += out.rejected
    tail = cascade.flush()
    return published + tail.segments, rejected + tail.rejected
