"""Satellite mode: the node hears the room, and after each detection streams the segment it cut to a
Wyoming server (an ASR service such as wyoming-faster-whisper, or a pipeline server), instead of or
besides publishing it over MQTT.

Per segment, on one new connection, in wyoming's framing:
- ``transcribe`` (ASR servers): transcribe, audio-start, audio-chunks, audio-stop; the transcript
  that comes back is logged.
- ``run-pipeline`` (as a wyoming satellite with local wake-word detection does): detection,
  run-pipeline from the asr stage to the handle stage, then the audio; what the server answers is
  logged.
- ``audio``: audio-start, audio-chunks, audio-stop only.

With ``kws.federated.enabled`` the satellite collects as ``gate-node run`` does (gate.node's
``FederatedCollection``): with ``--broker`` to a broker the cloud listens on, windows labelled by the
cloud's verdicts and background windows; without one (or with the embedded broker) nobody sends verdicts
(a Wyoming server answers with transcripts), so it keeps background windows only and says so once.

Audio is 16 kHz mono 16-bit, the segment as the segmenter cut it (pre-roll, wake word, command).
The bytes are built and charged to the ledger's radio stage on the cascade's thread when the
segment is cut (TCP/IPv4 headers included, as for MQTT); a worker thread sends them, so a slow or
absent server never stalls listening. A segment that cannot be delivered is logged and dropped:
the Wyoming side has no spool (MQTT, when enabled as well, keeps its own).
"""

from __future__ import annotations

import io
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import read_event, write_event
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.wake import Detection

from gate_core.cliutil import one_line
from gate_core.errors import UsageError

if TYPE_CHECKING:
    from gate.config import GateSettings

log = logging.getLogger(__name__)

MODES = ("transcribe", "run-pipeline", "audio")
CHUNK_SAMPLES = 1024  # 64 ms at 16 kHz, what wyoming's own tools send
QUEUE_SEGMENTS = 8  # segments waiting for the worker; beyond this the oldest is dropped
# Answers after which nothing more is expected for a segment.
_FINAL = {"transcribe": {"transcript", "error"},
          "run-pipeline": {"handled", "not-handled", "error"},
          "audio": {"transcript", "handled", "not-handled", "error"}}


@dataclass(slots=True)
class UplinkStats:
    queued: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    bytes: int = 0


def parse_uri(uri: str) -> tuple[str, Any]:
    """('tcp', (host, port)) or ('unix', path); a UsageError naming the URI otherwise."""
    u = urlparse(uri)
    if u.scheme == "tcp":
        try:
            port = u.port
        except ValueError:
            port = None
        if not u.hostname or port is None:
            raise UsageError(f"--satellite-uri {uri!r}: give tcp://HOST:PORT", code="wyoming_uri")
        return "tcp", (u.hostname, port)
    if u.scheme == "unix" and u.path:
        return "unix", u.path
    raise UsageError(f"--satellite-uri {uri!r}: give tcp://HOST:PORT or unix://PATH", code="wyoming_uri")


def segment_events(samples: Any, *, mode: str, wake_name: str, detect_ms: int, language: str | None) -> list:
    """The events that carry one segment (16 kHz mono int16 samples) to the server."""
    rate, width, channels = 16_000, 2, 1
    events: list = []
    if mode == "transcribe":
        events.append(Transcribe(language=language))
    elif mode == "run-pipeline":
        events += [Detection(name=wake_name, timestamp=detect_ms),
                   RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.HANDLE,
                               wake_word_name=wake_name)]
    events.append(AudioStart(rate=rate, width=width, channels=channels, timestamp=0))
    pcm = samples.astype("<i2").tobytes()
    step = CHUNK_SAMPLES * width
    for a in range(0, len(pcm), step):
        events.append(AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[a:a + step],
                                 timestamp=a // width * 1000 // rate))
    events.append(AudioStop(timestamp=samples.size * 1000 // rate))
    return events


def frame(events: list) -> bytes:
    buf = io.BytesIO()
    for e in events:
        write_event(e.event(), buf)
    return buf.getvalue()


class WyomingUplink:
    """Delivers segments to one Wyoming server from a worker thread; :meth:`send` never blocks."""

    def __init__(self, uri: str, *, mode: str = "transcribe", wake_name: str, language: str | None = None,
                 ledger: Any | None = None, answer_wait_s: float = 5.0, connect_timeout_s: float = 5.0) -> None:
        if mode not in MODES:
            raise UsageError(f"satellite event {mode!r}: give one of {', '.join(MODES)}", code="wyoming_mode")
        self.uri = uri
        self.kind, self.address = parse_uri(uri)
        self.mode = mode
        self.wake_name = wake_name
        self.language = language
        self.ledger = ledger
        self.answer_wait_s = answer_wait_s
        self.connect_timeout_s = connect_timeout_s
        self.stats = UplinkStats()
        self.answers: list[dict] = []  # what the server sent back, per segment (type and data)
        self._q: queue.Queue = queue.Queue(maxsize=QUEUE_SEGMENTS)
        self._thread = threading.Thread(target=self._work, name="gate-wyoming-uplink", daemon=True)
        self._thread.start()

    # -- the cascade's side ----------------------------------------------------------------------

    def send(self, published: Any) -> None:
        """Cascade ``on_segment`` callback: frame the segment, charge its bytes, queue it."""
        from gate.energy import RADIO
        from gate.energy.wire import control_b

        seg = published.segment
        try:
            blob = frame(segment_events(seg.samples, mode=self.mode, wake_name=self.wake_name,
                                        detect_ms=int(round(seg.t_detect_s * 1000)), language=self.language))
        except Exception as exc:  # noqa: BLE001 - an uplink that cannot frame a segment must not stop listening
            self.stats.failed += 1
            log.error("wyoming uplink: segment %s not sent: cannot frame it (%s: %s)",
                      published.encoded.segment_id, type(exc).__name__, one_line(exc))
            return
        if self.ledger is not None:
            self.ledger.charge(RADIO, invocations=1, nbytes=control_b(len(blob)))
        while True:
            try:
                self._q.put_nowait((published.encoded.segment_id, seg.duration_s, blob))
                break
            except queue.Full:
                try:
                    self._q.get_nowait()
                    self._q.task_done()
                    self.stats.dropped += 1
                    log.warning("wyoming uplink: %s is behind; the oldest waiting segment was dropped", self.uri)
                except queue.Empty:
                    pass
        self.stats.queued += 1

    def close(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` s for queued segments to be delivered, then stop the worker."""
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        left = self._q.unfinished_tasks
        if left:
            log.warning("wyoming uplink: %d segment(s) not delivered to %s at exit", left, self.uri)
        self._q.put(None)
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 0.5)
        s = self.stats
        log.info("wyoming uplink to %s: %d segment(s) sent, %d failed, %d dropped", self.uri, s.sent, s.failed,
                 s.dropped)

    # -- the worker ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                self._deliver(*item)
            finally:
                self._q.task_done()

    def _connect(self) -> socket.socket:
        if self.kind == "tcp":
            return socket.create_connection(self.address, timeout=self.connect_timeout_s)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout_s)
        sock.connect(self.address)
        return sock

    def _deliver(self, segment_id: str, duration_s: float, blob: bytes) -> None:
        t0 = time.monotonic()
        try:
            with self._connect() as sock:
                sock.sendall(blob)
                answers = self._answers(sock)
        except OSError as exc:
            self.stats.failed += 1
            log.error("wyoming uplink: segment %s not delivered to %s: %s", segment_id, self.uri,
                      one_line(exc.strerror or exc))
            return
        self.stats.sent += 1
        self.stats.bytes += len(blob)
        self.answers.append({"segment_id": segment_id, "events": answers})
        log.info("wyoming uplink: segment %s (%.2f s) sent to %s in %.0f ms%s", segment_id, duration_s, self.uri,
                 (time.monotonic() - t0) * 1000, "".join(f"; {_describe(a)}" for a in answers))

    def _answers(self, sock: socket.socket) -> list[dict]:
        """What the server says back, until a final answer, the server closes, or ``answer_wait_s`` passes."""
        out: list[dict] = []
        if self.answer_wait_s <= 0:
            return out
        deadline = time.monotonic() + self.answer_wait_s
        with sock.makefile("rb") as f:
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    event = read_event(f)
                except OSError:  # the wait ran out, or the server reset the connection
                    break
                if event is None:
                    break
                out.append({"type": event.type, "data": event.data})
                if event.type in _FINAL[self.mode]:
                    break
        return out


def _describe(answer: dict) -> str:
    t, data = answer["type"], answer.get("data") or {}
    if Transcript.is_type(t):
        return f"transcript {data.get('text', '')!r}"
    if Error.is_type(t):
        return f"error from the server: {data.get('text', '')}"
    text = data.get("text")
    return f"{t} {text!r}" if text else t


def run_satellite(settings: GateSettings, *, uri: str, mode: str, config_path: str | None, language: str | None = None,
                  answer_wait_s: float = 5.0, input_file: str | None = None, realtime: bool = True,
                  broker: str | None = None, source: Any | None = None) -> int:
    """The live node (microphone, or ``input_file`` fed as if it were one, or ``source``) with a Wyoming uplink."""
    from contextlib import ExitStack

    from gate.cascade import Cascade
    from gate.config import load_settings
    from gate.energy import ANALOG_GATE, EnergyLedger
    from gate.node import FederatedCollection, Node, PacedSource, open_transport
    from gate.wyoming.listener import wake_word_of
    from gate_core.wire import new_id

    boot_id = new_id()
    ledger = EnergyLedger(always_on=(ANALOG_GATE,))
    with ExitStack() as stack:
        transport = None
        if broker is not None:
            transport = open_transport(settings, ledger=ledger, boot_id=boot_id, broker=broker, stack=stack)
        uplink = WyomingUplink(uri, mode=mode, wake_name=wake_word_of(settings).name, language=language,
                               ledger=ledger, answer_wait_s=answer_wait_s)
        stack.callback(uplink.close, settings.node.flush_timeout_s)
        cascade = Cascade.from_config(settings, ledger=ledger, publisher=transport, boot_id=boot_id,
                                      wall_clock=time.time, on_segment=uplink.send)
        n = settings.node
        if source is None and input_file is not None:
            source = PacedSource.from_file(input_file, block_ms=n.blocksize_ms, realtime=realtime,
                                           sample_rate=settings.audio.sample_rate)
        elif source is None:
            from sensors.microphone import Microphone

            source = Microphone(device=n.device, channels=n.channels, samplerate=n.samplerate,
                                blocksize_ms=n.blocksize_ms, queue_s=n.queue_s, target_rate=settings.audio.sample_rate)
            source.start()
        # Verdicts come only from a cloud worker behind a real broker (not the embedded one).
        labels = transport is not None and broker != "embedded"
        node = Node(settings=settings, cascade=cascade, source=source, transport=transport, config_path=config_path,
                    load=load_settings,
                    federated=FederatedCollection.from_settings(settings, cascade.kws, labels=labels))
        if threading.current_thread() is threading.main_thread():
            node.install_signal_handlers()
        log.info("satellite: segments go to %s as %s%s", uri, mode, f" and over MQTT to {broker}" if broker else "")
        if transport is not None:
            transport.start()
        return node.run()
