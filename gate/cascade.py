"""The node cascade: analog gate -> ADC path -> features + KWS -> segmenter -> encoder -> publisher.

One :meth:`Cascade.process` call takes a chunk of any size. The analog front end sees every
sample; everything after it sees only what the ADC would have digitised, and the KWS only what
arrived while the gate was open. Every timer counts samples of the audio clock, so the stages'
outputs and the ledger's counts do not depend on the chunk size or on how fast audio is fed.

The ADC path (what is charged, and why):
- It wakes at the gate-open instant and is charged from that instant, start-up included
  (``adc_startup_s``, from the energy profile's ``adc.startup_s``); it delivers samples only from
  the instant it is ready. One invocation per wake, so a profile's ``wake_j`` applies.
- At ready, the front end's always-on analog store hands over the last
  ``segmenter.analog_preroll_s`` of audio (Aspinity-style pre-roll). Digitising it is charged as
  ADC time and bytes, as if it ran at the normal rate: an upper bound, since no published figure
  says how fast the store is read out. Audio the ADC digitised in its previous run is still in the
  node's RAM (a second of 16 kHz int16 is 32 KB), so when a wake's pre-roll reaches back into that
  run only the rest is read out and charged. The store's own power is not priced separately: no
  figure for it is cited in ENERGY.md, so it is assumed to sit inside the analog_gate figure.
  With ``analog_preroll_s: 0`` nothing is assumed and the pre-roll holds only audio digitised
  since the ADC woke (the KWS and the segment then miss the first tens of ms of the word).
- It goes off when the gate closes, unless a segment is being collected: the node then holds it
  on until the command window ends, so a pause between wake word and command does not cut the
  command. That time is charged to the ADC too; the KWS does not run while the gate is closed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gate.encoder import EncodedSegment, SegmentEncoder
from gate.energy import (
    ADC,
    ANALOG_GATE,
    CROSSBAR,
    ENCODER,
    FEATURES_KWS,
    SECOND_STAGE,
    EnergyLedger,
    LedgerSnapshot,
    load_profile,
)
from gate.segmenter import Segment, Segmenter
from gate_core.detector import Detection
from gate_core.wire import new_id
from sensors.analog.events import GateEvent
from sensors.analog.frontend import AnalogFrontEnd

if TYPE_CHECKING:
    from gate.config import GateSettings

log = logging.getLogger(__name__)


class Spotter(Protocol):
    """What the cascade needs of a KWS stage (gate.kws.KeywordSpotter is one)."""

    inferences: int

    def reset(self, t0_s: float = 0.0) -> None: ...

    def process(self, samples: np.ndarray) -> list[Detection]: ...


class Checker(Protocol):
    """What the cascade needs of a second stage (gate.kws.second_stage.EmbeddingCheck is one)."""

    audio_s: float  # audio it has embedded so far, s (what the ledger charges it for)

    def verify(self, samples: np.ndarray, fired_at_s: float) -> tuple[bool, float]: ...


class Publisher(Protocol):
    """Where encoded segments go (gate.transport.mqtt.MqttTransport is one). It charges the radio."""

    def publish_segment(self, payload: bytes, *, segment_id: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Published:
    """A segment the cascade cut, encoded and handed to the publisher."""

    segment: Segment
    encoded: EncodedSegment

    @property
    def record(self) -> dict[str, Any]:
        s = self.segment
        return {"segment_id": self.encoded.segment_id, "seq": s.seq, "start_s": round(s.t_start_s, 6),
                "end_s": round(s.t_end_s, 6), "detect_s": round(s.t_detect_s, 6), "score": round(s.score, 6),
                "end_reason": s.end_reason, "preroll_clipped": s.preroll_clipped,
                "audio_bytes": self.encoded.audio_bytes, "payload_bytes": len(self.encoded.payload)}


@dataclass(slots=True)
class CascadeOutput:
    events: list[GateEvent] = field(default_factory=list)
    segments: list[Published] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)  # candidates the second stage kept off the radio


@dataclass(frozen=True, slots=True)
class Rejected:
    """A tiny-model candidate the on-node second stage rejected: not encoded, not uploaded."""

    segment: Segment
    score: float


@dataclass(slots=True)
class _Counters:
    """Integer sample counts: summed exactly, turned into seconds only when charged."""

    ticks: int = 0
    adc_wakes: int = 0
    adc_on: int = 0  # samples the ADC was powered (start-up and hold included)
    adc_digitised: int = 0  # samples it delivered (analog pre-roll included)
    kws_fed: int = 0
    kws_inferences: int = 0
    segments: int = 0
    segment_samples: int = 0
    encoded_bytes: int = 0
    second_checks: int = 0
    second_samples: int = 0  # audio the second stage embedded
    second_rejected: int = 0

    def minus(self, other: _Counters) -> _Counters:
        return _Counters(**{k: getattr(self, k) - getattr(other, k) for k in self.__slots__})

    def copy(self) -> _Counters:
        return _Counters(**{k: getattr(self, k) for k in self.__slots__})


class Cascade:
    def __init__(self, *, front: AnalogFrontEnd, segmenter: Segmenter, encoder: SegmentEncoder,
                 kws: Spotter | None, ledger: EnergyLedger, publisher: Publisher | None = None,
                 adc_startup_s: float = 0.0, sample_rate: int = 16_000,
                 on_segment: Callable[[Published], None] | None = None, second_stage: Checker | None = None) -> None:
        if front.sample_rate != sample_rate or segmenter.sample_rate != sample_rate:
            raise ValueError("front end, segmenter and cascade must share one sample rate")
        if ANALOG_GATE not in ledger.always_on:
            raise ValueError("the ledger must charge analog_gate on the audio clock: "
                             "EnergyLedger(always_on=('analog_gate',))")
        self.front = front
        self.segmenter = segmenter
        self.encoder = encoder
        self.kws = kws
        self.ledger = ledger
        self.publisher = publisher
        self.on_segment = on_segment
        self.second_stage = second_stage
        self.sample_rate = sample_rate
        self.startup = int(round(adc_startup_s * sample_rate))
        self.store = int(round(segmenter.config.analog_preroll_s * sample_rate))
        self.reset()

    @classmethod
    def from_config(cls, settings: GateSettings, *, ledger: EnergyLedger | None = None,
                    publisher: Publisher | None = None, kws: Spotter | None | str = "auto",
                    node_id: str | None = None, boot_id: str | None = None,
                    wall_clock: Callable[[], float] | None = None, adc_startup_s: float | None = None,
                    on_segment: Callable[[Published], None] | None = None,
                    second_stage: Checker | None | str = "auto") -> Cascade:
        """Build every stage from a GateSettings tree. ``kws="auto"`` loads the configured model, and
        ``second_stage="auto"`` the configured second stage when ``kws.second_stage.enabled``."""
        sr = settings.audio.sample_rate
        if kws == "auto":
            from gate.kws import KeywordSpotter

            kws = KeywordSpotter.from_config(settings.kws, sr)
        if adc_startup_s is None:
            adc_startup_s = adc_startup_of(settings.energy.profile)
        if second_stage == "auto":
            second_stage = load_second_stage(settings)
        encoder = SegmentEncoder(node_id=node_id or settings.mqtt.node_id, boot_id=boot_id or new_id(),
                                 codec=settings.segmenter.codec, sample_rate=sr, wall_clock=wall_clock)
        return cls(front=AnalogFrontEnd.from_config(settings.analog, sample_rate=sr),
                   segmenter=Segmenter.from_config(settings.segmenter, sr), encoder=encoder, kws=kws,
                   ledger=ledger if ledger is not None else EnergyLedger(always_on=(ANALOG_GATE,)),
                   publisher=publisher, adc_startup_s=adc_startup_s, sample_rate=sr, on_segment=on_segment,
                   second_stage=second_stage)

    # -- state ----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Power-up: clock at zero, every stage fresh (the ledger is the caller's to reset)."""
        self.front.reset()
        self.segmenter.reset()
        if self.kws is not None:
            self.kws.reset(0.0)
        self._pos = 0
        self._front_origin = 0  # stream index of the front end's own time zero (moves on reconfigure)
        self._hist = np.zeros(0, np.int16)  # the analog store: the last `store` samples before _pos
        self._gate_open = False
        self._adc_on = False
        self._ready_at = 0
        self._delivering = False
        self._kws_on = False
        self._digitised_to = 0  # stream index up to which the ADC has digitised (the RAM holds the last of it)
        self._n = _Counters()
        self._charged = _Counters()
        self._since_segment: LedgerSnapshot | None = None
        self.suppressed_detections = 0

    @property
    def t_s(self) -> float:
        return self._pos / self.sample_rate

    @property
    def gate_open(self) -> bool:
        return self._gate_open

    @property
    def adc_on(self) -> bool:
        return self._adc_on

    # -- processing -----------------------------------------------------------------------------

    def process(self, chunk: np.ndarray) -> CascadeOutput:
        x = np.asarray(chunk)
        if x.dtype != np.int16 or x.ndim != 1:
            raise TypeError("Cascade.process expects a 1-D int16 array")
        out = CascadeOutput()
        n0, n1 = self._pos, self._pos + x.size
        block = self.front.process(x)
        self._n.ticks += block.n_ticks
        out.events.extend(block.events)
        self.ledger.advance_audio(x.size / self.sample_rate)
        # Every event lies in (n0, n1]: a tick's event is stamped at the tick's last sample + 1.
        events = [(self._front_origin + int(round(ev.t_s * self.sample_rate)), ev.kind) for ev in block.events]
        store = np.concatenate([self._hist, x]) if self.store else x[:0]
        store_origin = n0 - self._hist.size
        pos, ei = n0, 0
        while True:
            while ei < len(events) and events[ei][0] <= pos:
                self._on_gate(events[ei][1], events[ei][0])
                ei += 1
            self._settle(pos, store, store_origin, out)
            if pos >= n1:
                break
            nxt = events[ei][0] if ei < len(events) else n1
            if self._adc_on and not self._delivering:
                nxt = min(nxt, self._ready_at)
            if self._delivering and not self._gate_open and self.segmenter.collecting:
                nxt = min(nxt, self.segmenter.pending_end)
            nxt = max(min(nxt, n1), pos + 1)
            self._piece(x[pos - n0:nxt - n0], pos, out)
            pos = nxt
        self._pos = n1
        if self.store:
            self._hist = store[-self.store:].copy()
        self._charge()
        return out

    def reconfigure(self, settings: GateSettings, *, kws: Spotter | None | str = "auto",
                    second_stage: Checker | None | str = "auto") -> None:
        """New analog, kws and segmenter settings between segments, keeping the audio clock.

        Everything new is built first, so a model that fails to load leaves the cascade untouched.
        The new front end starts as at power-up (gate closed, floors re-learning), so the ADC goes
        off with the old gate and the pre-roll of the next wake comes from the analog store again.
        """
        if self.segmenter.collecting:
            raise RuntimeError("reconfigure while a segment is being collected")
        sr = self.sample_rate
        if kws == "auto":
            kws = self.kws
            if kws is not None:
                from gate.kws import KeywordSpotter

                kws = KeywordSpotter.from_config(settings.kws, sr)
        second = load_second_stage(settings) if second_stage == "auto" else second_stage
        front = AnalogFrontEnd.from_config(settings.analog, sample_rate=sr)
        segmenter = Segmenter.from_config(settings.segmenter, sr)
        segmenter.n_segments = self.segmenter.n_segments  # seq counts segments of the boot, not of a config
        self._charge()
        self.front, self.segmenter, self.kws, self.second_stage = front, segmenter, kws, second
        self._front_origin = self._pos
        self.store = int(round(settings.segmenter.analog_preroll_s * sr))
        self._hist = self._hist[-self.store:] if self.store else self._hist[:0]
        self.encoder.codec = settings.segmenter.codec
        self._gate_open = self._kws_on = self._adc_on = self._delivering = False

    def swap_kws(self, kws: Spotter) -> None:
        """Put another keyword spotter in (an over-the-air release) between segments, keeping the audio
        clock: a spotter running on an open gate restarts on the next sample, nothing else changes."""
        if self.segmenter.collecting:
            raise RuntimeError("swap_kws while a segment is being collected")
        if self._kws_on:
            kws.reset(self._pos / self.sample_rate)
        self.kws = kws

    def flush(self) -> CascadeOutput:
        """End of stream: a segment being collected ends with the audio."""
        out = CascadeOutput()
        for seg in self.segmenter.flush():
            self._emit(seg, out)
        self._charge()
        return out

    def _on_gate(self, kind: str, at: int) -> None:
        if kind == "open":
            self._gate_open = True
            if not self._adc_on:
                self._adc_on = True
                self._n.adc_wakes += 1
                self._ready_at = at + self.startup
                self._delivering = False
        else:
            self._gate_open = False
            self._kws_on = False

    def _settle(self, pos: int, store: np.ndarray, store_origin: int, out: CascadeOutput) -> None:
        """Apply what the state implies at ``pos``: ADC ready, KWS (re)started, ADC off."""
        if self._adc_on and not self._delivering and pos >= self._ready_at:
            self._delivering = True
            lead = min(self.store, pos, pos - store_origin)
            self.segmenter.start_run(pos - lead)
            if lead:
                pre = store[pos - lead - store_origin:pos - store_origin]
                # Only the part of the pre-roll the ADC has not digitised already is read out of the store:
                # a wake soon after the last run finds the rest still in the node's RAM.
                fresh = lead - max(0, min(self._digitised_to, pos) - (pos - lead))
                self._n.adc_digitised += fresh
                self._n.adc_on += fresh
                self._digitised_to = pos
                if self._gate_open:
                    self._start_kws(pos - lead)
                self._feed(pre, pos - lead, out)
        if self._gate_open and self._delivering and not self._kws_on:
            self._start_kws(pos)
        if self._adc_on and not self._gate_open and not self.segmenter.collecting:
            if self._delivering:
                for seg in self.segmenter.stop_run():
                    self._emit(seg, out)
            self._adc_on = False
            self._delivering = False

    def _start_kws(self, at: int) -> None:
        if self.kws is not None:
            self.kws.reset(at / self.sample_rate)
        self._kws_on = True

    def _piece(self, x: np.ndarray, pos: int, out: CascadeOutput) -> None:
        if self._adc_on:
            self._n.adc_on += x.size
        if self._delivering:
            self._n.adc_digitised += x.size
            self._digitised_to = pos + x.size
            self._feed(x, pos, out)

    def _feed(self, x: np.ndarray, pos: int, out: CascadeOutput) -> None:
        detections: list[tuple[int, float]] = []
        if self._kws_on and self.kws is not None:
            before = self.kws.inferences
            for det in self.kws.process(x):
                detections.append((int(round(det.t_s * self.sample_rate)), det.score))
            self._n.kws_inferences += self.kws.inferences - before
            self._n.kws_fed += x.size
        was = self.segmenter.suppressed
        for seg in self.segmenter.push(x, start_sample=pos, detections=detections):
            self._emit(seg, out)
        self.suppressed_detections += self.segmenter.suppressed - was

    def _emit(self, seg: Segment, out: CascadeOutput) -> None:
        if self.second_stage is not None:
            before = self.second_stage.audio_s
            accepted, score = self.second_stage.verify(seg.samples, seg.t_detect_s - seg.t_start_s)
            self._n.second_checks += 1
            # The audio the check embedded: only the windows it needs, not the whole segment.
            self._n.second_samples += int(round((self.second_stage.audio_s - before) * self.sample_rate))
            if not accepted:
                self._n.second_rejected += 1
                out.rejected.append(Rejected(segment=seg, score=float(score)))
                return
        self._charge()
        now = self.ledger.snapshot()
        delta = now.subtract(self._since_segment) if self._since_segment is not None else now
        self._since_segment = now
        encoded = self.encoder.encode(seg, scores={"kws": float(seg.score)}, ledger_delta=delta.to_dict())
        self._n.segments += 1
        self._n.segment_samples += seg.n_samples
        self._n.encoded_bytes += encoded.audio_bytes
        published = Published(segment=seg, encoded=encoded)
        out.segments.append(published)
        if self.publisher is not None:
            self.publisher.publish_segment(encoded.payload, segment_id=encoded.segment_id)
        if self.on_segment is not None:
            self.on_segment(published)

    def _charge(self) -> None:
        d = self._n.minus(self._charged)
        self._charged = self._n.copy()
        sr = self.sample_rate
        if d.ticks:
            self.ledger.charge(ANALOG_GATE, invocations=d.ticks)
            if self.front.crossbar is not None:
                self.ledger.charge(CROSSBAR, invocations=d.ticks)  # one crossbar inference per tick
        if d.adc_wakes or d.adc_on or d.adc_digitised:
            self.ledger.charge(ADC, invocations=d.adc_wakes, active_seconds=d.adc_on / sr,
                               nbytes=2 * d.adc_digitised)
        if d.kws_inferences or d.kws_fed:
            self.ledger.charge(FEATURES_KWS, invocations=d.kws_inferences, active_seconds=d.kws_fed / sr)
        if d.second_checks:
            self.ledger.charge(SECOND_STAGE, invocations=d.second_checks, active_seconds=d.second_samples / sr)
        if d.segments:
            self.ledger.charge(ENCODER, invocations=d.segments, active_seconds=d.segment_samples / sr,
                               nbytes=d.encoded_bytes)

    def counts(self) -> dict[str, int]:
        """Raw integer counters (samples, not seconds): for tests and the report."""
        return {k: getattr(self._n, k) for k in self._n.__slots__}


def load_second_stage(settings: GateSettings) -> Checker | None:
    """The configured on-node second stage, or None when ``kws.second_stage.enabled`` is off. A profile
    that does not price the stage (MCU-class nodes, which cannot run it) is refused, naming the profile."""
    cfg = settings.kws.second_stage
    if not cfg.enabled:
        return None
    from gate_core.errors import ConfigError

    if SECOND_STAGE not in load_profile(settings.energy.profile).stages:
        raise ConfigError(f"kws.second_stage.enabled: energy profile {settings.energy.profile!r} does not price "
                          f"{SECOND_STAGE} (the second stage is for Pi-class nodes; MCU profiles leave it off)",
                          code="second_stage_profile")
    from gate.kws.second_stage import DEFAULT_SECOND_STAGE, EmbeddingCheck

    return EmbeddingCheck(model_path=cfg.model_path or DEFAULT_SECOND_STAGE, threshold=cfg.threshold)


@functools.lru_cache(maxsize=16)
def adc_startup_of(profile: str) -> float:
    """The ADC's start-up latency from a device profile (0 when the profile does not say).

    Cached: a replay builds one cascade per file, and parsing the profile YAML each time costs more
    than a short file's audio.
    """
    p = load_profile(profile)
    adc = p.stages.get(ADC)
    return float(adc.startup_s) if adc is not None else 0.0
