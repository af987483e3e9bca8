"""`gate-node run`: the live node's loop around the cascade.

Threads: PortAudio's callback only queues blocks (sensors.microphone); this loop, on the main
thread, runs the cascade; the transport's worker publishes. Signals only set flags: SIGINT and
SIGTERM stop the loop (the segment being collected is cut at the last sample heard, then the spool
is flushed for at most ``node.flush_timeout_s``); SIGHUP re-reads the thresholds file and applies
it between segments, and an invalid file is logged and the running settings kept.

Heartbeats are paced on the audio clock: a node whose microphone has stalled stops sending them,
which is exactly what the cloud should see.

With ``kws.federated.enabled`` the node keeps the model's input windows around each uploaded segment's
fire, labelled by its verdict, in a store on disk (gate.fedstore; docs/federated.md): a ``Collector``
chained after the cascade's ``on_segment`` and the transport's ``on_verdict``, following the running
model across over-the-air swaps and reloads. It also samples background windows from what the KWS
scores low (a ``BackgroundTap`` around the cascade's spotter, at most one per
``gate.fedstore.BACKGROUND_EVERY_S`` of audio). A store that cannot be opened is one warning; the node
runs on without it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from gate.config import GateSettings, SettingsError, load_settings
from gate.energy import EnergyLedger
from gate.fedstore import BACKGROUND_BATCH, BackgroundSampler, BackgroundTap, Collector, FeatureStore, Quant
from gate.transport.spool import Spool
from gate_core.wire import Verdict

if TYPE_CHECKING:
    from gate.cascade import Cascade, CascadeOutput, Published
    from gate.kws.config import FederatedConfig
    from gate.ota import OtaAgent
    from gate.transport.mqtt import MqttTransport

log = logging.getLogger(__name__)


class Source(Protocol):
    def read(self, timeout: float | None = None) -> np.ndarray | None: ...

    def close(self) -> None: ...


class EndOfStream(Exception):
    """A finite source (a file fed as if it were the microphone) has nothing more."""


class PacedSource:
    """Audio fed like a microphone: blocks of ``block_ms``, paced to real time unless ``realtime`` is off."""

    def __init__(self, audio: np.ndarray, *, block_ms: float = 20.0, realtime: bool = True,
                 sample_rate: int = 16_000) -> None:
        self._x = np.asarray(audio, np.int16)
        self._block = max(1, int(round(block_ms * sample_rate / 1000)))
        self._rate = sample_rate
        self._realtime = realtime
        self._pos = 0
        self._t0: float | None = None
        self.started_unix: float | None = None  # wall time of sample 0 once pacing began (latency metrics)

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        if self._pos >= self._x.size:
            raise EndOfStream
        if self._realtime:
            if self._t0 is None:
                self._t0 = time.monotonic()
                self.started_unix = time.time()
            due = self._t0 + (self._pos + self._block) / self._rate
            wait = due - time.monotonic()
            if wait > 0:
                if timeout is not None and wait > timeout:
                    time.sleep(timeout)
                    return None
                time.sleep(wait)
        block = self._x[self._pos:self._pos + self._block]
        self._pos += block.size
        return block

    def close(self) -> None:
        pass

    def end(self) -> None:
        """End the stream at the next read (from another thread: a node run for a test or a bench)."""
        self._pos = self._x.size

    @classmethod
    def from_file(cls, path: str | Path, *, sample_rate: int = 16_000, **kw) -> PacedSource:
        from sensors.wavfile import read_audio

        return cls(read_audio(path, target_rate=sample_rate), sample_rate=sample_rate, **kw)


def chain(first: Callable | None, then: Callable) -> Callable:
    """A callback calling ``first`` (when there is one), then ``then``, with the same argument."""
    if first is None:
        return then

    def both(arg):
        first(arg)
        then(arg)

    return both


class FederatedCollection:
    """``kws.federated`` on a running node: the feature store and its ``Collector`` for the running model,
    and the background windows the node samples from what the model scores low (``track`` puts a
    ``BackgroundTap`` around the cascade's spotter; the chosen windows are written ``BACKGROUND_BATCH``
    at a time and at ``close``). With ``labels`` off (no cloud answers: no broker, or a private one) only
    background windows are collected, and one line says so.

    Every failure (a store that cannot be opened, a model whose input is not int8, a disk that refuses a
    write) is one warning naming the store's path; collection stops or skips, the node never does."""

    def __init__(self, config: FederatedConfig, kws, *, labels: bool = True) -> None:
        self.config = config
        self.labels = labels
        self.root = Path(config.store_dir).expanduser()
        self.path = self.root / "fedstore.npz"
        self.kws = kws
        self.collector: Collector | None = None
        self.sampler: BackgroundSampler | None = None
        self._tap: BackgroundTap | None = None  # the tap this collection put around the cascade's spotter
        self._bg_failing = False
        try:
            self.collector = self._open(kws)
        except Exception as exc:  # noqa: BLE001 - a corrupt file or a bad directory must not stop the node
            log.warning("kws.federated: cannot open the store at %s (%s); running without collecting labels",
                        self.path, _one_line(exc))
            return
        if self.collector.store.background_cap:
            self.sampler = BackgroundSampler()
        st = self.collector.store.counts
        log.info("kws.federated: collecting %s in %s (%d positives, %d hard negatives, %d background of %d)",
                 "labels" if labels else "background windows", self.path, st["positives"], st["hard_negatives"],
                 st["background"], st["capacity"])
        if not labels:
            log.warning("kws.federated: labelled windows need the cloud's verdicts over MQTT (a broker with a "
                        "cloud worker behind it); without them this node keeps %s",
                        "background windows only" if self.sampler is not None else
                        "nothing (background_share is 0)")

    @classmethod
    def from_settings(cls, settings: GateSettings, kws, *, labels: bool = True) -> FederatedCollection | None:
        """The collection the thresholds file asks for, or None when ``kws.federated.enabled`` is off."""
        cfg = settings.kws.federated
        if not cfg.enabled:
            return None
        if kws is None:
            log.warning("kws.federated: no keyword spotter is running; not collecting labels")
            return None
        return cls(cfg, kws, labels=labels)

    @property
    def collecting(self) -> bool:
        return self.collector is not None

    def track(self, cascade: Cascade) -> None:
        """Node loop, between cascade calls: follow the cascade's spotter (``follow``), keep the tap around
        it while background windows are sampled, and write a full batch of them."""
        kws, tap = cascade.kws, self._tap
        if kws is tap and tap is not None and tap.failed is None:  # nothing changed: the common case
            if len(tap.sampler.ready) >= BACKGROUND_BATCH:
                self._write_background()
            return
        inner = kws.kws if isinstance(kws, BackgroundTap) else kws
        self.follow(inner)
        if isinstance(kws, BackgroundTap) and kws.failed is not None:
            log.warning("kws.federated: no longer sampling background windows for %s (%s)", self.path,
                        _one_line(kws.failed))
            self._write_background()  # what was chosen before is kept
            self.sampler = None
        if self.sampler is None or self.collector is None or inner is None:
            if isinstance(kws, BackgroundTap):
                cascade.kws = kws.untap()
            self._tap = None
            return
        if not isinstance(kws, BackgroundTap):
            kws = cascade.kws = BackgroundTap(inner, self.sampler)
        self._tap = kws

    def close(self, end_s: float) -> None:
        """The audio ended at ``end_s``: the background windows chosen so far go to the store."""
        if self.sampler is not None:
            self.sampler.finish(end_s)
            self._write_background()

    def _write_background(self) -> None:
        ready = self.sampler.ready if self.sampler is not None else []
        if not ready or self.collector is None:
            return
        windows = np.stack([w for _, w in ready])
        ready.clear()
        try:
            self.collector.add_background(windows)
        except Exception as exc:  # noqa: BLE001 - a full or failing disk must not stop the node
            if not self._bg_failing:
                log.warning("kws.federated: %d background windows not kept in %s (%s); later ones are tried "
                            "again", len(windows), self.path, _one_line(exc))
            self._bg_failing = True
            return
        self._bg_failing = False

    def _open(self, kws) -> Collector:
        from gate.kws.featurize import Featurizer

        quant = Quant.of_input(kws.model)
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError("directory not writable")
        store = FeatureStore(self.root, capacity=self.config.capacity, frames=kws.window_frames,
                             dim=kws.featurizer.dim, quant=quant, background_share=self.config.background_share)
        # Its own featurizer: computing a segment's windows must not disturb the running spotter's stream.
        return Collector(store, Featurizer(kws.featurizer.kind, kws.featurizer.sample_rate))

    def follow(self, kws) -> None:
        """The cascade runs another spotter (an over-the-air swap, a reload): collect for its model from now on."""
        if isinstance(kws, BackgroundTap):
            kws = kws.kws
        if kws is self.kws:
            return
        self.kws = kws
        if self.collector is None:
            return
        from gate.kws.featurize import Featurizer

        try:
            if kws is None:
                raise ValueError("no keyword spotter is running")
            self.collector.follow(Featurizer(kws.featurizer.kind, kws.featurizer.sample_rate), kws.window_frames,
                                  kws.featurizer.dim, Quant.of_input(kws.model))
        except Exception as exc:  # noqa: BLE001
            self.collector = None
            log.warning("kws.federated: the new model does not fit the store at %s (%s); no longer collecting "
                        "labels", self.path, _one_line(exc))
            return
        log.info("kws.federated: collecting for the new model in %s", self.path)

    def on_segment(self, published: Published) -> None:
        if self.collector is None:
            return
        try:
            self.collector.on_segment(published)
        except Exception as exc:  # noqa: BLE001
            log.warning("kws.federated: windows of segment %s not kept in %s (%s)", published.encoded.segment_id,
                        self.path, _one_line(exc))

    def on_verdict(self, verdict: Verdict) -> None:
        if self.collector is None:
            return
        try:
            n = self.collector.on_verdict(verdict)
        except Exception as exc:  # noqa: BLE001
            log.warning("kws.federated: verdict for %s not stored in %s (%s)", verdict.segment_id, self.path,
                        _one_line(exc))
            return
        if n:
            log.debug("kws.federated: %d windows of %s labelled %s", n, verdict.segment_id,
                      "positive" if verdict.accepted else "negative")


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())[:300]


@dataclass(slots=True)
class NodeStats:
    blocks: int = 0
    segments: int = 0
    second_stage_rejected: int = 0
    verdicts: int = 0
    reloads: int = 0
    reload_failures: int = 0
    heartbeats: int = 0


class Node:
    """Source -> Cascade -> transport, with heartbeats, live reloads and a bounded, clean stop."""

    def __init__(self, *, settings: GateSettings, cascade: Cascade, source: Source, transport: MqttTransport | None,
                 config_path: str | None = None, load: Callable[[str | None], GateSettings] | None = None,
                 ota: OtaAgent | None = None, federated: FederatedCollection | None = None) -> None:
        self.settings = settings
        self.ota = ota  # over-the-air releases, swapped in between segments (gate/ota.py)
        self.cascade = cascade
        self.source = source
        self.transport = transport
        self.federated = federated  # labelled windows for federated fine-tuning, after the existing callbacks
        if federated is not None:
            if federated.labels:
                cascade.on_segment = chain(cascade.on_segment, federated.on_segment)
                if transport is not None:
                    transport.on_verdict = chain(transport.on_verdict, federated.on_verdict)
            federated.track(cascade)
        self.config_path = config_path
        self._load = load
        self.stop_event = threading.Event()
        self._reload_requested = threading.Event()
        self._pending_settings: GateSettings | None = None
        self._next_heartbeat_s = settings.node.heartbeat_s
        self._keepalive_t_s = 0.0
        self._batch = int(settings.node.batch_ms * settings.audio.sample_rate / 1000)
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._hb_seq = 0
        self._lost = (0, 0)
        self.stats = NodeStats()

    # -- control (signal handlers and other threads) ---------------------------------------------

    def request_stop(self) -> None:
        self.stop_event.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def install_signal_handlers(self) -> None:
        """Main thread only. Handlers set flags; the loop acts on them between blocks."""
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    # -- loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        log.info("node %s running (boot %s)", self.cascade.encoder.node_id, self.cascade.encoder.boot_id)
        try:
            while not self.stop_event.is_set():
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self._reload()
                if self._pending_settings is not None and not self.cascade.segmenter.collecting:
                    self._apply(self._pending_settings)
                if self.ota is not None:
                    self.ota.swap_in(self.cascade)
                if self.federated is not None:
                    self.federated.track(self.cascade)
                try:
                    block = self.source.read(timeout=0.2)
                except EndOfStream:
                    log.info("input ended")
                    break
                if block is None or not block.size:
                    continue
                self.stats.blocks += 1
                self._pending.append(block)
                self._pending_n += block.size
                if self._pending_n >= self._batch:
                    self._process_pending()
        finally:
            self._shutdown()
        return 0

    def _process_pending(self) -> None:
        if not self._pending:
            return
        x = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending.clear()
        self._pending_n = 0
        self._handle(self.cascade.process(x))
        if self.cascade.t_s >= self._next_heartbeat_s:
            self._heartbeat()

    def _handle(self, out: CascadeOutput) -> None:
        for ev in out.events:
            log.debug("gate %s at %.2f s", ev.kind, ev.t_s)
        for p in out.segments:
            s = p.segment
            self.stats.segments += 1
            log.info("segment %s: %.2f-%.2f s, detected at %.2f s (score %.2f), %d B %s",
                     p.encoded.segment_id, s.t_start_s, s.t_end_s, s.t_detect_s, s.score,
                     len(p.encoded.payload), self.cascade.encoder.codec)
        for r in out.rejected:
            self.stats.second_stage_rejected += 1
            log.info("candidate at %.2f s (score %.2f) rejected by the second stage (score %.2f): not uploaded",
                     r.segment.t_detect_s, r.segment.score, r.score)

    def _heartbeat(self) -> None:
        from gate_core.wire import Heartbeat

        hb_s = self.settings.node.heartbeat_s
        while self._next_heartbeat_s <= self.cascade.t_s:
            self._next_heartbeat_s += hb_s
        self._check_capture()
        if self.transport is None:
            return
        # The link's keepalives are charged on the audio clock (MqttTransport.keepalive).
        self.transport.keepalive(self.cascade.t_s - self._keepalive_t_s)
        self._keepalive_t_s = self.cascade.t_s
        st = self.transport.stats()
        hb = Heartbeat(node_id=self.cascade.encoder.node_id, boot_id=self.cascade.encoder.boot_id,
                       seq=self._hb_seq, audio_s=self.cascade.t_s, ledger=self.cascade.ledger.snapshot().to_dict(),
                       spool_pending=st.pending, spool_dropped=st.dropped + st.lost, sent_unix=time.time())
        self._hb_seq += 1
        self.stats.heartbeats += 1
        self.transport.publish_heartbeat(hb)

    def _check_capture(self) -> None:
        """Say so when the driver or this loop lost audio since the last heartbeat: timestamps slip then."""
        stats = getattr(self.source, "stats", None)
        if stats is None:
            return
        st = stats()
        lost = (st.overruns, st.dropped_blocks)
        if lost != self._lost:
            log.warning("audio lost: %d driver overrun(s), %d block(s) dropped by a slow loop (%d samples) so far",
                        st.overruns, st.dropped_blocks, st.dropped_samples)
            self._lost = lost

    def _reload(self) -> None:

        if self._load is None:
            log.warning("SIGHUP: no thresholds file to reload")
            return
        try:
            new = self._load(self.config_path)
            if self.ota is not None:
                new = self.ota.effective(new)  # an installed release stays the model
                self.ota.kws = new.kws  # and the next release is tested with these settings
        except SettingsError as exc:
            self.stats.reload_failures += 1
            log.error("SIGHUP: %s is invalid; keeping the running settings:\n%s", self.config_path, exc)
            return
        restart_only = [name for name in ("audio", "mqtt", "node", "energy")
                        if getattr(new, name) != getattr(self.settings, name)]
        if new.kws.federated != self.settings.kws.federated:
            restart_only.append("kws.federated")
        if restart_only:
            log.warning("SIGHUP: changes to %s take effect at the next start", ", ".join(restart_only))
        self._pending_settings = new

    def _apply(self, new: GateSettings) -> None:
        self._pending_settings = None
        try:
            self.cascade.reconfigure(new)
        except Exception as exc:  # a model that does not load, a rate that does not fit: keep running
            self.stats.reload_failures += 1
            log.error("SIGHUP: cannot apply %s (%s); keeping the running settings", self.config_path, exc)
            return
        kws = new.kws.model_copy(update={"federated": self.settings.kws.federated})  # the store opened at start
        self.settings = new.model_copy(update={"kws": kws, **{k: getattr(self.settings, k)
                                                              for k in ("audio", "mqtt", "node", "energy")}})
        self.stats.reloads += 1
        log.info("SIGHUP: thresholds reloaded from %s", self.config_path)

    def _shutdown(self) -> None:
        try:
            self._process_pending()
            self._handle(self.cascade.flush())
        finally:
            if self.federated is not None:
                self.federated.close(self.cascade.t_s)
            self.source.close()
            if self.transport is not None:
                timeout = self.settings.node.flush_timeout_s
                self.transport.close(timeout=timeout)
                st = self.transport.stats()
                if st.pending:
                    log.warning("%d segment(s) still spooled at exit; they are sent at the next start", st.pending)
            log.info("node stopped: %d blocks, %d segments", self.stats.blocks, self.stats.segments)


def run_node(*, settings: GateSettings, config_path: str | None, input_file: str | None = None,
             realtime: bool = True, broker: str | None = None, install_signals: bool = True,
             source: Source | None = None) -> int:
    """Build the microphone (or a paced file, or use ``source``), the transport and the cascade; run until stopped."""

    from gate.cascade import Cascade
    from gate.energy import ANALOG_GATE, EnergyLedger
    from gate.ota import OtaAgent
    from gate_core.wire import new_id

    boot_id = new_id()
    ledger = EnergyLedger(always_on=(ANALOG_GATE,))
    with ExitStack() as stack:
        transport = open_transport(settings, ledger=ledger, boot_id=boot_id, broker=broker, stack=stack)
        ota = OtaAgent.from_settings(settings)
        if ota is not None:
            settings = ota.effective(settings)
            ota.attach(transport)
            ota.start()
            stack.callback(ota.close)
        cascade = Cascade.from_config(settings, ledger=ledger, publisher=transport, boot_id=boot_id,
                                      wall_clock=time.time)
        if source is None and input_file is not None:
            source = PacedSource.from_file(input_file, block_ms=settings.node.blocksize_ms, realtime=realtime,
                                           sample_rate=settings.audio.sample_rate)
        elif source is None:
            from sensors.microphone import Microphone

            n = settings.node
            source = Microphone(device=n.device, channels=n.channels, samplerate=n.samplerate,
                                blocksize_ms=n.blocksize_ms, queue_s=n.queue_s,
                                target_rate=settings.audio.sample_rate)
            source.start()
        # A private broker has no cloud worker behind it: no verdicts will label windows.
        labels = (broker or settings.mqtt.broker) != "embedded"
        node = Node(settings=settings, cascade=cascade, source=source, transport=transport,
                    config_path=config_path, load=load_settings, ota=ota,
                    federated=FederatedCollection.from_settings(settings, cascade.kws, labels=labels))
        if install_signals and threading.current_thread() is threading.main_thread():
            node.install_signal_handlers()
        transport.start()
        rc = node.run()
        if hasattr(source, "stats"):
            st = source.stats()
            log.info("microphone %s at %d Hz: %d blocks, %d overruns, %d blocks dropped",
                     st.device, st.device_rate, st.blocks, st.overruns, st.dropped_blocks)
        return rc


def open_transport(settings: GateSettings, *, ledger: EnergyLedger, boot_id: str | None, broker: str | None,
                   stack: ExitStack, on_verdict: Callable[[Verdict], None] | None = None,
                   spool: Spool | None = None) -> MqttTransport:
    """The MQTT transport for ``broker`` (default ``mqtt.broker``); 'embedded' starts a private broker."""
    from gate.transport.broker import EmbeddedBroker
    from gate.transport.mqtt import MqttTransport
    from gate_core.netutil import parse_broker_url

    url = broker or settings.mqtt.broker
    if url == "embedded":
        b = stack.enter_context(EmbeddedBroker())
        host, port = b.host, b.port
        log.info("embedded broker at %s", b.url)
    else:
        parsed = parse_broker_url(url)
        host, port = parsed.host, parsed.port
    transport = MqttTransport.from_config(settings.mqtt, host=host, port=port, ledger=ledger, boot_id=boot_id,
                                          spool=spool, on_verdict=on_verdict or _log_verdict)
    if url == "embedded":
        # A private broker for this run has no cloud worker behind it: nobody will answer, so a
        # segment is settled on the broker's PUBACK instead of being republished every await_verdict_s.
        transport.set_await_verdict(None)
    return transport


def _log_verdict(verdict: Verdict) -> None:
    log.info("verdict for %s: %s%s", verdict.segment_id, "accepted" if verdict.accepted else "rejected",
             f", command {verdict.command}" if verdict.command else "")
