"""What the alternatives to the cascade would have counted, from audio seconds alone.

They return ordinary :class:`LedgerSnapshot` values, so a baseline is priced by the same
:class:`EnergyModel` and profile as the cascade it is compared with: no second pricing path to
drift out of step.
"""

from __future__ import annotations

import math

from gate_core.audio import SAMPLE_RATE, SAMPLE_WIDTH
from gate_core.ledger import ADC, CLOUD, ENCODER, FEATURES_KWS, RADIO, LedgerSnapshot, StageCounts

from .wire import DEFAULT_TOPIC_LEN, wire_bytes

# 100 ms audio packets: short enough for streaming ASR latency, long enough that per-packet
# headers stay a few percent of 32 kB/s.
DEFAULT_PACKET_S = 0.1


def _nonneg(name: str, v: float) -> float:
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
    return float(v)


def always_stream_counts(
    audio_seconds: float,
    *,
    sample_rate: int = SAMPLE_RATE,
    sample_width: int = SAMPLE_WIDTH,
    packet_s: float = DEFAULT_PACKET_S,
    topic_len: int = DEFAULT_TOPIC_LEN,
    qos: int = 1,
    tls_record_overhead: int = 0,
    link_bytes: int = 0,
) -> LedgerSnapshot:
    """Stream raw PCM to a cloud model that listens to everything (no gate, no KWS on the node).

    ADC on all the time; one radio connection held up for the whole run (``active_seconds`` =
    audio seconds, so a profile's connected-idle power applies) carrying 16-bit PCM, 32,000 B/s at
    16 kHz, in ``packet_s`` MQTT messages; the cloud processes every audio second. ``link_bytes``:
    the session's control traffic (its CONNECT and SUBSCRIBE; a stream never idles long enough to ping).
    """
    audio_seconds = _nonneg("audio_seconds", audio_seconds)
    _nonneg("link_bytes", link_bytes)
    if audio_seconds == 0:
        return LedgerSnapshot()
    packet_payload = round(packet_s * sample_rate) * sample_width
    if packet_payload <= 0:
        raise ValueError(f"packet_s={packet_s} holds no samples at {sample_rate} Hz")
    pcm = round(audio_seconds * sample_rate) * sample_width
    radio = wire_bytes(
        pcm, topic_len=topic_len, packet_payload=packet_payload, qos=qos, tls_record_overhead=tls_record_overhead
    )
    return LedgerSnapshot(
        audio_seconds=audio_seconds,
        stages={
            ADC: StageCounts(invocations=1, active_seconds=audio_seconds, bytes=pcm),
            RADIO: StageCounts(invocations=1, active_seconds=audio_seconds, bytes=radio + int(link_bytes)),
            CLOUD: StageCounts(invocations=1, active_seconds=audio_seconds),
        },
    )


def always_on_kws_counts(
    audio_seconds: float,
    *,
    kws_hop_s: float,
    segments_bytes: int = 0,
    segment_audio_s: float = 0.0,
    n_segments: int = 0,
    sample_rate: int = SAMPLE_RATE,
    sample_width: int = SAMPLE_WIDTH,
    topic_len: int = DEFAULT_TOPIC_LEN,
    qos: int = 1,
    tls_record_overhead: int = 0,
    link_bytes: int = 0,
) -> LedgerSnapshot:
    """ADC and KWS on all the time (no analog gate); radio and cloud only for detected segments.

    ``segments_bytes`` is the encoded payload of all ``n_segments`` segments together and
    ``segment_audio_s`` their total audio; pass the cascade's own figures to compare like for like.
    Each segment is one MQTT message and one radio wake (``wake_j``), with no connected idle time.
    ``link_bytes``: the session's control traffic (connects and keepalives), as the cascade's node holds.
    """
    _nonneg("link_bytes", link_bytes)
    audio_seconds = _nonneg("audio_seconds", audio_seconds)
    segment_audio_s = _nonneg("segment_audio_s", segment_audio_s)
    if not (math.isfinite(kws_hop_s) and kws_hop_s > 0):
        raise ValueError(f"kws_hop_s must be positive, got {kws_hop_s!r}")
    if n_segments < 0 or segments_bytes < 0:
        raise ValueError("n_segments and segments_bytes must be >= 0")
    if (segments_bytes or segment_audio_s) and n_segments == 0:
        raise ValueError("segments_bytes/segment_audio_s given with n_segments=0")
    # The tiny epsilon keeps 3600 s / 0.02 s at 180000 hops, not 179999, despite float rounding.
    hops = math.floor(audio_seconds / kws_hop_s + 1e-9)
    radio = 0
    if n_segments:
        # Spread the payload evenly over the segments: exact when they are the same size.
        base, extra = divmod(segments_bytes, n_segments)
        kw = dict(topic_len=topic_len, qos=qos, tls_record_overhead=tls_record_overhead)
        radio = (n_segments - extra) * wire_bytes(base, **kw) + extra * wire_bytes(base + 1, **kw)
    pcm = round(audio_seconds * sample_rate) * sample_width
    return LedgerSnapshot(
        audio_seconds=audio_seconds,
        stages={
            ADC: StageCounts(invocations=1 if audio_seconds else 0, active_seconds=audio_seconds, bytes=pcm),
            FEATURES_KWS: StageCounts(invocations=hops, active_seconds=audio_seconds),
            ENCODER: StageCounts(invocations=n_segments, active_seconds=segment_audio_s, bytes=segments_bytes),
            RADIO: StageCounts(invocations=n_segments, bytes=radio + int(link_bytes)),
            CLOUD: StageCounts(invocations=n_segments, active_seconds=segment_audio_s),
        },
    )
