"""One Wyoming audio stream through the node's cascade: PCM in, wake-word detections out (audio time).

The whole cascade runs, as in ``gate-node run`` and ``replay``: the analog front end hears every
sample, the KWS only what arrived while the gate was open, and the ledger is charged on the
stream's audio clock. A detection is reported the moment the KWS fires (its audio time, ms since
audio-start), not when the segmenter has cut the segment around it. With the on-node second stage
enabled, a detection is reported only once the second stage has accepted the segment, which is
``segmenter.command_window_s`` later.

Each audio-start is a power-up: the clock, the stages and the ledger start from zero.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gate.wyoming.audio import PcmConverter, PcmFormat

if TYPE_CHECKING:
    from gate.config import GateSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WakeWord:
    """What the service announces: the model's id (the name clients ask for) and its phrase."""

    name: str
    phrase: str
    model_path: str
    description: str
    version: str | None = None


def wake_word_of(settings: GateSettings) -> WakeWord:
    """The configured model as a wake word: its card's phrase (else gate's wake phrase) and an id made of it."""
    from gate.kws.stage import default_model_path, read_card
    from gate_core.vocabulary import WAKE_PHRASE

    kws = settings.kws
    path = Path(kws.model_path) if kws.model_path else default_model_path(kws.feature_kind)
    card = read_card(path) if path.is_file() else {}
    phrase = str(card.get("phrase") or (WAKE_PHRASE if not kws.model_path else path.stem.replace("_", " ")))
    name = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_") or path.stem
    desc = f"{phrase} ({card.get('model', path.stem)}, {kws.feature_kind}, analog-gated int8 KWS)"
    version = card.get("version")
    return WakeWord(name=name, phrase=phrase, model_path=str(path), description=desc,
                    version=str(version) if version is not None else None)


class _Tap:
    """The cascade's KWS, passed through; keeps each detection the KWS fires as the cascade feeds it."""

    def __init__(self, kws: Any) -> None:
        self.kws = kws
        self.fired: list[float] = []

    @property
    def inferences(self) -> int:
        return self.kws.inferences

    def reset(self, t0_s: float = 0.0) -> None:
        self.kws.reset(t0_s)

    def process(self, samples: np.ndarray) -> list:
        dets = self.kws.process(samples)
        self.fired.extend(d.t_s for d in dets)
        return dets


@dataclass(slots=True)
class StreamStats:
    audio_s: float = 0.0
    detections: int = 0
    segments: int = 0
    rejected: int = 0
    gate_opens: int = 0


class StreamDetector:
    """A connection's cascade, reused for each of its streams. Not thread-safe: one stream at a time."""

    def __init__(self, settings: GateSettings, *, on_segment: Callable[[Any], None] | None = None) -> None:
        from gate.cascade import Cascade
        from gate.energy import ANALOG_GATE, EnergyLedger
        from gate.kws import KeywordSpotter

        self.settings = settings
        self.ledger = EnergyLedger(always_on=(ANALOG_GATE,))
        self._tap = _Tap(KeywordSpotter.from_config(settings.kws, settings.audio.sample_rate))
        self.cascade = Cascade.from_config(settings, ledger=self.ledger, kws=self._tap, on_segment=on_segment)
        # With a second stage, only what it accepts is a detection.
        self.confirmed = self.cascade.second_stage is not None
        self._converter: PcmConverter | None = None
        self.stats = StreamStats()

    @property
    def started(self) -> bool:
        return self._converter is not None

    def start(self, fmt: PcmFormat) -> None:
        self.cascade.reset()
        self.ledger.reset()
        self._tap.fired.clear()
        self._converter = PcmConverter(fmt)
        self.stats = StreamStats()

    def feed(self, data: bytes, fmt: PcmFormat) -> list[float]:
        """Audio bytes in ``fmt``; the audio times (s since the stream's start) of detections they completed."""
        conv = self._converter
        if conv is None:
            raise RuntimeError("feed before start")
        if fmt != conv.fmt:
            log.info("stream format changed from %s to %s; resampler restarted", conv.fmt, fmt)
            conv = self._converter = PcmConverter(fmt)
        x = conv.convert(data)
        return self._run(x) if x.size else []

    def stop(self) -> list[float]:
        """End of stream: the segment being collected ends with the audio. Detections it completed."""
        if self._converter is None:
            return []
        self._converter = None
        return self._collect(self.cascade.flush())

    def _run(self, x: np.ndarray) -> list[float]:
        self.stats.audio_s += x.size / self.cascade.sample_rate
        return self._collect(self.cascade.process(x))

    def _collect(self, out: Any) -> list[float]:
        self.stats.gate_opens += sum(1 for ev in out.events if ev.kind == "open")
        self.stats.segments += len(out.segments)
        self.stats.rejected += len(out.rejected)
        if self.confirmed:
            found = [p.segment.t_detect_s for p in out.segments]
        else:
            found, self._tap.fired[:] = list(self._tap.fired), []
        self.stats.detections += len(found)
        return found

    def energy_line(self) -> str:
        """The stream's ledger, priced for the configured profile, as one log line."""
        from gate.energy import EnergyModel

        b = EnergyModel.from_profile(self.settings.energy.profile).price(self.ledger.snapshot())
        stages_j = b.node_j - b.host_j
        return (f"{b.audio_seconds:.2f} s of audio, {self.stats.gate_opens} gate opening(s), "
                f"{self.stats.detections} detection(s); stages {stages_j * 1000:.3f} mJ, host {b.host_j:.2f} J "
                f"on profile {b.profile}")
