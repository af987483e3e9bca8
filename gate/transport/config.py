"""Settings of the MQTT transport (the ``mqtt:`` section of the thresholds file)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from gate.energy.wire import TLS_RECORD_OVERHEAD_B, SessionBytes
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
