"""Replay: the node's cascade over audio files, as fast as the CPU allows or paced to real time.

Each file is its own stream with a fresh cascade (a new recording, a new power-up) and its own
audio clock. Counts go to a per-file ledger that joins the run's totals only when the whole file
was read, so a file that turns out corrupt half-way leaves no partial counts behind.

Radio: with a broker the transport publishes every segment and charges the bytes it really put
on the wire (status, acks, verdicts, CONNECT and SUBSCRIBE included) to a run-wide ledger. Without
one, each file is charged what publishing would cost (gate.energy.wire, the transport's own
arithmetic). Either way the link's keepalives are charged on the audio clock: one PINGREQ/PINGRESP
per ``mqtt.keepalive_s`` of audio.

Cloud: with the embedded broker a private `gate-cloud serve` worker verifies every segment (see
gate.cloud_leg). The ``cloud`` stage is charged one invocation and the segment's audio seconds per
published segment, whether or not a worker answered, so the cascade and the always-on-KWS
baseline are priced alike; the worker's own meter is reported beside it (the report's ``cloud``).

Evaluation extras (they cost CPU but charge nothing): every KWS posterior is recorded (the DET
curve and `gate-node tune` sweep the threshold over them without re-running audio), and with
``reference_kws`` a second spotter hears ALL the audio, as the always-on-KWS baseline would, so
its misses can be compared with the cascade's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gate.cascade import Cascade, Published, Rejected
from gate.config import GateSettings
from gate.energy import (
    ADC,
    ANALOG_GATE,
    CLOUD,
    ENCODER,
    FEATURES_KWS,
    RADIO,
    EnergyLedger,
    EnergyModel,
    LedgerSnapshot,
    StageCounts,
    wire_bytes,
)
from gate.energy.wire import TLS_RECORD_OVERHEAD_B
from gate.report import build_report
from gate.report_schema import (
    CloudInfo,
    Detection,
    DetectorInfo,
    FailedInput,
    KwsInfo,
    KwsTraces,
    MeasuredCloud,
    RadioInfo,
    RejectedDetection,
    ReplayReport,
    SecondStageRecord,
    Timeline,
    TraceRun,
)
from gate.transport.config import MqttConfig, estimated_session, uses_tls
from gate_core.errors import AudioInputError, GateError
from gate_core.wire import NodeTopics, Verdict
from sensors.analog.events import GateEvent, open_intervals
from sensors.wavfile import AudioFileSource

log = logging.getLogger(__name__)

REALTIME_BLOCK = 320  # 20 ms: what a live node gets per PortAudio callback
LEVEL_HOP_S = 0.1  # resolution of the audio level kept for the report's timeline
DEFAULT_VERDICT_IDLE_S = 10.0  # give up waiting for verdicts after this long without a new one
NARROWBAND_HZ = 16_000  # below this the upper speech band is missing
EXTERNAL_VERDICT_WAIT_S = 5.0  # an external broker's service, if any: it may be busy with other nodes


@dataclass(slots=True)
class FileResult:
    path: str
    audio_seconds: float
    intervals: list[tuple[float, float]]
    counts: LedgerSnapshot
    n_ticks: int = 0
    detections: list[Detection] = field(default_factory=list)
    suppressed_detections: int = 0
    second_stage: SecondStageRecord | None = None  # None: no second stage on the node
    trace: list[TraceRun] = field(default_factory=list)  # gated KWS posterior runs
    reference_trace: list[TraceRun] = field(default_factory=list)  # always-on KWS posteriors
    reference_detections: list[float] = field(default_factory=list)
    level_db: list[float] = field(default_factory=list)


class EstimatedRadio:
    """Stands in for the transport when there is no broker: charges what the transport would put on
    the wire. A recording is a power-up: one connect (CONNECT, SUBSCRIBE and their acks), then each
    segment's bytes and the keepalives of its audio (see estimated_session). ``link=False`` (a node
    with no KWS, which never publishes) holds no link and is charged nothing."""

    def __init__(self, *, ledger: EnergyLedger, mqtt: MqttConfig, link: bool = True) -> None:
        self.ledger = ledger
        self.topic_len = len(NodeTopics(mqtt.node_id, mqtt.topic_prefix).segments.encode())
        self.qos = max(1, mqtt.qos)
        self.tls_overhead = TLS_RECORD_OVERHEAD_B if uses_tls(mqtt) else 0
        self.session = estimated_session(mqtt)
        self.link = link
        if link:
            self.ledger.charge(RADIO, nbytes=self.session.connect)

    def publish_segment(self, payload: bytes, *, segment_id: str) -> None:
        self.ledger.charge(RADIO, invocations=1, nbytes=wire_bytes(len(payload), topic_len=self.topic_len,
                                                                   qos=self.qos, tls_record_overhead=self.tls_overhead))

    def keepalive(self, elapsed_audio_s: float) -> None:
        if self.link:
            self.ledger.charge(RADIO, nbytes=self.session.keepalives(elapsed_audio_s)[1])


class RecordingSpotter:
    """Wraps a KeywordSpotter and keeps every posterior, one run per gate opening.

    The cascade resets the spotter at each opening, which clears its scores; they are moved into
    ``runs`` first.
    """

    def __init__(self, kws: Any, path: str) -> None:
        self.kws = kws
        self.path = path
        kws.keep_scores = True
        self.runs: list[TraceRun] = []

    @property
    def inferences(self) -> int:
        return self.kws.inferences

    @property
    def detector(self) -> Any:
        return self.kws.detector

    def reset(self, t0_s: float = 0.0) -> None:
        self.harvest()
        self.kws.reset(t0_s)

    def process(self, samples: np.ndarray) -> list:
        return self.kws.process(samples)

    def harvest(self) -> None:
        scores = getattr(self.kws, "scores", [])
        if scores:
            self.runs.append(TraceRun(path=self.path, t0_s=round(scores[0].t_s, 6),
                                      p=[round(s.posterior, 4) for s in scores]))
            self.kws.scores = []


class LevelMeter:
    """Mean power per LEVEL_HOP_S of the input, in dBFS: the timeline's audio track."""

    def __init__(self, sample_rate: int) -> None:
        self.hop = int(round(LEVEL_HOP_S * sample_rate))
        self._rest = np.zeros(0, np.float64)
        self.db: list[float] = []

    def push(self, x: np.ndarray) -> None:
        buf = np.concatenate([self._rest, x.astype(np.float64) / 32768.0])
        n = buf.size // self.hop
        if n:
            ms = np.mean(buf[:n * self.hop].reshape(n, self.hop) ** 2, axis=1)
            self.db.extend(np.round(10 * np.log10(ms + 1e-12), 1).tolist())
        self._rest = buf[n * self.hop:]


def load_kws(settings: GateSettings) -> tuple[Any | None, str | None]:
    """The configured KWS, or (None, why) when its model or interpreter is not available."""
    from gate.kws import KeywordSpotter

    try:
        return KeywordSpotter.from_config(settings.kws, settings.audio.sample_rate), None
    except GateError as exc:
        return None, str(exc)


def second_stage_record(cascade: Cascade, rejected: list[Rejected]) -> SecondStageRecord:
    """What the on-node second stage did in a file: candidates checked, and the ones it kept off the radio."""
    n = cascade.counts()
    return SecondStageRecord(
        checks=n["second_checks"], rejected=n["second_rejected"],
        rejected_detections=[RejectedDetection(detect_s=round(r.segment.t_detect_s, 6),
                                               kws_score=round(r.segment.score, 6),
                                               second_stage_score=round(r.score, 6)) for r in rejected])


def replay_file(path: Path, *, settings: GateSettings, kws: Any | None, publisher: Any | None = None,
                realtime: bool = False, reference_kws: Any | None = None,
                progress: Callable[[float], None] | None = None) -> FileResult:
    """The whole cascade over one file (and the always-on reference spotter, if given)."""
    source = AudioFileSource(path, target_rate=settings.audio.sample_rate)
    if source.info.sample_rate < NARROWBAND_HZ:
        log.warning("%s: %d Hz audio is narrowband (nothing above %d Hz); models trained on %d Hz speech "
                    "miss most wake words in it unless trained with augment.channel_prob", path,
                    source.info.sample_rate, source.info.sample_rate // 2, settings.audio.sample_rate)
    ledger = EnergyLedger(always_on=(ANALOG_GATE,))
    if publisher is None:
        publisher = EstimatedRadio(ledger=ledger, mqtt=settings.mqtt, link=kws is not None)
    recorder = RecordingSpotter(kws, str(path)) if kws is not None else None
    cascade = Cascade.from_config(settings, ledger=ledger, publisher=publisher, kws=recorder,
                                  wall_clock=time.time if realtime else None)
    if reference_kws is not None:
        reference_kws.keep_scores = True
        reference_kws.reset(0.0)
    level = LevelMeter(cascade.sample_rate)
    events: list[GateEvent] = []
    published: list[Published] = []
    rejected: list[Rejected] = []
    reference_hits: list[float] = []
    t_start = time.monotonic()
    for block in source.blocks():
        pieces = [block[i:i + REALTIME_BLOCK] for i in range(0, block.size, REALTIME_BLOCK)] if realtime else [block]
        for piece in pieces:
            if realtime:
                _wait_until(t_start + (cascade.t_s + piece.size / cascade.sample_rate))
            out = cascade.process(piece)
            events.extend(out.events)
            published.extend(out.segments)
            rejected.extend(out.rejected)
            level.push(piece)
            if reference_kws is not None:
                reference_hits.extend(d.t_s for d in reference_kws.process(piece))
            if progress is not None:
                progress(piece.size / cascade.sample_rate)
    tail = cascade.flush()
    published.extend(tail.segments)
    rejected.extend(tail.rejected)
    audio_s = cascade.t_s
    keepalive = getattr(publisher, "keepalive", None)  # the link's pings over this file's audio
    if keepalive is not None:
        keepalive(audio_s)
    trace: list[TraceRun] = []
    if recorder is not None:
        recorder.harvest()
        trace = recorder.runs
    reference_trace: list[TraceRun] = []
    if reference_kws is not None:
        rec = RecordingSpotter(reference_kws, str(path))
        rec.harvest()
        reference_trace = rec.runs
    return FileResult(path=str(path), audio_seconds=audio_s, intervals=open_intervals(events, audio_s),
                      counts=ledger.snapshot(), n_ticks=cascade.counts()["ticks"],
                      detections=[Detection(path=str(path), **p.record, verdict=None) for p in published],
                      suppressed_detections=cascade.suppressed_detections,
                      second_stage=(second_stage_record(cascade, rejected)
                                    if cascade.second_stage is not None else None),
                      trace=trace, reference_trace=reference_trace, reference_detections=reference_hits,
                      level_db=level.db)


def replay_files(paths: Iterable[Path], *, settings: GateSettings, broker: str | None = None,
                 realtime: bool = False, verdict_wait_s: float | None = None,
                 labels: dict[str, list] | None = None, kws: Any | None | str = "auto",
                 cloud: bool | None = None, reference: bool | None = None,
                 progress: Callable[[float], None] | None = None) -> ReplayReport:
    """Replay every file; unreadable ones are listed in ``failed_inputs`` and the rest still count.

    ``cloud``: start a private cloud worker (default: with the embedded broker only; an external
    broker is assumed to have its own service). ``reference``: also run the always-on reference
    spotter (default: when there are labels to score it against). ``verdict_wait_s``: give up
    waiting for verdicts after this long without a new one.
    """
    model = EnergyModel.from_profile(settings.energy.profile, settings.energy.grid_g_co2e_per_kwh)
    kws_note = None
    if kws == "auto":
        kws, kws_note = load_kws(settings)
        if kws is None:
            log.warning("replay without the KWS stage: %s", kws_note)
    if cloud is None:
        cloud = broker == "embedded"
    if reference is None:
        reference = labels is not None
    reference_kws = None
    if reference and kws is not None:
        reference_kws, _ = load_kws(settings)
    results: list[FileResult] = []
    failed: list[FailedInput] = []
    verdicts: dict[str, Verdict] = {}
    transport_counts = LedgerSnapshot()
    transport_stats = None
    cloud_reason: str | None = None
    worker = None
    with ExitStack() as stack:
        transport, broker_url = _open_transport(settings, broker, verdicts, stack)
        if transport is not None and cloud and kws is not None:
            worker, cloud_reason = _start_cloud(broker_url, settings, stack)
        elif transport is not None and not cloud:
            cloud_reason = ("no cloud worker requested: verdicts not available" if broker == "embedded" else
                            "external broker: verdicts come from whatever service is subscribed to it")
        elif transport is None:
            cloud_reason = "no broker: segments were not sent"
        else:
            cloud_reason = "no KWS: nothing to verify"
        if transport is not None:
            if verdict_wait_s is None:
                # A private broker with no worker of ours has nobody to answer.
                verdict_wait_s = (DEFAULT_VERDICT_IDLE_S if worker is not None
                                  else 0.0 if broker == "embedded" else EXTERNAL_VERDICT_WAIT_S)
            # Before any segment is published: keep segments until answered only if someone may answer.
            transport.set_await_verdict(_await_verdict_s(settings.mqtt.await_verdict_s, verdict_wait_s))
        for path in paths:
            try:
                results.append(replay_file(Path(path), settings=settings, kws=kws, publisher=transport,
                                           realtime=realtime, reference_kws=reference_kws, progress=progress))
            except AudioInputError as exc:
                log.info("skipping %s: %s", path, exc)
                failed.append(FailedInput(path=str(path), error=exc.args[0], code=exc.code))
        if transport is not None:
            n_segments = sum(len(r.detections) for r in results)
            if not transport.flush(settings.node.flush_timeout_s):
                st = transport.stats()
                log.warning("replay: %d segment(s) not acknowledged by the broker", st.pending - st.awaiting)
            if verdict_wait_s > 0:
                _await_verdicts(verdicts, n_segments, idle_s=verdict_wait_s,
                                alive=(lambda: worker.alive) if worker is not None else (lambda: True))
            transport_stats = transport.stats()
            # The verdicts were waited for just above; the spool is a temporary directory.
            transport.close(timeout=settings.node.flush_timeout_s, wait_answers=False)
            transport_counts = transport.ledger.snapshot()
    # The ExitStack has stopped the worker (its summary is written on SIGTERM) and the broker.
    measured: dict[str, Any] = {}
    if worker is not None:
        from gate.cloud_leg import measured_energy

        meter = measured_energy(worker.summary)
        measured["measured"] = MeasuredCloud.model_validate(meter) if meter is not None else None
    cloud_info = CloudInfo(worker="gate-cloud serve (subprocess)" if worker is not None else None,
                           # An external broker's service counts too once it has answered.
                           available=worker is not None or bool(verdicts), reason=cloud_reason,
                           verdicts=len(verdicts), **measured)
    for r in results:
        r.detections = [d.model_copy(update={"verdict": verdicts.get(d.segment_id)}) for d in r.detections]
    dets = [d for r in results for d in r.detections]
    # One cloud invocation per published segment, priced per audio second by the profile.
    cloud_counts = LedgerSnapshot(stages={CLOUD: StageCounts(
        invocations=len(dets), active_seconds=sum(d.end_s - d.start_s for d in dets))})
    # Stages the node ran; the cloud stage is charged whenever segments were cut (see the module doc).
    stages = [ANALOG_GATE, ADC] + ([FEATURES_KWS, ENCODER, RADIO] if kws is not None else [])
    radio = (RadioInfo(mode="broker", broker=broker, delivered=transport_stats.delivered,
                       pending=transport_stats.pending) if transport_stats is not None
             else RadioInfo(mode="estimated", broker=None))
    traces = KwsTraces(detector=_detector_params(settings, kws), gated=[run for r in results for run in r.trace],
                       always_on=[run for r in results for run in r.reference_trace] if reference_kws else None)
    report = build_report(results=results, failed=failed, settings=settings, model=model, stages_run=stages,
                          kws=KwsInfo(available=kws is not None, reason=kws_note), radio=radio, cloud=cloud_info,
                          kws_traces=traces,
                          timeline=Timeline(level_hop_s=LEVEL_HOP_S, level_dbfs={r.path: r.level_db for r in results}),
                          extra_counts=transport_counts.add(cloud_counts), kws_hop_s=_kws_hop_s(settings, kws))
    if labels is not None:
        from gate.report import add_detection_metrics

        reference_dets = {r.path: r.reference_detections for r in results} if reference_kws is not None else None
        report = add_detection_metrics(report, labels, reference_detections=reference_dets)
    return report


def _open_transport(settings: GateSettings, broker: str | None, verdicts: dict[str, Verdict],
                    stack: ExitStack) -> tuple[Any | None, str | None]:
    """An MQTT transport (and the embedded broker) when ``broker`` is given; (None, None) otherwise."""
    if broker is None:
        return None, None
    import tempfile

    from gate.node import open_transport
    from gate.transport.broker import EmbeddedBroker
    from gate.transport.spool import Spool

    url = broker
    if broker == "embedded":
        url = stack.enter_context(EmbeddedBroker()).url
    spool_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="gate-replay-spool-"))
    s = settings.model_copy(deep=True)
    s.mqtt.spool_dir = spool_dir
    transport = open_transport(s, ledger=EnergyLedger(), boot_id=None, broker=url, stack=stack,
                               on_verdict=lambda v: verdicts.__setitem__(v.segment_id, v),
                               spool=Spool(spool_dir, max_bytes=int(s.mqtt.spool_max_mb * 2**20), fsync=False))
    transport.start()
    stack.callback(transport.close, timeout=s.node.flush_timeout_s)
    if not transport.wait_connected(10.0):
        raise GateError(f"replay: broker {broker} did not accept a connection within 10 s", code="broker_unreachable")
    return transport, url


def _start_cloud(broker_url: str, settings: GateSettings, stack: ExitStack) -> tuple[Any | None, str | None]:
    try:
        from gate.cloud_leg import CloudUnavailable, CloudWorker

        return stack.enter_context(CloudWorker(broker_url, topic_prefix=settings.mqtt.topic_prefix)), None
    except (ImportError, CloudUnavailable, OSError) as exc:
        log.warning("no cloud worker: verdicts not available (%s)", exc)
        return None, f"no cloud worker: verdicts not available ({exc})"


def _await_verdict_s(configured: float | None, verdict_wait_s: float) -> float | None:
    """The transport's ``await_verdict_s`` for a replay: off when nobody will answer (no verdict wait,
    e.g. ``--no-cloud`` or an embedded broker without a worker) or when the thresholds file turns it
    off; otherwise short enough that an unanswered segment is published again at least once before
    the replay stops waiting (``verdict_wait_s`` without a new verdict)."""
    if configured is None or verdict_wait_s <= 0:
        return None
    return min(configured, max(1.0, verdict_wait_s / 2))


def _await_verdicts(verdicts: dict[str, Verdict], n_segments: int, *, idle_s: float, alive: Callable[[], bool]) -> None:
    """Until every segment has its verdict, the worker dies, or ``idle_s`` pass without a new verdict."""
    seen, last = len(verdicts), time.monotonic()
    while len(verdicts) < n_segments and alive():
        if len(verdicts) != seen:
            seen, last = len(verdicts), time.monotonic()
        elif time.monotonic() - last >= idle_s:
            log.warning("replay: %d of %d verdict(s) did not arrive", n_segments - len(verdicts), n_segments)
            return
        time.sleep(0.05)


def _kws_hop_s(settings: GateSettings, kws: Any | None) -> float:
    if kws is not None:
        return float(kws.detector.period_s)
    from gate.kws.featurize import Featurizer

    return settings.kws.stride_frames * Featurizer(settings.kws.feature_kind, settings.audio.sample_rate).period_s


def _detector_params(settings: GateSettings, kws: Any | None) -> DetectorInfo | None:
    if kws is None:
        return None
    k = settings.kws
    from gate_core.metrics import segment_hold_s

    return DetectorInfo(threshold=float(kws.detector.threshold), smoothing_s=k.smoothing_s,
                        min_consecutive=k.min_consecutive, refractory_s=k.refractory_s,
                        period_s=float(kws.detector.period_s), hold_s=segment_hold_s(settings.segmenter))


def _wait_until(t: float) -> None:
    wait = t - time.monotonic()
    if wait > 0:
        time.sleep(wait)
