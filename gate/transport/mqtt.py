"""The node's MQTT link: the only module in gate that imports paho.

Protocol: MQTT 3.1.1. The ledger's byte arithmetic (gate.energy.wire) is exact for 3.1.1 packets,
the pure-Python fallback broker speaks only 3.1.1, and mosquitto honours ``$share/`` groups for
3.1.1 subscribers too, so v5 would add property bytes to every packet and buy nothing we use.

Threads: paho's network loop only turns its callbacks into events (gate.transport.events) on a
queue; one worker thread owns all state (the in-flight window, the ledger charges, the user's
callbacks) and makes every ``publish`` call. paho runs callbacks while holding its own message
lock, so a publish from a second thread under a lock of ours could deadlock against it; with one
worker that never happens, and a PUBACK can never be processed before the worker has recorded the
message id it answers.

Segments: every one is written to the :class:`Spool` first. The worker keeps at most ``window`` of
them in flight (oldest first). After a reconnect paho resends what was in flight (DUP), and new
segments wait until those are acknowledged, so the broker sees the spool in FIFO order. Delivery is
at least once; the cloud dedupes on segment id.

Acknowledgement is end to end: a PUBACK only says the broker took the message, and a broker may
take it and drop it (mosquitto 2.0 does not restore ``$share`` subscriptions from persistence, so
after a restart it acknowledges segments nobody receives until a cloud worker resubscribes). With
``await_verdict_s`` set, a PUBACK frees the segment's window slot but its file stays in the spool
until the cloud's verdict arrives; a segment with no verdict ``await_verdict_s`` after its PUBACK is
published again, with the same segment id (the cloud dedupes it and answers from its store), and
again every ``await_verdict_s`` until answered or dropped by the spool bound. The wait is wall
clock: it is about the liveness of the network and of the service, not about audio. Segments
awaiting a verdict are plain spool entries on disk, so after a restart of the node they are
simply pending again. ``await_verdict_s=None`` deletes on PUBACK (a broker nobody answers on).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import EllipsisType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from gate import __version__
from gate.energy import EnergyLedger
from gate.energy.wire import SessionBytes
from gate.transport.awaiting import VerdictWait
from gate.transport.config import (
    BrokerLink,
    Delivery,
    MqttConfig,
    NodeIdentity,
    TransportError,
    check_await_verdict,
)
from gate.transport.events import (
    Acked,
    AwaitVerdict,
    Clock,
    Connected,
    Disconnected,
    Event,
    HeartbeatOut,
    Received,
    Send,
    Spooled,
    Stop,
    SubAck,
    Tick,
)
from gate.transport.radio import RadioMeter
from gate.transport.remote import ConfigHandler, RemoteConfig, first_error
from gate.transport.spool import Spool, SpoolEntry, SpoolError
from gate_core.netutil import UnreachableLog, set_no_delay
from gate_core.wire import Heartbeat, NodeTopics, Status, Verdict, default_client_id, new_id

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TransportStats:
    connected: bool
    connects: int
    pending: int  # segments on disk, in flight and awaiting a verdict included
    pending_bytes: int
    inflight: int
    delivered: int  # segments PUBACKed (each counted once, however often it was republished)
    resent: int  # segments resent after a reconnect
    dropped: int  # oldest segments dropped by the spool bound or a full disk
    quarantined: int
    heartbeats_skipped: int  # heartbeats not sent because the broker was away
    rejected_in: int  # verdict/config messages that failed validation
    awaiting: int = 0  # PUBACKed segments still waiting for their verdict (await_verdict_s)
    verdicts: int = 0  # valid verdicts received
    republished: int = 0  # segments published again for want of a verdict
    lost: int = 0  # segments the spool could not hold (write error, full disk with nothing to drop)
    keepalives: int = 0  # PINGREQ/PINGRESP exchanges charged on the audio clock (see keepalive)


@dataclass(frozen=True, slots=True)
class _InFlight:
    entry: SpoolEntry
    topic_len: int
    republish: bool = False


class MqttTransport:
    """Segments out through the spool, verdicts and config updates in, status and heartbeats.

    ``link``: the broker and the connection; ``node``: the topics and client id; ``delivery``: QoS,
    window, size limit and ``await_verdict_s`` (how long after its PUBACK a segment may wait for its
    verdict before it is published again; None deletes segments on PUBACK, see the module doc).

    ``on_verdict(Verdict)`` and ``on_config(ConfigUpdate) -> ConfigAck`` run on the transport's
    worker thread; keep them short. A config callback that raises is answered as a rejection with
    the exception's text, and the caller's running config is whatever the callback left it
    (gate.transport.remote).
    """

    def __init__(self, link: BrokerLink, node: NodeIdentity, spool: Spool, *, delivery: Delivery | None = None,
                 ledger: EnergyLedger | None = None, on_verdict: Callable[[Verdict], None] | None = None,
                 on_config: ConfigHandler | None = None) -> None:
        self.link = link
        self.delivery = delivery = delivery or Delivery()
        self.topics = NodeTopics(node.node_id, node.topic_prefix)
        self.node_id = node.node_id
        self.boot_id = node.boot_id or new_id()
        self.host, self.port = link.host, link.port
        self.spool = spool
        self.max_payload_bytes = delivery.max_payload_bytes
        self._wait = VerdictWait(spool, delivery.await_verdict_s, log)  # the worker's; its seqs anyone's
        self.on_verdict = on_verdict
        self._remote = RemoteConfig(node.node_id, on_config)

        # Stable per node: the broker keeps the persistent session (subscriptions, queued verdicts) under it.
        self.client_id = node.client_id or default_client_id(node.node_id, node.topic_prefix)
        self._client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                   clean_session=False, protocol=paho.MQTTv311)
        # Room for status and config acks beside the segment window, so paho never queues behind our back.
        self._client.max_inflight_messages_set(delivery.window + 8)
        self._client.reconnect_delay_set(min_delay=link.reconnect_min_s, max_delay=link.reconnect_max_s)
        if link.username is not None:
            self._client.username_pw_set(link.username, link.password)
        if link.tls is not None and link.tls_enabled:
            self._client.tls_set(ca_certs=link.tls.ca_file, certfile=link.tls.cert_file, keyfile=link.tls.key_file)
        self._offline = Status(node_id=self.node_id, state="offline", boot_id=self.boot_id,
                               version=__version__).to_json()
        self._client.will_set(self.topics.status, self._offline, qos=1, retain=True)
        self._subscriptions = [(self.topics.verdict, 1), (self.topics.config, 1)]
        self._handlers: dict[str, Callable[[str, bytes], None]] = {}
        self._radio = RadioMeter(ledger, qos=delivery.qos, tls_overhead=link.tls_record_overhead,
                                 session=self._session_bytes())
        self._client.on_connect = self._paho_connect
        self._client.on_disconnect = self._paho_disconnect
        self._client.on_publish = self._paho_publish
        self._client.on_message = self._paho_message
        self._client.on_subscribe = self._paho_subscribe
        self._client.on_connect_fail = self._paho_connect_fail
        self._unreachable = UnreachableLog(log, f"{link.host}:{link.port}")

        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._sub_mid: int | None = None
        self._changed = threading.Condition()
        # Owned by the worker thread.
        self._inflight: dict[int, _InFlight] = {}
        self._hold_until_resent = False
        self._n = dict(connects=0, delivered=0, resent=0, heartbeats_skipped=0, rejected_in=0, verdicts=0, lost=0,
                       keepalives=0)

    @classmethod
    def from_config(cls, cfg: MqttConfig, *, host: str | None = None, port: int | None = None,
                    ledger: EnergyLedger | None = None, spool: Spool | None = None, boot_id: str | None = None,
                    on_verdict: Callable[[Verdict], None] | None = None, on_config: ConfigHandler | None = None,
                    await_verdict_s: float | None | EllipsisType = ...) -> MqttTransport:
        """``host``/``port`` default to ``cfg.broker``; pass them for an embedded broker (broker_endpoint).
        ``await_verdict_s`` defaults (``...``) to ``cfg.await_verdict_s``."""
        delivery = Delivery.of(cfg)
        if await_verdict_s is not ...:
            delivery = replace(delivery, await_verdict_s=await_verdict_s)
        node = NodeIdentity(cfg.node_id, cfg.topic_prefix, boot_id=boot_id)
        return cls(BrokerLink.of(cfg, host=host, port=port), node, spool or Spool.from_config(cfg), delivery=delivery,
                   ledger=ledger, on_verdict=on_verdict, on_config=on_config)

    @property
    def ledger(self) -> EnergyLedger | None:
        """Where the link's radio bytes and wakes are charged (gate.transport.radio)."""
        return self._radio.ledger

    @property
    def _tls_overhead(self) -> int:
        return self._radio.tls_overhead

    def _session_bytes(self) -> SessionBytes:
        # Session control on the radio (gate.energy.wire): CONNECT/CONNACK and SUBSCRIBE/SUBACK at every
        # connect, a PINGREQ/PINGRESP exchange per keepalive period, DISCONNECT at the end.
        return SessionBytes.of(client_id=self.client_id, will_topic=self.topics.status, will_payload=self._offline,
                               username=self.link.username, password=self.link.password,
                               subscribe=[t for t, _ in self._subscriptions],
                               tls_record_overhead=self.link.tls_record_overhead, keepalive_s=self.link.keepalive_s)

    # -- public API ----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; segments published before the broker answers wait in the spool."""
        if self._worker is not None:
            raise TransportError("transport already started", code="transport_state")
        self._worker = threading.Thread(target=self._run, name=f"gate-mqtt-{self.node_id}", daemon=True)
        self._worker.start()
        self._client.connect_async(self.host, self.port, keepalive=self.link.keepalive_s)
        self._client.loop_start()

    def add_subscription(self, topic: str, handler: Callable[[str, bytes], None]) -> None:
        """Also subscribe to ``topic`` (QoS 1) and hand each message to ``handler(topic, payload)`` on the
        worker thread (keep it short). Before :meth:`start` only."""
        if self._worker is not None:
            raise TransportError("add_subscription after start", code="transport_state")
        self._subscriptions.append((topic, 1))
        self._handlers[topic] = handler
        self._radio.session = self._session_bytes()

    def publish_message(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish ``payload`` on ``topic`` from the worker thread (not spooled; paho holds QoS 1 until it is sent)."""
        self._events.put(Send(topic, payload, qos))

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Connected and the broker has acknowledged the verdict and config subscriptions."""
        return self._subscribed.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def await_verdict_s(self) -> float | None:
        return self._wait.seconds

    def set_await_verdict(self, seconds: float | None) -> None:
        """Change ``await_verdict_s`` (e.g. off when nobody will answer). Turning it off settles the
        segments already awaiting a verdict as if answered: the broker has acknowledged them."""
        check_await_verdict(seconds)
        self._events.put(AwaitVerdict(seconds))

    def publish_segment(self, payload: bytes, *, segment_id: str) -> SpoolEntry | None:
        """Spool ``payload`` durably, then send it when the window and the broker allow.

        None when the spool could not hold it (a write error, a full disk with nothing left to drop):
        the segment is lost, counted in ``stats().lost`` and logged; the node keeps running.
        """
        if len(payload) > self.max_payload_bytes:
            # The cloud would refuse it after paying for the radio: refuse it here, before.
            raise TransportError(f"segment {segment_id} is {len(payload)} B, over the {self.max_payload_bytes} B "
                                 "limit (mqtt.max_payload_kb)", code="transport_too_large")
        try:
            entry = self.spool.put(payload, key=segment_id)
        except SpoolError as exc:
            self._n["lost"] += 1  # only this (the publishing) thread writes this counter
            log.error("segment %s lost: the spool cannot hold it (%s: %s); %d lost so far",
                      segment_id, exc.code, exc, self._n["lost"])
            return None
        self._events.put(Spooled())
        return entry

    def keepalive(self, elapsed_audio_s: float) -> None:
        """``elapsed_audio_s`` more seconds of audio went by: the ledger gets one PINGREQ/PINGRESP
        exchange per ``keepalive_s`` of audio spent connected (see SessionBytes). Counted on the audio
        clock, so a replay at any speed charges what a node in real time would; paho's own pings, on
        the wall clock, are not counted again."""
        self._events.put(Clock(float(elapsed_audio_s)))

    def publish_heartbeat(self, heartbeat: Heartbeat) -> None:
        """Best effort (QoS 0, never spooled): only the latest heartbeat matters."""
        self._events.put(HeartbeatOut(heartbeat.to_json()))

    def flush(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged (PUBACK) every spooled segment; False on timeout.

        Segments PUBACKed but awaiting their verdict count as flushed: see :meth:`wait_answered`.
        """
        with self._changed:
            return self._changed.wait_for(self._flushed, timeout)

    def _flushed(self) -> bool:
        waiting = self._wait.seqs
        return all(e.seq in waiting for e in self.spool.pending())

    def wait_answered(self, timeout: float) -> bool:
        """Wait until no segment is left in the spool (every one answered, or PUBACKed when
        ``await_verdict_s`` is None); False on timeout (they stay on disk)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.spool) == 0, timeout)

    def close(self, timeout: float = 5.0, *, wait_answers: bool = True) -> None:
        """Say "offline" and disconnect after at most ``timeout`` s of flushing. Unsent segments stay spooled.

        With segments to send and no connection yet (the broker is away, or the connection is still
        being made), it waits for one within the same ``timeout``. It also waits for the verdicts of
        what is PUBACKed, but only if a verdict has arrived in this run (a cloud answers here) and
        ``wait_answers``: an unanswered segment stays spooled and is published again at the next
        start (the cloud dedupes it).
        """
        if self._worker is None:
            return
        deadline = time.monotonic() + timeout
        if not self.connected and not self._flushed():
            self.wait_connected(timeout)
        if self.connected:
            if not self.flush(max(0.0, deadline - time.monotonic())):
                log.warning("close: %d segments still spooled after %.1f s; they go at the next start",
                            len(self.spool), timeout)
            elif wait_answers and self._wait.seqs and self._n["verdicts"] and \
                    not self.wait_answered(max(0.0, deadline - time.monotonic())):
                log.warning("close: %d segment(s) acknowledged by the broker but not answered after %.1f s; "
                            "they are published again at the next start", len(self.spool), timeout)
        done = threading.Event()
        self._events.put(Stop(done))
        done.wait(timeout)
        self._worker.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self._worker = None
        self._connected.clear()

    def stats(self) -> TransportStats:
        s = self.spool.stats()
        return TransportStats(connected=self.connected, pending=s.pending, pending_bytes=s.pending_bytes,
                              inflight=len(self._inflight), awaiting=len(self._wait.seqs), dropped=s.dropped,
                              quarantined=s.quarantined, republished=self._wait.republished,
                              **dict(self._n, rejected_in=self._n["rejected_in"] + self._remote.malformed))

    def __enter__(self) -> MqttTransport:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paho callbacks (network thread): translate to events only ----------------------------

    def _paho_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        set_no_delay(client.socket())
        self._unreachable.reached()
        self._events.put(Connected(bool(flags.session_present)))

    def _paho_connect_fail(self, client, userdata) -> None:
        self._unreachable.failed(f"no connection ({len(self.spool)} segment(s) spooled)")

    def _paho_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        self._subscribed.clear()
        self._events.put(Disconnected(str(reason_code)))

    def _paho_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._events.put(Acked(mid))

    def _paho_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._events.put(SubAck(mid, tuple(str(rc) for rc in reason_codes if rc.is_failure)))

    def _paho_message(self, client, userdata, message) -> None:
        self._events.put(Received(message.topic, bytes(message.payload), message.qos))

    # -- worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                # With verdicts awaited, wake now and then to republish the overdue ones.
                seconds = self._wait.seconds
                event = self._events.get(timeout=None if seconds is None else min(1.0, seconds / 4))
            except queue.Empty:
                event = Tick()
            if isinstance(event, Stop):
                self._say_offline()
                event.done.set()
                return
            try:
                self._handle(event)
            except Exception:  # the worker must outlive any single bad event
                log.exception("mqtt worker: %s event failed", type(event).__name__)
            self._wait.publish_seqs()
            with self._changed:
                self._changed.notify_all()

    def _handle(self, event: Event) -> None:
        match event:
            case Connected():
                self._on_connected(event)
            case Disconnected():
                self._on_disconnected(event)
            case SubAck():
                self._on_suback(event)
            case Acked():
                self._on_acked(event)
            case Received():
                self._on_received(event)
            case Spooled() | Tick():
                self._drain()
            case Clock():
                self._on_clock(event)
            case AwaitVerdict():
                self._wait.set_seconds(event.seconds)
            case HeartbeatOut():
                self._on_heartbeat(event)
            case Send():
                self._send(event.topic, event.payload, qos=event.qos)
            case _:  # Stop is the loop's own (see _run)
                raise TypeError(f"mqtt worker: no handler for {event!r}")

    def _on_connected(self, event: Connected) -> None:
        self._n["connects"] += 1
        log.info("connected to %s:%d (session present: %s, %d in flight, %d spooled)",
                 self.host, self.port, event.session_present, len(self._inflight), len(self.spool))
        # paho resends what was in flight, with DUP set: that traffic goes on the ledger too.
        for f in self._inflight.values():
            self._radio.resent(f.entry.nbytes, f.topic_len)
        self._n["resent"] += len(self._inflight)
        self._hold_until_resent = bool(self._inflight)
        online = Status(node_id=self.node_id, state="online", boot_id=self.boot_id, version=__version__).to_json()
        self._send(self.topics.status, online, qos=1, retain=True)
        # Persistent session: the broker may still hold these, but after a broker restart without
        # persistence it does not, and a repeated SUBSCRIBE is harmless.
        _, self._sub_mid = self._client.subscribe(self._subscriptions)
        self._radio.connected()
        self._connected.set()
        self._drain()

    def _on_disconnected(self, event: Disconnected) -> None:
        # Cleared here as well: a "connected" event queued before this one has just set them again.
        self._connected.clear()
        self._subscribed.clear()
        log.warning("disconnected from %s:%d (%s); %d in flight, %d spooled", self.host, self.port, event.reason,
                    len(self._inflight), len(self.spool))

    def _on_suback(self, event: SubAck) -> None:
        if event.mid != self._sub_mid:
            return
        if event.failures:
            log.error("broker refused the verdict/config subscriptions (%s): no verdicts will arrive",
                      ", ".join(event.failures))
            return
        self._subscribed.set()

    def _on_clock(self, event: Clock) -> None:
        if not self.connected:
            return  # no pings while the broker is away
        self._n["keepalives"] += self._radio.keepalives(event.elapsed_s)

    def _on_acked(self, event: Acked) -> None:
        f = self._inflight.pop(event.mid, None)
        if f is None:
            return  # status or config ack: charged when sent
        if not f.republish:
            self._n["delivered"] += 1
        # A republish goes out on a link that is already up: its bytes, but no extra wake.
        self._radio.delivered(f.entry.nbytes, f.topic_len, republish=f.republish)
        self._wait.acked(f.entry)
        if not self._inflight:
            self._hold_until_resent = False
        self._drain()

    def _on_heartbeat(self, event: HeartbeatOut) -> None:
        if not self.connected:
            self._n["heartbeats_skipped"] += 1
            return
        self._send(self.topics.heartbeat, event.payload, qos=0)

    def _on_received(self, event: Received) -> None:
        topic, payload = event.topic, event.payload
        self._radio.message(len(payload), topic, event.qos)
        if topic == self.topics.verdict:
            self._handle_verdict(payload)
        elif topic == self.topics.config:
            self._send(self.topics.config_ack, self._remote.answer(payload).to_json(), qos=1)
        elif topic in self._handlers:
            self._handlers[topic](topic, payload)

    def _drain(self) -> None:
        if not self.connected or self._hold_until_resent:
            return
        room = self.delivery.window - len(self._inflight)
        if room <= 0:
            return
        # Overdue segments first: they are older than anything not yet sent.
        room -= self._wait.republish_overdue(room, lambda entry: self._publish(entry, republish=True))
        if room <= 0:
            return
        busy = {f.entry.seq for f in self._inflight.values()} | self._wait.held()
        for entry in self.spool.pending(limit=len(busy) + room):
            if entry.seq in busy:
                continue
            sent = self._publish(entry, republish=False)
            if sent is None:
                continue
            if not sent:
                return
            room -= 1
            if room <= 0:
                return

    def _publish(self, entry: SpoolEntry, *, republish: bool) -> bool | None:
        """True: in flight. False: the client refused it (retried later). None: gone from the spool."""
        payload = self.spool.read(entry)
        if payload is None:
            return None
        topic = self.topics.segments
        info = self._client.publish(topic, payload, qos=self.delivery.qos)
        # NO_CONN: paho keeps a QoS>0 message and sends it on reconnect, so it is in flight all the same.
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("publish of segment %s refused by the client (rc %s); retried later", entry.key, info.rc)
            return False
        self._inflight[info.mid] = _InFlight(entry, len(topic.encode()), republish)
        return True

    def _handle_verdict(self, payload: bytes) -> None:
        try:
            verdict = Verdict.model_validate_json(payload)
        except ValidationError as exc:
            self._n["rejected_in"] += 1
            log.warning("ignored a malformed verdict: %s", first_error(exc))
            return
        if verdict.node_id != self.node_id:
            self._n["rejected_in"] += 1
            log.warning("ignored a verdict addressed to node %r", verdict.node_id)
            return
        self._n["verdicts"] += 1
        if self._wait.seconds is not None:
            # Before the callback: whoever has seen every verdict finds the spool empty.
            self._wait.settle(verdict.segment_id, (f.entry for f in self._inflight.values()))
        if self.on_verdict is not None:
            try:
                self.on_verdict(verdict)
            except Exception:
                log.exception("on_verdict callback failed for segment %s", verdict.segment_id)

    def _say_offline(self) -> None:
        if not self.connected:
            return
        # A clean DISCONNECT suppresses the will, so the retained status is set by hand.
        info = self._send(self.topics.status, self._offline, qos=1, retain=True)
        self._radio.disconnected()  # sent by close()
        try:
            info.wait_for_publish(timeout=2.0)
        except (RuntimeError, ValueError):
            pass

    def _send(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> paho.MQTTMessageInfo:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        self._radio.message(len(payload), topic, qos)
        return info
