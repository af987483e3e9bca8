"""Settings of the MQTT transport (the ``mqtt:`` section of the thresholds file)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from gate.energy.wire import TLS_RECORD_OVERHEAD_B, SessionBytes
from gate_core.errors import GateError
from gate_core.netutil import parse_broker_url
from gate_core.strict import Strict
from gate_core.tls import TlsConfig


class MqttConfig(Strict):
    """Transport of segments to the cloud and of verdicts back."""

    broker: str = Field(
        "embedded", description="'embedded' (a private broker on a free loopback port for this run) "
                                "or mqtt://host:port / mqtts://host:port")
    node_id: str = Field("node1", description="This node's id: topics live under <topic_prefix>/<node_id>/")
    topic_prefix: str = Field("gate", description="First level of every topic")
    qos: int = Field(1, ge=1, le=2, description="QoS of segment messages (at least once: the spool and the "
                                                "cloud's dedupe rely on it)")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive, s")
    username: str | None = Field(None, description="Broker user name (null = anonymous)")
    password_file: str | None = Field(None, description="File holding the broker password (kept out of this file)")
    tls: TlsConfig = Field(default_factory=TlsConfig)
    reconnect_min_s: float = Field(1.0, gt=0.0, le=60.0, description="First reconnect delay; doubles each failure, s")
    reconnect_max_s: float = Field(60.0, gt=0.0, le=3600.0, description="Longest reconnect delay, s")
    spool_dir: str = Field("~/.local/state/gate/spool", description="Where segments wait while the broker is away")
    spool_max_mb: float = Field(64.0, gt=0.0, le=65536.0, description="Spool bound; the oldest segments go first, MB")
    max_payload_kb: int = Field(1024, ge=16, le=262144, description="Largest segment message accepted, kB")
    await_verdict_s: float | None = Field(
        30.0, ge=1.0, le=3600.0,
        description="Keep each segment spooled until the cloud's verdict arrives, not just the broker's PUBACK, and "
                    "publish it again (same segment id: the cloud dedupes and answers from its store) when no verdict "
                    "has come this long after the PUBACK, s; null = delete on PUBACK (for a broker nobody answers on)")

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        if v != "embedded" and not re.fullmatch(r"mqtts?://[^\s:/]+(:\d{1,5})?/?", v):
            raise ValueError("must be 'embedded' or mqtt://host[:port] or mqtts://host[:port]")
        return v

    @field_validator("node_id", "topic_prefix")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-' (no MQTT wildcards or '/')")
        return v


def estimated_session(mqtt: MqttConfig) -> SessionBytes:
    """The control traffic a node with these settings would put on the radio (CONNECT with its will,
    the verdict and config subscriptions, keepalives), for when no transport is running. The broker
    password, a secret, is not read: its bytes are left out of the CONNECT."""
    from gate import __version__
    from gate_core.wire import NodeTopics, Status, default_client_id, new_id

    topics = NodeTopics(mqtt.node_id, mqtt.topic_prefix)
    offline = Status(node_id=mqtt.node_id, state="offline", boot_id=new_id(), version=__version__).to_json()
    return SessionBytes.of(client_id=default_client_id(mqtt.node_id, mqtt.topic_prefix), will_topic=topics.status,
                           will_payload=offline, username=mqtt.username, password=None,
                           subscribe=[topics.verdict, topics.config], keepalive_s=mqtt.keepalive_s,
                           tls_record_overhead=TLS_RECORD_OVERHEAD_B if uses_tls(mqtt) else 0)


def uses_tls(mqtt: MqttConfig) -> bool:
    return mqtt.tls.enabled or mqtt.broker.startswith("mqtts://")


# -- what one MqttTransport is built from ----------------------------------------------------------

DEFAULT_WINDOW = 16


class TransportError(GateError):
    code = "transport_error"


@dataclass(frozen=True, slots=True)
class BrokerLink:
    """Where the broker is and how the connection to it is held. ``password`` is the secret itself."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "port", int(self.port))
        for name in ("keepalive_s", "reconnect_min_s", "reconnect_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def of(cls, cfg: MqttConfig, *, host: str | None = None, port: int | None = None) -> BrokerLink:
        """``host``/``port`` default to ``cfg.broker``; pass them for an embedded broker. The password is
        read from ``cfg.password_file``; an mqtts:// broker turns TLS on."""
        if host is None or port is None:
            if cfg.broker == "embedded":
                raise TransportError("mqtt.broker is 'embedded': start it (broker_endpoint) and pass host and port",
                                     code="transport_state")
            url = parse_broker_url(cfg.broker)
            host, port = url.host, url.port
        password = None
        if cfg.password_file:
            try:
                password = Path(cfg.password_file).expanduser().read_text().rstrip("\r\n")
            except OSError as exc:
                raise TransportError(f"mqtt.password_file: cannot read {cfg.password_file} ({exc})",
                                     code="mqtt_password_file") from None
        tls = cfg.tls
        if uses_tls(cfg) and not tls.enabled:
            tls = tls.model_copy(update={"enabled": True})
        return cls(host=host, port=port, username=cfg.username, password=password, tls=tls,
                   keepalive_s=cfg.keepalive_s, reconnect_min_s=cfg.reconnect_min_s,
                   reconnect_max_s=cfg.reconnect_max_s)

    @property
    def tls_enabled(self) -> bool:
        return self.tls is not None and self.tls.enabled

    @property
    def tls_record_overhead(self) -> int:
        """Bytes each TLS record adds on the radio (0 on a plain link)."""
        return TLS_RECORD_OVERHEAD_B if self.tls_enabled else 0


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who is on the link: topics live under ``<topic_prefix>/<node_id>/``. ``client_id`` defaults to one
    stable per node (the broker keeps the persistent session under it); ``boot_id`` to a new one per run."""

    node_id: str
    topic_prefix: str = "gate"
    client_id: str | None = None
    boot_id: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """How segments go: QoS, how many in flight at once, the largest accepted, and ``await_verdict_s``,
    how long after its PUBACK a segment may wait for its verdict before it is published again (None
    deletes segments on PUBACK; see gate.transport.mqtt)."""

    qos: int = 1
    window: int = DEFAULT_WINDOW
    max_payload_bytes: int = 1 << 20
    await_verdict_s: float | None = None

    def __post_init__(self) -> None:
        if self.qos not in (1, 2):
            raise ValueError(f"qos must be 1 or 2, got {self.qos}: the spool deletes a segment only on its "
                             "acknowledgement")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be >= 1, got {self.max_payload_bytes}")
        check_await_verdict(self.await_verdict_s)

    @classmethod
    def of(cls, cfg: MqttConfig) -> Delivery:
        return cls(qos=max(cfg.qos, 1), max_payload_bytes=cfg.max_payload_kb * 1024,
                   await_verdict_s=cfg.await_verdict_s)


def check_await_verdict(seconds: float | None) -> None:
    if seconds is not None and not seconds > 0:
        raise ValueError(f"await_verdict_s must be positive or None, got {seconds}")
