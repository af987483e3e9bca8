"""Shared inputs for the analog front-end tests (kept out of conftest.py, which is not ours)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sensors.analog import AnalogConfig, AnalogFrontEnd
from sensors.analog import testbench as sc

SR = sc.SR

needs_espeak = pytest.mark.skipif(not sc.have_espeak(), reason="espeak-ng is not installed")

SENTENCES = (
    "Turn on the kitchen lights please.",
    "What is the weather going to be like tomorrow morning?",
    "Set a timer for twelve minutes and remind me to check the oven.",
    "Play some quiet music in the living room.",
)
VOICES = ("en-us", "en+f3")


def config(**overrides) -> AnalogConfig:
    """Defaults with dotted overrides, e.g. config(**{"nonideal.seed": 3, "hangover_s": 0.5})."""
    tree = AnalogConfig().model_dump()
    for key, value in overrides.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return AnalogConfig(**tree)


def ideal(**overrides) -> AnalogConfig:
    """A board without mismatch or noise, for tests of the nominal behaviour."""
    quiet = {"nonideal.gain_mismatch_db": 0.0, "nonideal.fc_mismatch_pct": 0.0, "nonideal.comparator_offset_db": 0.0,
             "nonideal.comparator_noise_db": 0.0, "nonideal.envelope_ripple_pct": 0.0}
    return config(**{**quiet, **overrides})


def run(cfg: AnalogConfig, x: np.ndarray):
    return AnalogFrontEnd(config=cfg).process(x)


def pink_bed(seconds: float, level_dbfs: float, seed: int = 0) -> np.ndarray:
    return sc.at_dbfs(sc.pink_noise(int(seconds * SR), np.random.default_rng(seed)), level_dbfs)


def burst_scene(seed: int = 0) -> np.ndarray:
    """4 s of pink noise at -50 dBFS with two white-noise bursts at -20 dBFS: events to compare."""
    x = pink_bed(4.0, -50.0, seed)
    rng = np.random.default_rng(seed + 1)
    for start in (1.0, 2.6):
        i = int(start * SR)
        x[i:i + SR // 3] += sc.at_dbfs(sc.white_noise(SR // 3, rng), -20.0)
    return x


@functools.cache
def speech(voice: str) -> np.ndarray:
    """Clean speech scene: a 2 s lead-in, the sentences with 1 s gaps, a 1 s tail."""
    return sc.speech_scene([sc.espeak(s, voice) for s in SENTENCES])
