"""The front end on generated audio: it wakes for speech and sleeps through steady noise.

Speech frames are the 10 ms frames of the clean speech within 35 dB of its loudest frame;
coverage is the share of them during which the gate is open (no pre-roll credited). The mixture
SNR is taken over those active frames only, which is stricter than over the whole scene.
"""

from __future__ import annotations

import numpy as np
import pytest
from analog_helpers import SR, VOICES, burst_scene, config, needs_espeak, pink_bed, run, speech

from sensors.analog import duty_cycle, open_intervals
from sensors.analog import testbench as sc

SETTLE_TICKS = 300  # 3 s: what "after the first seconds" means below
SEEDS = range(5)


def stationary(kind: str, level_dbfs: float, seconds: float = 20.0, seed: int = 0) -> np.ndarray:
    n, rng = int(seconds * SR), np.random.default_rng(50 + seed)
    make = {"white": lambda: sc.white_noise(n, rng), "pink": lambda: sc.pink_noise(n, rng),
            "hum50": lambda: sc.hum(n, fundamental_hz=50.0, rng=rng),
            "hum60": lambda: sc.hum(n, fundamental_hz=60.0, rng=rng),
            "tone": lambda: sc.tone(n, 1000.0)}[kind]
    return sc.at_dbfs(make(), level_dbfs)


# --- silence -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_digital_silence_never_opens(seed):
    block = run(config(**{"nonideal.seed": seed}), np.zeros(20 * SR, np.float32))
    assert not block.open.any()


@pytest.mark.parametrize("level", [-100.0, -80.0])
def test_noise_below_the_circuit_floor_never_opens(level):
    block = run(config(), stationary("white", level))
    assert not block.open.any()


# --- stationary inputs -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["white", "pink", "hum50", "hum60", "tone"])
@pytest.mark.parametrize("level", [-60.0, -40.0, -20.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_stationary_input_keeps_the_gate_shut(kind, level, seed):
    block = run(config(**{"nonideal.seed": seed}), stationary(kind, level, seed=seed))
    assert sc.duty(block.open) <= 0.02
    assert sc.duty(block.open, skip_ticks=SETTLE_TICKS) <= 0.01


def test_a_noise_step_closes_once_the_floor_catches_up():
    # A fan switching on 35 dB above the old floor holds the gate about 35 / rise seconds.
    x = np.concatenate([pink_bed(5.0, -75.0), pink_bed(25.0, -30.0, seed=1)])
    cfg = config()
    (opened, closed), = open_intervals(run(cfg, x).events, 30.0)
    assert 5.0 < opened < 5.1
    assert closed - opened < 50.0 / cfg.floor_rise_db_per_s


# --- transients --------------------------------------------------------------------------------

def test_noise_bursts_open_the_gate_each_time():
    cfg = config()
    intervals = open_intervals(run(cfg, burst_scene()).events, 4.0)
    assert len(intervals) == 2
    for (opened, closed), start in zip(intervals, (1.0, 2.6), strict=True):
        assert start < opened < start + 0.05
        end = start + 1 / 3
        assert end + cfg.hangover_s <= closed <= end + cfg.hangover_s + 0.2


def test_tone_bursts_open_the_gate():
    x = pink_bed(6.0, -55.0)
    for start in (2.0, 4.0):
        i = int(start * SR)
        x[i:i + SR // 2] += sc.tone(SR // 2, 700.0, amplitude=0.05)
    assert len(open_intervals(run(config(), x).events, 6.0)) == 2


# --- speech in noise ---------------------------------------------------------------------------

def speech_in_pink(voice: str, *, snr_db: float, noise_dbfs: float, seed: int):
    clean = speech(voice)
    noise = sc.pink_noise(clean.size, np.random.default_rng(1000 + seed))
    return sc.mix_at_snr(clean, noise, snr_db=snr_db, noise_dbfs=noise_dbfs)


@needs_espeak
@pytest.mark.needs_espeak
@pytest.mark.parametrize("voice", VOICES)
@pytest.mark.parametrize("seed", SEEDS)
def test_speech_at_10db_snr_in_pink_noise_is_covered(voice, seed):
    mix, mask = speech_in_pink(voice, snr_db=10.0, noise_dbfs=-40.0, seed=seed)
    block = run(config(**{"nonideal.seed": seed}), mix)
    assert sc.coverage(block.open, mask) >= 0.93
    # And the gate is a gate: shut for most of the noise-only time (measured ~0.17; hangover tails).
    assert block.open[~mask[:block.n_ticks]].mean() <= 0.3


@needs_espeak
@pytest.mark.needs_espeak
@pytest.mark.parametrize("snr_db", [5.0, 20.0])
@pytest.mark.parametrize("noise_dbfs", [-60.0, -20.0])
def test_speech_coverage_holds_across_snr_and_level(snr_db, noise_dbfs):
    for voice in VOICES:
        mix, mask = speech_in_pink(voice, snr_db=snr_db, noise_dbfs=noise_dbfs, seed=1)
        block = run(config(**{"nonideal.seed": 1}), mix)
        assert sc.coverage(block.open, mask) >= 0.90, voice


@needs_espeak
@pytest.mark.needs_espeak
def test_a_broken_gate_fails_the_coverage_metric():
    # Guard on the metric itself: a gate that barely opens (huge margin) must score badly.
    mix, mask = speech_in_pink("en-us", snr_db=10.0, noise_dbfs=-40.0, seed=0)
    block = run(config(margin_db=40.0), mix)
    assert sc.coverage(block.open, mask) < 0.5


def test_duty_cycle_from_events_matches_the_tick_mask():
    block = run(config(), burst_scene())
    from_events = duty_cycle(open_intervals(block.events, 4.0), 4.0)
    assert from_events == pytest.approx(block.open.mean(), abs=0.011)
