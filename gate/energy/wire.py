"""Bytes on the wire for an MQTT publish: one function shared by the baselines and the transport.

Figures (ENERGY.md, Radio and protocol):
- MQTT 3.1.1 PUBLISH: 1 B control byte + 1-4 B remaining length + 2 B topic length + topic
  (+2 B packet id at QoS > 0); PUBACK is 4 B; QoS 2 adds PUBREC/PUBREL/PUBCOMP, 4 B each
  (OASIS MQTT 3.1.1 sections 2-3).
- TCP/IPv4 headers: 40 B per segment, no options ("standard"). MSS 1460 = 1500 B Ethernet/Wi-Fi
  MTU - 40 B.
- TLS, when used: 21-29 B per record (netsekure TLS overhead); the handshake is a per-connect
  cost and belongs to the radio's ``wake_j``, not here.
Deliberately left out: bare TCP ACKs (delayed ACK lets the PUBACK carry most of them) and 802.11
MAC/PHY framing (already inside a measured per-byte radio figure).
"""

from __future__ import annotations

import math

MQTT_FIXED_HEADER_B = 1
MQTT_TOPIC_LEN_FIELD_B = 2
MQTT_PACKET_ID_B = 2
MQTT_ACK_PACKET_B = 4  # PUBACK, PUBREC, PUBREL, PUBCOMP
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
