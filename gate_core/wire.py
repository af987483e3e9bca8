"""What travels between node and cloud: versioned schemas, segment framing and topics, in one place.

Both sides import this module, so a field can never mean one thing on the node and another in the
cloud. Every model forbids unknown keys; a change of meaning bumps ``SCHEMA_VERSION``.

Segment message framing (one MQTT payload, all integers big-endian)::

    offset  size  field
    0       3     magic b"GSG"
    3       1     framing version (FRAME_VERSION = 1)
    4       4     header length N (uint32), at most MAX_HEADER_BYTES
    8       N     header: UTF-8 JSON object, a SegmentHeader
    8+N     rest  audio, as ``header.codec`` says: "flac" (a FLAC stream, 16-bit mono) or
                  "pcm_s16le" (raw little-endian int16); ``header.n_samples`` samples whose
                  little-endian int16 bytes hash to ``header.audio_sha256``

The hash covers the decoded PCM rather than the encoded bytes, so it also proves the codec was
lossless and lets the cloud store either form under one content id.

Topics (``<p>`` = topic prefix, default "gate"; ``<node>`` = node id)::

    <p>/<node>/segments     node -> cloud   segment messages, QoS 1 (cloud: $share/<group>/<p>/+/segments)
    <p>/<node>/verdict      cloud -> node   Verdict JSON, QoS 1
    <p>/<node>/status       node            Status JSON, retained; the last will says "offline"
    <p>/<node>/heartbeat    node -> cloud   Heartbeat JSON (ledger snapshot), QoS 0
    <p>/<node>/config       cloud -> node   ConfigUpdate JSON, QoS 1
    <p>/<node>/config/ack   node -> cloud   ConfigAck JSON, QoS 1
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soundfile as sf
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from gate_core.errors import GateError
from gate_core.ledger import LedgerSnapshot
from gate_core.strict import Strict

SCHEMA_VERSION = 1
FRAME_MAGIC = b"GSG"
FRAME_VERSION = 1
_PREFIX = struct.Struct(">3sBI")
PREFIX_BYTES = _PREFIX.size
MAX_HEADER_BYTES = 16_384
DEFAULT_MAX_SECONDS = 60.0
CODECS = ("flac", "pcm_s16le")
Codec = Literal["flac", "pcm_s16le"]

_ID_RE = r"[A-Za-z0-9_.-]{1,64}"
_LEVEL = re.compile(_ID_RE)
_SEGMENT_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class WireError(GateError):
    """A message that is not what the schema says. ``code`` is stable; ``field`` names where."""

    code = "wire_invalid"

    def __init__(self, code: str, reason: str, *, field: str | None = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason, code=code)


def new_id() -> str:
    """A random 128-bit id (uuid4, hex): unique across restarts without any stored counter."""
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------------------------
# Schemas


class WireModel(Strict):
    # strict: "5" is not an int on the wire; no NaN or infinity in any float.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


Scores = dict[str, float]


def _check_level(v: str) -> str:
    if not _LEVEL.fullmatch(v):
        raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
    return v


def _check_scores(v: Mapping[str, float]) -> Mapping[str, float]:
    if len(v) > 32:
        raise ValueError("at most 32 scores")
    for k in v:
        _check_level(k)
    return v


class SegmentHeader(WireModel):
    """What the node says about one segment. Times are on the node's AUDIO clock of boot ``boot_id``."""

    v: Literal[1] = Field(SCHEMA_VERSION, description="Schema version")
    node_id: str
    boot_id: str = Field(description="Random id of this node process start: audio times restart at 0 with it")
    segment_id: str = Field(description="Unique across restarts (uuid4 hex); the cloud dedupes on it")
    seq: int = Field(ge=0, description="Segment number within this boot")
    t_start_s: float = Field(ge=0.0, description="Audio-clock time of the first sample, s")
    t_end_s: float = Field(ge=0.0, description="Audio-clock time just after the last sample, s")
    t_detect_s: float = Field(ge=0.0, description="Audio-clock time the node's KWS fired, s")
    scores: Scores = Field(default_factory=dict, description="Score of each node stage, e.g. {'kws': 0.93}")
    sample_rate: int = Field(gt=0, le=192_000)
    codec: Codec
    n_samples: int = Field(gt=0)
    audio_sha256: str = Field(description="sha256 of the n_samples int16 little-endian samples")
    ledger_delta: dict[str, Any] = Field(
        default_factory=dict, description="EnergyLedger counts since the previous segment (LedgerSnapshot.to_dict)")
    sent_unix: float | None = Field(None, description="Wall time at encode, for latency metrics only")

    @field_validator("node_id")
    @classmethod
    def _node(cls, v: str) -> str:
        return _check_level(v)

    @field_validator("scores")
    @classmethod
    def _scores(cls, v: Scores) -> Scores:
        return _check_scores(v)

    @field_validator("boot_id", "segment_id")
    @classmethod
    def _hex_id(cls, v: str) -> str:
        if not _SEGMENT_ID.fullmatch(v):
            raise ValueError("must be 32 lower-case hex digits (uuid4 hex)")
        return v

    @field_validator("audio_sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not _SHA256.fullmatch(v):
            raise ValueError("must be 64 lower-case hex digits")
        return v

    @field_validator("ledger_delta")
    @classmethod
    def _ledger(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v:
            try:
                LedgerSnapshot.from_dict(v)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"not a ledger snapshot ({exc})") from None
        return v

    @model_validator(mode="after")
    def _times(self) -> SegmentHeader:
        if self.t_end_s < self.t_start_s:
            raise ValueError("t_end_s is before t_start_s")
        if not self.t_start_s <= self.t_detect_s <= self.t_end_s:
            raise ValueError("t_detect_s must lie within [t_start_s, t_end_s]")
        return self

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate


class Verdict(WireModel):
    """The cloud's answer about one segment."""

    v: Literal[1] = SCHEMA_VERSION
    segment_id: str
    node_id: str
    accepted: bool
    scores: Scores = Field(default_factory=dict, description="Score of each cloud model")
    command: str | None = Field(None, max_length=256)
    text: str | None = Field(None, max_length=4096)
    models: dict[str, str] = Field(default_factory=dict, description="Model name -> version that decided")
    rejected_code: str | None = Field(None, description="WireError code when the message itself was refused")
    reason: str | None = Field(None, max_length=1024)
    sent_unix: float | None = Field(None, description="The node's sent_unix, echoed")
    received_unix: float | None = None
    decided_unix: float | None = None

    @field_validator("scores")
    @classmethod
    def _scores(cls, v: Scores) -> Scores:
        return _check_scores(v)


class Status(WireModel):
    """Retained on the status topic: "online" on connect, "offline" as the last will or on close."""

    v: Literal[1] = SCHEMA_VERSION
    node_id: str
    state: Literal["online", "offline"]
    boot_id: str | None = None
    version: str | None = None


class Heartbeat(WireModel):
    v: Literal[1] = SCHEMA_VERSION
    node_id: str
    boot_id: str
    seq: int = Field(ge=0)
    audio_s: float = Field(ge=0.0, description="Audio clock of this boot, s")
    ledger: dict[str, Any] = Field(description="EnergyLedger snapshot (LedgerSnapshot.to_dict)")
    spool_pending: int = Field(0, ge=0)
    spool_dropped: int = Field(0, ge=0)
    sent_unix: float | None = None


class ConfigUpdate(WireModel):
    """A remote threshold change: dotted settings paths -> new values, validated by the node."""

    v: Literal[1] = SCHEMA_VERSION
    request_id: str = Field(min_length=1, max_length=64)
    changes: dict[str, Any] = Field(min_length=1, max_length=64)


class ConfigAck(WireModel):
    v: Literal[1] = SCHEMA_VERSION
    request_id: str | None = Field(None, description="None when the update was too broken to carry one")
    node_id: str
    accepted: bool
    reason: str | None = Field(None, description="Why it was rejected; the running config is unchanged then")
    applied: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Segment framing


def pcm_sha256(samples: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(samples, dtype="<i2").tobytes()).hexdigest()


def encode_audio(samples: np.ndarray, codec: str, *, sample_rate: int) -> bytes:
    x = _as_int16(samples)
    if codec == "pcm_s16le":
        return x.astype("<i2").tobytes()
    if codec == "flac":
        buf = io.BytesIO()
        sf.write(buf, x, sample_rate, format="FLAC", subtype="PCM_16")
        return buf.getvalue()
    raise WireError("wire_codec", f"unknown codec {codec!r} (known: {', '.join(CODECS)})", field="codec")


def encode_segment(header: SegmentHeader, samples: np.ndarray, codec: str | None = None) -> bytes:
    """Frame ``header`` and ``samples``; n_samples, audio_sha256 and codec are set from the audio."""
    x = _as_int16(samples)
    codec = codec or header.codec
    if codec not in CODECS:
        raise WireError("wire_codec", f"unknown codec {codec!r} (known: {', '.join(CODECS)})", field="codec")
    header = header.model_copy(update={"codec": codec, "n_samples": int(x.size), "audio_sha256": pcm_sha256(x)})
    # model_copy skips validation; round-trip so an encoder can never emit what the decoder refuses.
    header = SegmentHeader.model_validate(header.model_dump())
    head = header.to_json()
    if len(head) > MAX_HEADER_BYTES:
        raise WireError("wire_too_large", f"header is {len(head)} B, limit {MAX_HEADER_BYTES} B", field="header")
    audio = encode_audio(x, codec, sample_rate=header.sample_rate)
    return _PREFIX.pack(FRAME_MAGIC, FRAME_VERSION, len(head)) + head + audio


def rewrite_header(payload: bytes, **changes: Any) -> bytes:
    """``payload`` with header fields replaced and the audio untouched: no re-encoding and no
    validation. For tools, not the node: the load test re-addresses one encoded segment to many
    simulated nodes, and the fuzz campaign forges headers."""
    head, audio = _split(payload, max_bytes=len(payload))
    fields = _parse_json(head)
    fields.update(changes)
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return _PREFIX.pack(FRAME_MAGIC, FRAME_VERSION, len(raw)) + raw + audio


def peek_header(payload: bytes) -> dict[str, Any]:
    """The header as a dict without checking the audio (for logs and rejection replies); raises WireError."""
    head, _ = _split(payload, max_bytes=len(payload))
    return _parse_json(head)


def decode_segment(payload: bytes, *, max_bytes: int, expected_rate: int = 16_000,
                   max_seconds: float = DEFAULT_MAX_SECONDS) -> tuple[SegmentHeader, np.ndarray]:
    """Validate a segment message completely: (header, int16 samples), or a WireError saying why."""
    head, audio = _split(payload, max_bytes=max_bytes)
    raw = _parse_json(head)
    if type(raw.get("v")) is not int or raw["v"] != SCHEMA_VERSION:
        raise WireError("wire_version", f"schema version {raw.get('v')!r} is not {SCHEMA_VERSION}", field="v")
    if raw.get("codec") not in CODECS:
        raise WireError("wire_codec", f"unknown codec {raw.get('codec')!r} (known: {', '.join(CODECS)})",
                        field="codec")
    try:
        header = SegmentHeader.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "header"
        raise WireError("wire_header_schema", err["msg"].removeprefix("Value error, "), field=where) from None
    if header.sample_rate != expected_rate:
        raise WireError("wire_sample_rate", f"{header.sample_rate} Hz, expected {expected_rate} Hz",
                        field="sample_rate")
    if header.n_samples > max_seconds * expected_rate:
        raise WireError("wire_too_large", f"{header.n_samples} samples is more than {max_seconds:g} s",
                        field="n_samples")
    samples = _decode_audio(audio, header)
    if samples.size != header.n_samples:
        raise WireError("wire_n_samples", f"audio holds {samples.size} samples, header says {header.n_samples}",
                        field="n_samples")
    if pcm_sha256(samples) != header.audio_sha256:
        raise WireError("wire_sha256", "audio does not match its hash", field="audio_sha256")
    return header, samples


def _split(payload: bytes, *, max_bytes: int) -> tuple[bytes, bytes]:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireError("wire_type", f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > max_bytes:
        raise WireError("wire_too_large", f"message is {len(payload)} B, limit {max_bytes} B", field="payload")
    if len(payload) < PREFIX_BYTES:
        raise WireError("wire_truncated", f"message is {len(payload)} B, shorter than the {PREFIX_BYTES} B prefix",
                        field="prefix")
    magic, version, n = _PREFIX.unpack_from(payload)
    if magic != FRAME_MAGIC:
        raise WireError("wire_bad_magic", f"magic {magic!r} is not {FRAME_MAGIC!r}", field="prefix.magic")
    if version != FRAME_VERSION:
        raise WireError("wire_version", f"framing version {version} is not {FRAME_VERSION}", field="prefix.version")
    if n > MAX_HEADER_BYTES:
        raise WireError("wire_too_large", f"header length {n} B, limit {MAX_HEADER_BYTES} B", field="prefix.header_len")
    if PREFIX_BYTES + n > len(payload):
        raise WireError("wire_truncated", f"header length {n} B runs past the end of the {len(payload)} B message",
                        field="prefix.header_len")
    return payload[PREFIX_BYTES:PREFIX_BYTES + n], payload[PREFIX_BYTES + n:]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(head: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(head.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError("wire_header_json", f"header is not UTF-8 JSON ({type(exc).__name__}: {exc})"[:300],
                        field="header") from None
    if not isinstance(raw, dict):
        raise WireError("wire_header_json", f"header must be a JSON object, got {type(raw).__name__}",
                        field="header")
    return raw


def _decode_audio(audio: bytes, header: SegmentHeader) -> np.ndarray:
    if header.codec == "pcm_s16le":
        if len(audio) % 2:
            raise WireError("wire_audio", f"PCM audio is {len(audio)} B, not whole int16 samples", field="audio")
        return np.frombuffer(audio, dtype="<i2").astype(np.int16)
    if not audio.startswith(b"fLaC"):
        raise WireError("wire_audio", "audio is not a FLAC stream (no fLaC marker)", field="audio")
    try:
        with sf.SoundFile(io.BytesIO(audio)) as f:
            if f.format != "FLAC" or f.channels != 1:
                raise WireError("wire_audio", f"expected mono FLAC, got {f.format} with {f.channels} channels",
                                field="audio")
            if f.samplerate != header.sample_rate:
                raise WireError("wire_sample_rate", f"FLAC says {f.samplerate} Hz, header says {header.sample_rate} Hz",
                                field="audio.sample_rate")
            # Read one past the claim: never more than the header allows, however the stream lies.
            data = f.read(frames=header.n_samples + 1, dtype="int16", always_2d=False)
    except WireError:
        raise
    except Exception as exc:  # libsndfile reports corrupt streams with several exception types
        raise WireError("wire_audio", f"FLAC does not decode ({type(exc).__name__}: {exc})"[:300],
                        field="audio") from None
    return np.ascontiguousarray(data, dtype=np.int16).reshape(-1)


def _as_int16(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.dtype != np.int16 or x.ndim != 1:
        raise TypeError("samples must be a 1-D int16 array")
    return x


# ---------------------------------------------------------------------------------------------
# Topics

SEGMENTS, VERDICT, STATUS, HEARTBEAT, CONFIG, CONFIG_ACK = (
    "segments", "verdict", "status", "heartbeat", "config", "config/ack")
KINDS = (SEGMENTS, VERDICT, STATUS, HEARTBEAT, CONFIG, CONFIG_ACK)


@dataclass(frozen=True, slots=True)
class NodeTopics:
    """Every topic of one node. Construction validates both levels, so no topic can carry a wildcard."""

    node_id: str
    prefix: str = "gate"

    def __post_init__(self) -> None:
        for name in ("node_id", "prefix"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _LEVEL.fullmatch(value):
                raise WireError("wire_topic", f"{value!r} is not a valid topic level", field=name)

    def topic(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown topic kind {kind!r}")
        return f"{self.prefix}/{self.node_id}/{kind}"

    segments = property(lambda self: self.topic(SEGMENTS))
    verdict = property(lambda self: self.topic(VERDICT))
    status = property(lambda self: self.topic(STATUS))
    heartbeat = property(lambda self: self.topic(HEARTBEAT))
    config = property(lambda self: self.topic(CONFIG))
    config_ack = property(lambda self: self.topic(CONFIG_ACK))


def default_client_id(node_id: str, prefix: str = "gate") -> str:
    """The node's MQTT client id: stable, so the broker keeps its persistent session across restarts."""
    return f"gate-{prefix}-{node_id}"


def shared_subscription(kind: str, *, group: str, prefix: str = "gate") -> str:
    """The cloud's load-balanced filter for ``kind`` from every node: $share/<group>/<prefix>/+/<kind>."""
    for name, value in (("group", group), ("prefix", prefix)):
        if not _LEVEL.fullmatch(value):
            raise WireError("wire_topic", f"{value!r} is not a valid topic level", field=name)
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"$share/{group}/{prefix}/+/{kind}"


def parse_topic(topic: str, *, prefix: str = "gate") -> tuple[str, str]:
    """(node_id, kind) of a concrete topic; WireError for anything else (wildcards, extra levels, ...)."""
    if not isinstance(topic, str) or len(topic) > 256:
        raise WireError("wire_topic", "topic must be a string of at most 256 characters", field="topic")
    parts = topic.split("/", 2)
    if len(parts) != 3 or parts[0] != prefix:
        raise WireError("wire_topic", f"{topic!r} is not under {prefix!r}/<node>/", field="topic")
    node, kind = parts[1], parts[2]
    if not _LEVEL.fullmatch(node):
        raise WireError("wire_topic", f"node level {node!r} is not a valid node id", field="topic.node_id")
    if kind not in KINDS:
        raise WireError("wire_topic", f"unknown topic kind {kind!r}", field="topic.kind")
    return node, kind
