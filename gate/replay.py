"""Replay: the node's cascade over audio files, as fast as the CPU allows or paced to real time.

Each file is its own stream with a fresh cascade (a new recording, a new power-up) and its own
audio clock. Counts go to a per-file ledger that joins the run's totals only when the whole file
was read, so a file that turns out corrupt half-way leaves no partial counts behind.

Radio: with a broker the transport publishes every segment and charges the bytes it really put
on the wire (status, acks and verdicts included) to a run-wide ledger. Without one, each segment
is charged what publishing it would cost (gate.energy.wire_bytes, the transport's own arithmetic).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gate.cascade import Cascade, Published
from gate.config import GateSettings
from gate.energy import (
    ADC,
    ANALOG_GATE,
    ENCODER,
    FEATURES_KWS,
    RADIO,
    EnergyLedger,
    EnergyModel,
    LedgerSnapshot,
    wire_bytes,
)
from gate.errors import AudioInputError, GateError
from gate.report import build_report
from gate.wire import NodeTopics
from sensors.analog.events import GateEvent, open_intervals
from sensors.wavfile import AudioFileSource

log = logging.getLogger(__name__)

REALTIME_BLOCK = 320  # 20 ms: what a live node gets per PortAudio callback


@dataclass(slots=True)
class FileResult:
    path: str
    audio_seconds: float
    intervals: list[tuple[float, float]]
    counts: LedgerSnapshot
    n_ticks: int = 0
    detections: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class EstimatedRadio:
    """Stands in for the transport when there is no broker: charges each segment's wire bytes."""

    def __init__(self, *, ledger: EnergyLedger, topic: str, qos: int) -> None:
        self.ledger = ledger
        self.topic_len = len(topic.encode())
        self.qos = qos

    def publish_segment(self, payload: bytes, *, segment_id: str) -> None:
        self.ledger.charge(RADIO, invocations=1, nbytes=wire_bytes(len(payload), topic_len=self.topic_len,
                                                                   qos=self.qos))


def load_kws(settings: GateSettings) -> tuple[Any | None, str | None]:
    """The configured KWS, or (None, why) when its model or interpreter is not available."""
    from gate.kws import KeywordSpotter

    try:
        return KeywordSpotter.from_config(settings.kws, settings.audio.sample_rate), None
    except GateError as exc:
        return None, str(exc)


def replay_file(path: Path, *, settings: GateSettings, kws: Any | None, publisher: Any | None = None,
                realtime: bool = False) -> FileResult:
    """The whole cascade over one file."""
    source = AudioFileSource(path, target_rate=settings.audio.sample_rate)
    ledger = EnergyLedger(always_on=(ANALOG_GATE,))
    if publisher is None:
        topic = NodeTopics(settings.mqtt.node_id, settings.mqtt.topic_prefix).segments
        publisher = EstimatedRadio(ledger=ledger, topic=topic, qos=max(1, settings.mqtt.qos))
    cascade = Cascade.from_config(settings, ledger=ledger, publisher=publisher, kws=kws,
                                  wall_clock=time.time if realtime else None)
    events: list[GateEvent] = []
    published: list[Published] = []
    t_start = time.monotonic()
    for block in source.blocks():
        pieces = [block[i:i + REALTIME_BLOCK] for i in range(0, block.size, REALTIME_BLOCK)] if realtime else [block]
        for piece in pieces:
            if realtime:
                _wait_until(t_start + (cascade.t_s + piece.size / cascade.sample_rate))
            out = cascade.process(piece)
            events.extend(out.events)
            published.extend(out.segments)
    published.extend(cascade.flush().segments)
    audio_s = cascade.t_s
    return FileResult(path=str(path), audio_seconds=audio_s, intervals=open_intervals(events, audio_s),
                      counts=ledger.snapshot(), n_ticks=cascade.counts()["ticks"],
                      detections=[{"path": str(path), **p.record, "verdict": None} for p in published],
                      extra={"suppressed_detections": cascade.suppressed_detections})


def replay_files(paths: Iterable[Path], *, settings: GateSettings, broker: str | None = None,
                 realtime: bool = False, verdict_wait_s: float | None = None,
                 labels: dict[str, list] | None = None, kws: Any | None | str = "auto") -> dict:
    """Replay every file; unreadable ones are listed in ``failed_inputs`` and the rest still count."""
    model = EnergyModel.from_profile(settings.energy.profile, settings.energy.grid_g_co2e_per_kwh)
    kws_note = None
    if kws == "auto":
        kws, kws_note = load_kws(settings)
        if kws is None:
            log.warning("replay without the KWS stage: %s", kws_note)
    results: list[FileResult] = []
    failed: list[dict] = []
    verdicts: dict[str, dict] = {}
    transport_counts = LedgerSnapshot()
    transport_stats = None
    with _maybe_transport(settings, broker, verdicts) as transport:
        for path in paths:
            try:
                results.append(replay_file(Path(path), settings=settings, kws=kws, publisher=transport,
                                           realtime=realtime))
            except AudioInputError as exc:
                log.info("skipping %s: %s", path, exc)
                failed.append({"path": str(path), "error": exc.args[0], "code": exc.code})
        if transport is not None:
            n_segments = sum(len(r.detections) for r in results)
            if not transport.flush(settings.node.flush_timeout_s):
                log.warning("replay: %d segment(s) not acknowledged by the broker", transport.stats().pending)
            wait = verdict_wait_s if verdict_wait_s is not None else (0.0 if broker == "embedded" else 5.0)
            deadline = time.monotonic() + wait
            while len(verdicts) < n_segments and time.monotonic() < deadline:
                time.sleep(0.05)
            transport_stats = transport.stats()
    if transport is not None:
        transport_counts = transport.ledger.snapshot()
    for r in results:
        for d in r.detections:
            d["verdict"] = verdicts.get(d["segment_id"])
    stages = [ANALOG_GATE, ADC] + ([FEATURES_KWS, ENCODER, RADIO] if kws is not None else [])
    report = build_report(results=results, failed=failed, settings=settings, model=model, stages_run=stages,
                          extra_counts=transport_counts)
    report["kws"] = {"available": kws is not None, "reason": kws_note}
    report["radio"] = ({"mode": "broker", "broker": broker, "delivered": transport_stats.delivered,
                        "pending": transport_stats.pending} if transport_stats is not None
                       else {"mode": "estimated", "broker": None})
    if labels is not None:
        from gate.report import score_detections

        report["scenario"] = score_detections(report["detections"], labels)
    return report


class _maybe_transport:
    """A context manager: an MQTT transport (and embedded broker) when ``broker`` is given, else None."""

    def __init__(self, settings: GateSettings, broker: str | None, verdicts: dict[str, dict]) -> None:
        self.settings, self.broker, self.verdicts = settings, broker, verdicts
        self.transport = None
        self._stack = None

    def __enter__(self):
        if self.broker is None:
            return None
        import tempfile
        from contextlib import ExitStack

        from gate.node import open_transport
        from gate.transport.spool import Spool

        self._stack = ExitStack()
        spool_dir = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="gate-replay-spool-"))
        settings = self.settings.model_copy(deep=True)
        settings.mqtt.spool_dir = spool_dir
        ledger = EnergyLedger()
        self.transport = open_transport(settings, ledger=ledger, boot_id=None, broker=self.broker, stack=self._stack,
                                        on_verdict=lambda v: self.verdicts.__setitem__(
                                            v.segment_id, v.model_dump(mode="json")),
                                        spool=Spool(spool_dir, max_bytes=int(settings.mqtt.spool_max_mb * 2**20),
                                                    fsync=False))
        self.transport.start()
        if not self.transport.wait_connected(10.0):
            self._stack.close()
            raise GateError(f"replay: broker {self.broker} did not accept a connection within 10 s",
                            code="broker_unreachable")
        return self.transport

    def __exit__(self, *exc) -> None:
        if self.transport is not None:
            self.transport.close(timeout=self.settings.node.flush_timeout_s)
        if self._stack is not None:
            self._stack.close()


def scenario_inputs(directory: Path) -> tuple[Path, list]:
    """(audio file, labels) of a ``gate-data scenario`` directory (scenario.json + labels.csv)."""
    import json

    from sensors.scenario import read_labels

    meta_path, labels_path = directory / "scenario.json", directory / "labels.csv"
    for p in (meta_path, labels_path):
        if not p.is_file():
            raise AudioInputError(f"{directory}: not a complete scenario (no {p.name})", code="scenario_incomplete")
    audio = directory / json.loads(meta_path.read_text())["audio"]
    return audio, read_labels(labels_path)


def _wait_until(t: float) -> None:
    wait = t - time.monotonic()
    if wait > 0:
        time.sleep(wait)
