"""Encoder stage: Segment -> framed wire message (JSON header + FLAC/PCM), via gate_core.wire only."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gate.segmenter import Segment
from gate_core.wire import PREFIX_BYTES, SegmentHeader, encode_segment, new_id, pcm_sha256


@dataclass(frozen=True, slots=True)
class EncodedSegment:
    header: SegmentHeader
    payload: bytes  # the whole MQTT payload (prefix + header + audio)
    audio_bytes: int  # encoded audio alone: what the encoder stage produced

    @property
    def segment_id(self) -> str:
        return self.header.segment_id


class SegmentEncoder:
    """Stamps a segment with this node's identity and encodes it.

    ``wall_clock`` only fills ``sent_unix`` (latency metrics); it never decides anything, and a
    replay passes ``None`` so its output is byte-for-byte reproducible apart from the random ids.
    """

    def __init__(self, *, node_id: str, boot_id: str, codec: str, sample_rate: int = 16_000,
                 wall_clock: Callable[[], float] | None = time.time) -> None:
        self.node_id = node_id
        self.boot_id = boot_id
        self.codec = codec
        self.sample_rate = sample_rate
        self.wall_clock = wall_clock

    def encode(self, segment: Segment, *, scores: dict[str, float], ledger_delta: dict | None = None,
               segment_id: str | None = None) -> EncodedSegment:
        header = SegmentHeader(
            node_id=self.node_id, boot_id=self.boot_id, segment_id=segment_id or new_id(), seq=segment.seq,
            t_start_s=segment.t_start_s, t_end_s=segment.t_end_s, t_detect_s=segment.t_detect_s,
            scores=scores, sample_rate=self.sample_rate, codec=self.codec, n_samples=segment.n_samples,
            audio_sha256=pcm_sha256(segment.samples), ledger_delta=ledger_delta or {},
            sent_unix=self.wall_clock() if self.wall_clock is not None else None)
        payload = encode_segment(header, segment.samples)
        head_len = int.from_bytes(payload[4:PREFIX_BYTES], "big")
        return EncodedSegment(header=header, payload=payload, audio_bytes=len(payload) - PREFIX_BYTES - head_len)
