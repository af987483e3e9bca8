"""Settings of `gate-cloud serve` (the ``cloud:`` section of the thresholds file).

Validated once in ``main()`` and handed to every worker as JSON, so all workers of one service run
with exactly the same limits.
"""

from __future__ import annotations

import re
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gate_core.strict import Strict
from gate_core.tls import TlsConfig

_LEVEL = r"[A-Za-z0-9_.-]{1,64}"


# Where the command starts after the node's fire time varies by talker and by when the node fired, so
# the window is read at a few offsets after the given start and the most confident read naming a command
# wins (cloud.commands.CommandRecognizer.recognise). Chosen on dev scenes spoken by training voices (3 h,
# 137 verified detections): (0, 0.1, 0.2) read 115 commands right against 112 from the fire time alone;
# averaging the reads instead was worse at every offset set tried.
COMMAND_READ_OFFSETS_S = (0.0, 0.1, 0.2)


class ServerPowerConfig(Strict):
    """How the service prices its own CPU time: joules = CPU s x watts per busy core x PUE."""

    watts_per_busy_core: float = Field(
        3.5, gt=0.0, le=100.0,
        description="Server power per fully busy vCPU, W (3.5 = Cloud Carbon Footprint's AWS average max watts "
                    "per vCPU, derived from SPECpower_ssj2008)")
    pue: float = Field(1.58, ge=1.0, le=3.0, description="Data-centre PUE (1.58 = Uptime Institute survey 2023)")
    grid_g_co2e_per_kwh: float = Field(
        475.0, ge=0.0, le=2000.0, description="Grid carbon intensity, gCO2e/kWh (475 = world average, IEA 2019)")
    source: str = Field(
        "Cloud Carbon Footprint methodology (compute): AWS average 0.74 W min / 3.5 W max per vCPU from "
        "SPECpower_ssj2008; CPU seconds are busy seconds, so the max figure applies. Uptime Institute 2023: PUE 1.58",
        description="Where the figures come from")


class CloudConfig(Strict):
    """The cloud verifier service: broker, shared subscription, workers, storage, limits, metrics."""

    broker: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host[:port] or mqtts://host[:port]")
    topic_prefix: str = Field("gate", description="First level of every topic; segments arrive on <prefix>/+/segments")
    group: str = Field("gate-cloud", description="MQTT shared-subscription group: workers of one group split the load")
    client_id_prefix: str | None = Field(
        None, description="Workers connect as <prefix>-<index>; stable ids let a restarted worker resume its "
                          "broker session (null = gate-cloud-<hostname>)")
    workers: int = Field(1, ge=1, le=64, description="Worker processes started locally by `serve`")
    username: str | None = Field(None, description="Broker user name (null = anonymous)")
    password_file: str | None = Field(None, description="File holding the broker password (kept out of this file)")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS towards the broker (implied by mqtts://)")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive, s")
    reconnect_min_s: float = Field(0.5, gt=0.0, le=60.0, description="First reconnect delay; doubles each failure, s")
    reconnect_max_s: float = Field(30.0, gt=0.0, le=3600.0, description="Longest reconnect delay, s")
    session_expiry_s: int = Field(
        7 * 86400, ge=60, le=4_294_967_294,
        description="How long the broker keeps a dead worker's session and its unacknowledged segments, s")
    receive_maximum: int = Field(
        16, ge=1, le=1024, description="Segments in flight per worker; the broker holds the rest (backpressure)")
    db_url: str = Field(
        "sqlite:///~/.local/state/gate/cloud.sqlite3",
        description="sqlite:///<path> (WAL; sqlite:////abs/path for an absolute one) or postgresql://...")
    store_audio: bool = Field(False, description="Keep each segment's audio (as received) next to its verdict")
    audio_retention_h: float = Field(24.0, gt=0.0, le=87_600.0, description="Stored audio is deleted after this, h")
    rejects_retention_h: float = Field(168.0, gt=0.0, le=87_600.0, description="Rejected-message log kept, h")
    max_payload_kb: int = Field(1024, ge=16, le=262_144, description="Largest segment message accepted, kB")
    max_segment_s: float = Field(30.0, gt=0.0, le=600.0, description="Longest segment accepted, s of audio")
    sample_rate: Literal[16000] = Field(16000, description="Sample rate every segment must have, Hz")
    models_factory: str | None = Field(
        None, description="module:callable taking this config and returning cloud.service.models.CloudModels, "
                          "for other models (null = the shipped TFLite verifier and command recogniser)")
    verifier: Literal["v1", "v2"] = Field(
        "v1", description="Shipped verifier: v1 (temporal CNN on log-mel) or v2 (head on the speech-embedding front "
                          "end learned from real speech; needs openwakeword==0.5.1 installed)")
    verifier_model: str | None = Field(
        None, description="Verifier .tflite (null = the shipped one named by verifier); its card says v1 or v2")
    commands_model: str | None = Field(None, description="Command model .tflite (null = the shipped one)")
    verifier_threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="Accept at or above this verifier score (null = the model card's)")
    command_min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="Below this no command is reported")
    command_read_offsets_s: list[Annotated[float, Field(ge=-0.5, le=1.0)]] = Field(
        list(COMMAND_READ_OFFSETS_S), min_length=1, max_length=8,
        description="The command window is read at each of these offsets after the fire time; the most "
                    "confident read naming a command wins (each extra read costs about 0.2 ms), s")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus / JSON summary endpoint")
    metrics_port: int = Field(
        9464, ge=0, le=65_535, description="Port of worker 0's endpoint, worker i uses port + i (0 = free ports)")
    verdict_timeout_s: float = Field(
        10.0, gt=0.0, le=300.0, description="Wait this long for the broker to take a verdict before the segment "
                                            "is left unacknowledged (it is then redelivered), s")
    shutdown_grace_s: float = Field(
        15.0, gt=0.0, le=600.0, description="On SIGTERM, finish in-flight segments for at most this long, s")
    server: ServerPowerConfig = Field(default_factory=ServerPowerConfig,
                                      description="Server power profile the service prices its CPU time with")

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        if not re.fullmatch(r"mqtts?://[^\s:/@]+(:\d{1,5})?/?", v):
            raise ValueError("must be mqtt://host[:port] or mqtts://host[:port]")
        return v

    @field_validator("topic_prefix", "group")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        if not re.fullmatch(_LEVEL, v):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-' (no MQTT wildcards or '/')")
        return v

    @field_validator("client_id_prefix")
    @classmethod
    def _client_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,48}", v):
            raise ValueError("must be 1-48 characters of letters, digits, '_', '.', '-'")
        return v

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") and len(v) > len("sqlite:///")) and \
                not re.match(r"postgres(ql)?://", v):
            raise ValueError("must be sqlite:///<path> or postgresql://user@host/db")
        return v

    @field_validator("models_factory")
    @classmethod
    def _factory(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError("must be module.path:callable")
        return v

    @model_validator(mode="after")
    def _ports(self) -> CloudConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s is shorter than reconnect_min_s")
        if self.metrics_port and self.metrics_port + self.workers - 1 > 65_535:
            raise ValueError(f"metrics_port {self.metrics_port} + {self.workers} workers runs past port 65535")
        return self

    @property
    def effective_client_id_prefix(self) -> str:
        return self.client_id_prefix or "gate-cloud-" + _hostname()

    def client_id(self, index: int) -> str:
        return f"{self.effective_client_id_prefix}-{index}"

    def metrics_port_of(self, index: int) -> int:
        return self.metrics_port + index if self.metrics_port else 0


def _hostname() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
