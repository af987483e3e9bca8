"""The service meters its own energy: process CPU time x server watts per busy core x PUE.

CPU time, not wall time, because an idle worker waiting on the broker costs the server (almost)
nothing extra; the server's idle floor belongs to whoever provisioned it, not to the segments.
Per-segment model cost is measured on the handling thread's CPU clock, so the replay report can
charge each node for exactly the audio it sent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from gate_core.cloud_config import ServerPowerConfig
from gate_core.ledger import J_PER_KWH


@dataclass(frozen=True, slots=True)
class EnergyReading:
    cpu_s: float
    joules: float  # at the wall socket of the data centre (PUE included)
    g_co2e: float

    def to_dict(self) -> dict[str, float]:
        return {"cpu_s": self.cpu_s, "joules": self.joules, "g_co2e": self.g_co2e}


class EnergyMeter:
    """Prices CPU seconds; the process clock is read relative to construction."""

    def __init__(self, power: ServerPowerConfig, *, process_clock=time.process_time) -> None:
        self.power = power
        self._clock = process_clock
        self._t0 = process_clock()
        self._lock = threading.Lock()
        self._model_cpu_s = 0.0
        self._audio_s = 0.0
        self._segments = 0

    def joules_for(self, cpu_s: float) -> float:
        return cpu_s * self.power.watts_per_busy_core * self.power.pue

    def reading(self, cpu_s: float) -> EnergyReading:
        j = self.joules_for(cpu_s)
        return EnergyReading(cpu_s, j, j / J_PER_KWH * self.power.grid_g_co2e_per_kwh)

    def process(self) -> EnergyReading:
        """Everything this process spent since start: models, decoding, MQTT, SQLite, idle polling."""
        return self.reading(max(0.0, self._clock() - self._t0))

    def add_segment(self, *, model_cpu_s: float, audio_s: float) -> None:
        with self._lock:
            self._model_cpu_s += model_cpu_s
            self._audio_s += audio_s
            self._segments += 1

    def summary(self) -> dict[str, Any]:
        proc = self.process()
        with self._lock:
            models = self.reading(self._model_cpu_s)
            audio_s, n = self._audio_s, self._segments
        return {
            "process": proc.to_dict(),
            "models": models.to_dict(),
            "segments": n,
            "audio_s": audio_s,
            # Comparable with a device profile's cloud.j_per_audio_s (which includes PUE too).
            "j_per_audio_s": proc.joules / audio_s if audio_s else None,
            "j_per_segment": proc.joules / n if n else None,
            "watts_per_busy_core": self.power.watts_per_busy_core,
            "pue": self.power.pue,
            "source": self.power.source,
        }


class ThreadCpuTimer:
    """CPU seconds of the calling thread across a ``with`` block (model inference cost per segment)."""

    __slots__ = ("_t0", "seconds")

    def __enter__(self) -> ThreadCpuTimer:
        self._t0 = time.thread_time()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.thread_time() - self._t0
