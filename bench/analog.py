"""Benchmark of the simulated analog front end: audio seconds processed per wall second.

    .venv/bin/python bench/analog.py             # speed (comparator and crossbar decisions), JSON
    .venv/bin/python bench/analog.py --quality   # plus coverage and duty-cycle figures (needs espeak-ng)

The input is ~60 s of pink noise with speech-like bursts (harmonic, formant-shaped, syllable-rate
modulated), so the gate opens and closes as it would in use. Single thread: the front end's work
is small FFTs and matrix products, and a node runs it on one core.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import json
import sys
import time
from pathlib import Path

import numpy as np

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensors.analog import AnalogConfig, AnalogFrontEnd, open_intervals  # noqa: E402
from sensors.analog import testbench as sc  # noqa: E402

TARGET_X_REALTIME = 2000
TARGET_CROSSBAR_X_REALTIME = 1000  # the whole front end with the crossbar decision (rule crossbar)
SECONDS = 60.0
REPEATS = 10  # best-of: the machine is shared, and the least disturbed run is the honest figure
CHUNKS_S = {"whole": None, "chunk_1s": 1.0, "chunk_100ms": 0.1}


def speech_like_bursts(seconds: float, rng: np.random.Generator, sr: int = sc.SR) -> np.ndarray:
    """Voiced-sounding bursts: a pitch harmonic series through two formant bumps, 4 Hz syllables."""
    n = int(seconds * sr)
    out = np.zeros(n, np.float32)
    t_burst = 1.2
    m = int(t_burst * sr)
    t = np.arange(m) / sr
    for start in np.arange(2.0, seconds - t_burst, 3.0):
        f0 = rng.uniform(100.0, 220.0)
        formants = rng.uniform(400.0, 900.0), rng.uniform(1100.0, 2500.0)
        x = np.zeros(m)
        for k in range(1, int(4000.0 // f0)):
            f = k * f0
            amp = sum(np.exp(-((f - fm) / 150.0) ** 2) for fm in formants) + 0.05
            x += amp * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        x *= 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t))  # syllable envelope
        i = int(start * sr)
        out[i:i + m] = x
    return out


def bench_input(seconds: float = SECONDS, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = sc.at_dbfs(sc.pink_noise(int(seconds * sc.SR), rng), -45.0)
    return noise + sc.at_dbfs(speech_like_bursts(seconds, rng), -30.0)


def x_realtime(fe: AnalogFrontEnd, x: np.ndarray, chunk_s: float | None,
               repeats: int = REPEATS) -> tuple[float, float]:
    """Best-of-``repeats`` throughput against the wall clock and against this process's CPU time.

    The CPU-time figure is what one core delivers when other jobs share the machine; the wall
    figure is the goal's definition and is the lower of the two.
    """
    chunk = None if chunk_s is None else int(chunk_s * fe.sample_rate)
    wall = cpu = np.inf
    for _ in range(repeats):
        fe.reset()
        w0, c0 = time.perf_counter(), time.process_time()
        fe.process_all(x, chunk_samples=chunk)
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    audio_s = x.size / fe.sample_rate
    return audio_s / wall, audio_s / max(cpu, 1e-9)


def run() -> dict:
    x = bench_input()
    fe = AnalogFrontEnd(config=AnalogConfig())
    fe.process(x[:16000])  # warm caches and FFT plans outside the timed runs
    speeds = {name: x_realtime(fe, x, chunk_s) for name, chunk_s in CHUNKS_S.items()}
    fe.reset()
    block = fe.process(x)
    xfe = AnalogFrontEnd(config=AnalogConfig(decision={"rule": "crossbar"}))
    xfe.process(x[:16000])
    xspeeds = {name: x_realtime(xfe, x, chunk_s) for name, chunk_s in CHUNKS_S.items()}
    xfe.reset()
    xblock = xfe.process(x)
    return {
        "analog_x_realtime": round(speeds["whole"][0], 1),
        "analog_x_realtime_target": TARGET_X_REALTIME,
        "analog_x_realtime_cpu": round(speeds["whole"][1], 1),
        "analog_x_realtime_chunk_1s": round(speeds["chunk_1s"][0], 1),
        "analog_x_realtime_chunk_100ms": round(speeds["chunk_100ms"][0], 1),
        "audio_s": x.size / fe.sample_rate,
        "repeats": REPEATS,
        "channels": fe.n_channels,
        "gate_duty_cycle": round(float(block.open.mean()), 4),
        "gate_openings": sum(e.kind == "open" for e in block.events),
        "analog_crossbar_x_realtime": round(xspeeds["whole"][0], 1),
        "analog_crossbar_x_realtime_target": TARGET_CROSSBAR_X_REALTIME,
        "analog_crossbar_x_realtime_cpu": round(xspeeds["whole"][1], 1),
        "analog_crossbar_x_realtime_chunk_1s": round(xspeeds["chunk_1s"][0], 1),
        "analog_crossbar_x_realtime_chunk_100ms": round(xspeeds["chunk_100ms"][0], 1),
        "crossbar_macs_per_tick": xfe.crossbar.net.macs_per_tick,
        "crossbar_gate_duty_cycle": round(float(xblock.open.mean()), 4),
    }


SENTENCES = (
    "Turn on the kitchen lights please.",
    "What is the weather going to be like tomorrow morning?",
    "Set a timer for twelve minutes and remind me to check the oven.",
    "Play some quiet music in the living room.",
)


def quality(seeds: range = range(5), voices: tuple[str, ...] = ("en-us", "en+f3")) -> dict:
    """Speech coverage in pink noise and duty cycle on stationary inputs, per board seed."""
    out: dict = {"coverage_pink": {}, "duty_stationary": {}}
    for voice in voices:
        clean = sc.speech_scene([sc.espeak(s, voice) for s in SENTENCES])
        for snr in (5.0, 10.0, 20.0):
            for seed in seeds:
                noise = sc.pink_noise(clean.size, np.random.default_rng(1000 + seed))
                mix, mask = sc.mix_at_snr(clean, noise, snr_db=snr, noise_dbfs=-40.0)
                cfg = AnalogConfig(nonideal={"seed": seed})
                block = AnalogFrontEnd(config=cfg).process(mix)
                m = mask[:block.n_ticks]
                out["coverage_pink"][f"{voice} snr{snr:g} seed{seed}"] = {
                    "coverage": round(sc.coverage(block.open, mask), 4),
                    "coverage_preroll_200ms": round(sc.coverage(block.open, mask, preroll_ticks=20), 4),
                    "open_in_non_speech": round(float(block.open[~m].mean()), 4),
                }
    n = 30 * sc.SR
    for seed in seeds:
        cfg = AnalogConfig(nonideal={"seed": seed})
        rng = np.random.default_rng(50 + seed)
        inputs = {"silence": np.zeros(n, np.float32)}
        for level in (-60.0, -40.0, -20.0):
            inputs[f"white{level:g}"] = sc.at_dbfs(sc.white_noise(n, rng), level)
            inputs[f"pink{level:g}"] = sc.at_dbfs(sc.pink_noise(n, rng), level)
            inputs[f"hum50{level:g}"] = sc.at_dbfs(sc.hum(n, rng=rng), level)
        for name, x in inputs.items():
            block = AnalogFrontEnd(config=cfg).process(x)
            out["duty_stationary"][f"{name} seed{seed}"] = {
                "duty": round(sc.duty(block.open), 4), "duty_after_3s": round(sc.duty(block.open, skip_ticks=300), 4)}
    out["step_open_s"] = {}
    quiet, loud = sc.pink_noise(5 * sc.SR, np.random.default_rng(7)), sc.pink_noise(n, np.random.default_rng(8))
    for seed in seeds:
        # A steady source switching on 45 dB above the old floor (a fan): how long the gate stays open.
        x = np.concatenate([sc.at_dbfs(quiet, -75.0), sc.at_dbfs(loud, -30.0)])
        events = AnalogFrontEnd(config=AnalogConfig(nonideal={"seed": seed})).process(x).events
        spans = open_intervals(events, x.size / sc.SR)
        out["step_open_s"][f"pink -75->-30 dBFS seed{seed}"] = round(sum(b - a for a, b in spans), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    result = run()
    if "--quality" in argv:
        result["quality"] = quality()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
