"""Bytes on the wire for an MQTT publish: one function shared by the baselines and the transport.

Figures (ENERGY.md, Radio and protocol):
- MQTT 3.1.1 PUBLISH: 1 B control byte + 1-4 B remaining length + 2 B topic length + topic
  (+2 B packet id at QoS > 0); PUBACK is 4 B; QoS 2 adds PUBREC/PUBREL/PUBCOMP, 4 B each
  (OASIS MQTT 3.1.1 sections 2-3).
- TCP/IPv4 headers: 40 B per segment, no options ("standard"). MSS 1460 = 1500 B Ethernet/Wi-Fi
  MTU - 40 B.
- TLS, when used: 21-29 B per record (netsekure TLS overhead); the handshake is a per-connect
  cost and belongs to the radio's ``wake_j``, not here.
- Session control (OASIS MQTT 3.1.1 section 3): CONNECT is 10 B of variable header (protocol name,
  level, flags, keepalive) + length-prefixed client id, will topic and message, user name and
  password; CONNACK 4 B; SUBSCRIBE 2 B packet id + (2 B length + filter + 1 B QoS) per topic, and
  SUBACK 2 B + 1 B per topic; PINGREQ, PINGRESP and DISCONNECT 2 B each. Each rides its own segment.
Deliberately left out: bare TCP ACKs (delayed ACK lets the PUBACK carry most of them) and 802.11
MAC/PHY framing (already inside a measured per-byte radio figure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MQTT_FIXED_HEADER_B = 1
MQTT_TOPIC_LEN_FIELD_B = 2
MQTT_PACKET_ID_B = 2
MQTT_ACK_PACKET_B = 4  # PUBACK, PUBREC, PUBREL, PUBCOMP
MQTT_CONNACK_B = 4
MQTT_PING_B = 2  # PINGREQ, PINGRESP
MQTT_DISCONNECT_B = 2
MQTT_CONNECT_VARIABLE_HEADER_B = 10  # 00 04 "MQTT", level 4, connect flags, keepalive (2 B)
MQTT_MAX_REMAINING_LENGTH = 268_435_455
TCP_IPV4_HEADER_B = 40
TCP_MSS_B = 1460
TLS_RECORD_MAX_PLAINTEXT_B = 16_384
TLS_RECORD_OVERHEAD_B = 29  # upper end of 21-29 B: AES-GCM record header + explicit nonce + tag

# "gate/<node-id>/segment"-sized; the transport passes its real topic length.
DEFAULT_TOPIC_LEN = 24


def _remaining_length_field_b(remaining: int) -> int:
    if remaining > MQTT_MAX_REMAINING_LENGTH:
        raise ValueError(f"MQTT message too large: remaining length {remaining} > {MQTT_MAX_REMAINING_LENGTH}")
    return 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4


def mqtt_publish_b(payload_bytes: int, *, topic_len: int, qos: int = 1) -> int:
    """Size of one MQTT 3.1.1 PUBLISH packet carrying ``payload_bytes``."""
    remaining = MQTT_TOPIC_LEN_FIELD_B + topic_len + (MQTT_PACKET_ID_B if qos else 0) + payload_bytes
    return MQTT_FIXED_HEADER_B + _remaining_length_field_b(remaining) + remaining


def _str_field_b(value: str | bytes) -> int:
    return 2 + len(value.encode() if isinstance(value, str) else value)


def _packet_b(remaining: int) -> int:
    return MQTT_FIXED_HEADER_B + _remaining_length_field_b(remaining) + remaining


def mqtt_connect_b(*, client_id: str, will_topic: str | None = None, will_payload: bytes = b"",
                   username: str | None = None, password: str | None = None) -> int:
    """Size of one MQTT 3.1.1 CONNECT packet (the password is sent only with a user name)."""
    remaining = MQTT_CONNECT_VARIABLE_HEADER_B + _str_field_b(client_id)
    if will_topic is not None:
        remaining += _str_field_b(will_topic) + _str_field_b(will_payload)
    if username is not None:
        remaining += _str_field_b(username) + (_str_field_b(password) if password is not None else 0)
    return _packet_b(remaining)


def mqtt_subscribe_b(topics: list[str]) -> tuple[int, int]:
    """Sizes of one MQTT 3.1.1 SUBSCRIBE for ``topics`` and of its SUBACK."""
    subscribe = _packet_b(MQTT_PACKET_ID_B + sum(_str_field_b(t) + 1 for t in topics))
    return subscribe, _packet_b(MQTT_PACKET_ID_B + len(topics))


def control_b(*packets: int, tls_record_overhead: int = 0, mss: int = TCP_MSS_B) -> int:
    """Radio bytes of MQTT control packets (CONNECT, SUBSCRIBE, PINGREQ...), each in its own TCP segment."""
    return sum(_tcp_b(p, mss=mss, tls_record_overhead=tls_record_overhead) for p in packets)


def _tcp_b(app_bytes: int, *, mss: int, tls_record_overhead: int) -> int:
    if tls_record_overhead:
        app_bytes += math.ceil(app_bytes / TLS_RECORD_MAX_PLAINTEXT_B) * tls_record_overhead
    return app_bytes + math.ceil(app_bytes / mss) * TCP_IPV4_HEADER_B


def _one_message_b(payload: int, *, topic_len: int, qos: int, mss: int, tls_record_overhead: int) -> int:
    total = _tcp_b(
        mqtt_publish_b(payload, topic_len=topic_len, qos=qos), mss=mss, tls_record_overhead=tls_record_overhead
    )
    # QoS 1: PUBACK comes back; QoS 2: PUBREC in, PUBREL out, PUBCOMP in. Each rides its own segment.
    acks = {0: 0, 1: 1, 2: 3}[qos]
    total += acks * _tcp_b(MQTT_ACK_PACKET_B, mss=mss, tls_record_overhead=tls_record_overhead)
    return total


def wire_bytes(
    payload_bytes: int,
    *,
    topic_len: int,
    packet_payload: int | None = None,
    qos: int = 1,
    mss: int = TCP_MSS_B,
    tls_record_overhead: int = 0,
) -> int:
    """Radio bytes (sent + received) to publish ``payload_bytes`` over MQTT/TCP/IPv4.

    ``packet_payload`` splits the payload into MQTT messages of at most that many bytes (a stream
    of audio packets); None sends it as one message. A zero payload sends nothing.
    """
    for name, v in (
        ("payload_bytes", payload_bytes),
        ("topic_len", topic_len),
        ("tls_record_overhead", tls_record_overhead),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
    if mss <= 0:
        raise ValueError(f"mss must be positive, got {mss}")
    if payload_bytes == 0:
        return 0
    if packet_payload is None:
        packet_payload = payload_bytes
    if packet_payload <= 0:
        raise ValueError(f"packet_payload must be positive, got {packet_payload}")
    full, rest = divmod(payload_bytes, packet_payload)
    kw = dict(topic_len=topic_len, qos=qos, mss=mss, tls_record_overhead=tls_record_overhead)
    total = full * _one_message_b(packet_payload, **kw)
    if rest:
        total += _one_message_b(rest, **kw)
    return total


@dataclass(slots=True)
class SessionBytes:
    """Radio bytes of an MQTT session's control traffic: CONNECT/CONNACK and SUBSCRIBE/SUBACK at each
    connect, DISCONNECT at the end, and a PINGREQ/PINGRESP exchange per ``keepalive_s`` of audio.

    paho pings when nothing came in for ``keepalive_s``; a gated node's only inbound traffic is the
    rare PUBACK or verdict, so one exchange per period is what a live node sends (an upper bound).
    ``keepalives`` counts them on the audio clock, carrying the remainder from call to call.
    """

    connect: int
    ping: int
    disconnect: int
    keepalive_s: float
    _carry_s: float = field(default=0.0, repr=False)

    @classmethod
    def of(cls, *, client_id: str, will_topic: str | None, will_payload: bytes, username: str | None,
           password: str | None, subscribe: list[str], keepalive_s: float, tls_record_overhead: int = 0
           ) -> SessionBytes:
        if not keepalive_s > 0:
            raise ValueError(f"keepalive_s must be positive, got {keepalive_s}")
        sub, suback = mqtt_subscribe_b(subscribe) if subscribe else (0, 0)
        connect = mqtt_connect_b(client_id=client_id, will_topic=will_topic, will_payload=will_payload,
                                 username=username, password=password)
        tls = {"tls_record_overhead": tls_record_overhead}
        return cls(connect=control_b(connect, MQTT_CONNACK_B, *([sub, suback] if subscribe else []), **tls),
                   ping=control_b(MQTT_PING_B, MQTT_PING_B, **tls), disconnect=control_b(MQTT_DISCONNECT_B, **tls),
                   keepalive_s=float(keepalive_s))

    def keepalives(self, elapsed_s: float) -> tuple[int, int]:
        """(exchanges, bytes) for ``elapsed_s`` more seconds of audio spent connected."""
        if elapsed_s < 0:
            raise ValueError(f"elapsed_s must be >= 0, got {elapsed_s}")
        self._carry_s += elapsed_s
        n = int(self._carry_s // self.keepalive_s)
        self._carry_s -= n * self.keepalive_s
        return n, n * self.ping
