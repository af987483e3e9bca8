"""Replay: run the cascade's stages over audio files as fast as the CPU allows.

Each file is its own stream with a fresh front end (a new recording, a new power-up) and its own
audio clock. Counts go to a per-file ledger that joins the run's totals only when the whole file
was read, so a file that turns out corrupt half-way leaves no partial counts behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gate.audio import SAMPLE_WIDTH
from gate.config import GateSettings
from gate.energy import ADC, ANALOG_GATE, EnergyLedger, EnergyModel, LedgerSnapshot
from gate.errors import AudioInputError
from gate.report import build_report
from sensors.analog.events import open_intervals
from sensors.analog.frontend import AnalogFrontEnd
from sensors.wavfile import AudioFileSource

log = logging.getLogger(__name__)

STAGES_RUN = (ANALOG_GATE, ADC)


@dataclass(slots=True)
class FileResult:
    path: str
    audio_seconds: float
    intervals: list[tuple[float, float]]
    counts: LedgerSnapshot
    n_ticks: int = 0
    extra: dict = field(default_factory=dict)


def replay_file(path: Path, *, settings: GateSettings) -> FileResult:
    """The analog gate over one file; the ADC path is charged for the time the gate holds it awake."""
    source = AudioFileSource(path, target_rate=settings.audio.sample_rate)
    front = AnalogFrontEnd.from_config(settings.analog, sample_rate=settings.audio.sample_rate)
    events = []
    n_samples = 0
    n_ticks = 0
    for block in source.blocks():
        out = front.process(block)
        events.extend(out.events)
        n_samples += block.shape[0]
        n_ticks += out.n_ticks
    audio_s = n_samples / settings.audio.sample_rate
    intervals = open_intervals(events, audio_s)
    ledger = EnergyLedger()
    ledger.advance_audio(audio_s)
    ledger.charge(ANALOG_GATE, invocations=n_ticks, active_seconds=audio_s)
    open_s = sum(end - start for start, end in intervals)
    pcm_bytes = round(open_s * settings.audio.sample_rate) * SAMPLE_WIDTH
    ledger.charge(ADC, invocations=len(intervals), active_seconds=open_s, nbytes=pcm_bytes)
    return FileResult(path=str(path), audio_seconds=audio_s, intervals=intervals,
                      counts=ledger.snapshot(), n_ticks=n_ticks)


def replay_files(paths: Iterable[Path], *, settings: GateSettings) -> dict:
    """Replay every file; unreadable ones are listed in ``failed_inputs`` and the rest still count."""
    model = EnergyModel.from_profile(settings.energy.profile, settings.energy.grid_g_co2e_per_kwh)
    results: list[FileResult] = []
    failed: list[dict] = []
    for path in paths:
        try:
            results.append(replay_file(Path(path), settings=settings))
        except AudioInputError as exc:
            log.info("skipping %s: %s", path, exc)
            failed.append({"path": str(path), "error": exc.args[0], "code": exc.code})
    return build_report(results=results, failed=failed, settings=settings, model=model, stages_run=STAGES_RUN)
