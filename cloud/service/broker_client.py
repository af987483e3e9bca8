"""The worker's MQTT side; the only cloud module that imports paho.

Delivery guarantees rest on four settings:

- MQTT 5 with ``clean_start=False`` and a session expiry: the broker keeps this worker's session
  (subscription plus unacknowledged segments) while it is away, and hands them back when a worker
  with the same client id reconnects. mosquitto 2.0 also keeps routing a shared group's share of
  new messages to a member whose session is offline, so a dead worker must come back under the
  same id (the supervisor restarts it) or its share waits until the session expires.
- ``manual_ack``: the PUBACK goes out only after the verdict is committed and published.
- Receive Maximum: at most ``receive_maximum`` unacknowledged segments per worker; the broker
  holds the rest, so a slow worker is never flooded and a crash strands no more than that.
- Acknowledgements carry the connection generation: packet ids restart with every connection,
  so acknowledging a message from an earlier connection could acknowledge a different one. Such a
  message is simply not acknowledged; the broker redelivers it and the store dedupes it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.metrics import ServiceMetrics
from gate_core.cloud_config import CloudConfig
from gate_core.errors import ConfigError
from gate_core.netutil import UnreachableLog, parse_broker_url, set_no_delay
from gate_core.wire import SEGMENTS, shared_subscription

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    generation: int  # which connection it arrived on
    received_unix: float


class BrokerClient:
    def __init__(self, cfg: CloudConfig, *, client_id: str, metrics: ServiceMetrics, retire: bool = False) -> None:
        self.cfg = cfg
        # retire: take over this client id's session only to empty it; unsubscribe instead of subscribing.
        self.retire = retire
        self.client_id = client_id
        self.url = parse_broker_url(cfg.broker)
        self.filter = shared_subscription(SEGMENTS, group=cfg.group, prefix=cfg.topic_prefix)
        self._metrics = metrics
        # Unbounded on purpose: Receive Maximum already bounds what the broker sends unacknowledged.
        self._inbox: queue.Queue[Delivery] = queue.Queue()
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self.subscribed = threading.Event()
        self.unsubscribed = threading.Event()
        c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=paho.MQTTv5, manual_ack=True)
        c.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        if cfg.username is not None:
            password = None
            if cfg.password_file:
                try:
                    password = Path(cfg.password_file).expanduser().read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"cloud.password_file: cannot read {cfg.password_file} ({exc})") from None
            c.username_pw_set(cfg.username, password)
        if self.url.tls or cfg.tls.enabled:
            c.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_message = self._on_message
        c.on_connect_fail = self._on_connect_fail
        self._unreachable = UnreachableLog(log, str(self.url))
        self._client = c

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        # connect_async: a broker that is down at start is retried by the loop like any later outage.
        self._client.connect_async(self.url.host, self.url.port, keepalive=self.cfg.keepalive_s,
                                   clean_start=False, properties=props)
        self._client.loop_start()

    def close(self, *, end_session: bool = False) -> None:
        """Disconnect cleanly. The session, and whatever is still unacknowledged in it, stays with the broker
        unless ``end_session`` (only once it is empty and unsubscribed: the broker drops what is left)."""
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        try:
            self._client.disconnect(properties=props)
        finally:
            self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected

    # -- messages -------------------------------------------------------------------------------

    def get(self, timeout: float) -> Delivery | None:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def pending(self) -> int:
        return self._inbox.qsize()

    def publish(self, topic: str, payload: bytes, *, timeout: float) -> bool:
        """Publish at QoS 1 and wait for the broker's PUBACK; False if it did not come in time."""
        try:
            info = self._client.publish(topic, payload, qos=1)
            info.wait_for_publish(timeout)
            return info.is_published()
        except (RuntimeError, ValueError) as exc:
            log.warning("publish to %s failed: %s", topic, exc)
            return False

    def ack(self, d: Delivery) -> bool:
        if d.qos == 0:
            return True
        with self._lock:
            if d.generation != self._generation or not self._connected:
                return False
            rc = self._client.ack(d.mid, d.qos)
        return rc == paho.MQTT_ERR_SUCCESS

    # -- paho callbacks (network thread) ----------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused %s: %s", self.url, self.client_id, reason_code)
            return
        _no_delay(client)
        self._unreachable.reached()
        with self._lock:
            self._generation += 1
            self._connected = True
        self._metrics.connected.set(1)
        self._metrics.reconnects.inc()
        log.info("connected to %s as %s (session present: %s)", self.url, self.client_id, flags.session_present)
        if self.retire:
            client.unsubscribe(self.filter)
            return
        # Subscribing again on a resumed session is harmless and covers a broker that lost its state.
        client.subscribe(self.filter, qos=1)

    def _on_connect_fail(self, client, userdata) -> None:
        self._unreachable.failed()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("broker refused subscription %s: %s", self.filter, reason_codes)
            return
        self.subscribed.set()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.unsubscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            self._connected = False
        self._metrics.connected.set(0)
        if reason_code != 0:
            log.warning("disconnected from %s (%s); reconnecting", self.url, reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        # An exception here would end paho's network thread: nothing may escape.
        try:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = bytes(msg._topic).decode("utf-8", "replace")
            with self._lock:
                generation = self._generation
            self._inbox.put(Delivery(topic=topic, payload=bytes(msg.payload), mid=msg.mid, qos=msg.qos,
                                     dup=bool(msg.dup), generation=generation, received_unix=time.time()))
        except Exception:
            log.exception("could not queue a message (it stays unacknowledged and will be redelivered)")


def _no_delay(client: paho.Client) -> None:
    set_no_delay(client.socket())
