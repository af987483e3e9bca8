"""One message in, one outcome out: validate, dedupe, run the models, commit, build the verdict.

No MQTT here: the worker feeds (topic, payload) and carries out the outcome (publish the reply,
then acknowledge). Every failure is turned into an outcome, never an exception:

- malformed or hostile payload -> counted by WireError code, logged, kept in the rejects log,
  acknowledged (redelivering it would never help) and, when the topic names a node and the
  header a segment id, answered with a rejection verdict;
- store unavailable -> ``retry``: not acknowledged, so the broker keeps the segment;
- a model raising on some input -> a rejection verdict with code ``cloud_model_error``, stored, so
  one poisonous segment cannot be redelivered for ever.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cloud.energy_meter import EnergyMeter, ThreadCpuTimer
from cloud.metrics import ServiceMetrics
from cloud.service.models import CloudModels
from cloud.store import RejectRecord, SegmentRecord, Store, StoreError
from gate_core.cloud_config import CloudConfig
from gate_core.wire import (
    PREFIX_BYTES,
    SEGMENTS,
    NodeTopics,
    SegmentHeader,
    Verdict,
    WireError,
    decode_segment,
    parse_topic,
    peek_header,
)

log = logging.getLogger(__name__)

_SEGMENT_ID = re.compile(r"[0-9a-f]{32}")

Kind = Literal["verdict", "duplicate", "malformed", "retry"]


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    ack: bool  # acknowledge to the broker once ``reply`` (if any) is published
    reply_topic: str | None = None
    reply: bytes | None = None
    code: str | None = None  # WireError / StoreError code for malformed and retry
    sent_unix: float | None = None  # the node's publish time, for the latency metric


class SegmentHandler:
    def __init__(self, *, cfg: CloudConfig, store: Store, models: CloudModels, metrics: ServiceMetrics,
                 energy: EnergyMeter, worker: str, clock=time.time) -> None:
        self.cfg = cfg
        self.store = store
        self.models = models
        self.metrics = metrics
        self.energy = energy
        self.worker = worker
        self._clock = clock
        self._max_bytes = cfg.max_payload_kb * 1024

    def handle(self, topic: str, payload: bytes, received_unix: float) -> Outcome:
        """Safe to call again with the same message after a ``retry`` outcome."""
        node_id = None
        try:
            node_id, kind = parse_topic(topic, prefix=self.cfg.topic_prefix)
            if kind != SEGMENTS:
                raise WireError("wire_topic", f"{kind!r} messages are not segments", field="topic.kind")
            header, samples = decode_segment(payload, max_bytes=self._max_bytes, expected_rate=self.cfg.sample_rate,
                                             max_seconds=self.cfg.max_segment_s)
            if header.node_id != node_id:
                # The topic is what the broker's ACL vouches for; a header naming another node is forged.
                raise WireError("wire_node_mismatch", f"header node_id {header.node_id!r} published on "
                                                      f"{node_id!r}'s topic", field="node_id")
        except WireError as err:
            return self._malformed(topic, payload, err, node_id, received_unix)

        try:
            stored = self.store.lookup(header.segment_id)
            if stored is not None:
                return self._duplicate(topic, payload, header, stored, received_unix)
            verdict, model_cpu_s = self._decide(header, samples, received_unix)
            inserted = self.store.record(self._record(header, payload, verdict, received_unix, model_cpu_s))
            if not inserted:  # another worker committed the same segment id between lookup and record
                stored = self.store.lookup(header.segment_id)
                if stored is None:
                    raise StoreError("segment vanished between insert and lookup", code="store_race")
                return self._duplicate(topic, payload, header, stored, received_unix)
        except StoreError as err:
            self.metrics.on_error("store")
            log.error("segment %s from %s left unacknowledged: %s", header.segment_id, node_id, err)
            return Outcome("retry", ack=False, code=err.code)

        self.metrics.on_verdict(verdict.accepted)
        self.energy.add_segment(model_cpu_s=model_cpu_s, audio_s=header.duration_s)
        return Outcome("verdict", ack=True, reply_topic=NodeTopics(node_id, self.cfg.topic_prefix).verdict,
                       reply=verdict.to_json(), sent_unix=header.sent_unix)

    # -- steps ----------------------------------------------------------------------------------

    def _decide(self, header: SegmentHeader, samples: np.ndarray, received_unix: float) -> tuple[Verdict, float]:
        fired_at_s = header.t_detect_s - header.t_start_s
        timings: dict[str, float] = {}
        scores: dict[str, float] = {}
        command = None
        rejected_code = reason = None
        try:
            with ThreadCpuTimer() as t:
                v = self.models.verifier.score(samples, header.sample_rate, fired_at_s=fired_at_s)
            timings[self.models.verifier.name] = t.seconds
            scores[self.models.verifier.name] = _finite(v.score)
            accepted = v.accepted
            # The command model only runs on accepted segments: a rejected wake word has no command.
            if accepted and self.models.commands is not None:
                with ThreadCpuTimer() as t:
                    c = self.models.commands.recognize(samples, header.sample_rate, start_s=fired_at_s)
                timings[self.models.commands.name] = t.seconds
                scores[self.models.commands.name] = _finite(c.score)
                command = c.command
        except Exception as exc:  # a model bug on one input must not stop the service
            self.metrics.on_error("model")
            log.exception("model failed on segment %s from %s", header.segment_id, header.node_id)
            accepted, command = False, None
            rejected_code, reason = "cloud_model_error", f"{type(exc).__name__}: {exc}"[:1024]
        self.metrics.on_models(timings, header.duration_s)
        verdict = Verdict(segment_id=header.segment_id, node_id=header.node_id, accepted=accepted, scores=scores,
                          command=command, models=self.models.versions(), rejected_code=rejected_code,
                          reason=reason, sent_unix=header.sent_unix, received_unix=received_unix,
                          decided_unix=self._clock())
        return verdict, sum(timings.values())

    def _record(self, header: SegmentHeader, payload: bytes, verdict: Verdict, received_unix: float,
                model_cpu_s: float) -> SegmentRecord:
        audio = codec = None
        if self.cfg.store_audio:
            # Framing (gate_core/wire.py): prefix, then a header of the length the prefix gives, then audio.
            head_len = int.from_bytes(payload[4:PREFIX_BYTES], "big")
            audio, codec = bytes(payload[PREFIX_BYTES + head_len:]), header.codec
        return SegmentRecord(
            segment_id=header.segment_id, node_id=header.node_id, boot_id=header.boot_id, seq=header.seq,
            received_at=received_unix, decided_at=verdict.decided_unix or received_unix,
            header=header.model_dump_json(), verdict=verdict.to_json().decode(), accepted=verdict.accepted,
            command=verdict.command, model_cpu_s=model_cpu_s, worker=self.worker, audio_codec=codec, audio=audio)

    def _duplicate(self, topic: str, payload: bytes, header: SegmentHeader, stored, received_unix: float) -> Outcome:
        if stored.audio_sha256 != header.audio_sha256 or stored.node_id != header.node_id:
            err = WireError("wire_segment_id_conflict", f"segment id {header.segment_id} was already used for "
                                                        "different audio", field="segment_id")
            # No reply: the verdict topic of the id's real owner must keep the first answer.
            return self._malformed(topic, payload, err, None, received_unix)
        self.metrics.on_dedupe()
        log.info("redelivered segment %s from %s answered from the store", header.segment_id, header.node_id)
        return Outcome("duplicate", ack=True, reply_topic=NodeTopics(header.node_id, self.cfg.topic_prefix).verdict,
                       reply=stored.verdict.encode())

    def _malformed(self, topic: str, payload: bytes, err: WireError, node_id: str | None,
                   received_unix: float) -> Outcome:
        self.metrics.on_malformed(err.code)
        segment_id = self._peek_segment_id(payload)
        log.warning("malformed message on %.128r (%d B, segment %s): %s", topic, len(payload), segment_id, err)
        try:
            self.store.record_reject(RejectRecord(received_at=received_unix, topic=topic, code=err.code,
                                                  reason=str(err), nbytes=len(payload), segment_id=segment_id))
        except StoreError as exc:  # the reject log is best effort; the message is refused either way
            self.metrics.on_error("store")
            log.error("could not log a rejected message: %s", exc)
        if node_id is None or segment_id is None or self._known(segment_id):
            # No rejection for an id that already has a verdict: a corrupted copy must not overwrite it.
            return Outcome("malformed", ack=True, code=err.code)
        verdict = Verdict(segment_id=segment_id, node_id=node_id, accepted=False, rejected_code=err.code,
                          reason=str(err)[:1024], received_unix=received_unix, decided_unix=self._clock())
        return Outcome("malformed", ack=True, reply_topic=NodeTopics(node_id, self.cfg.topic_prefix).verdict,
                       reply=verdict.to_json(), code=err.code)

    def _known(self, segment_id: str) -> bool:
        try:
            return self.store.lookup(segment_id) is not None
        except StoreError:
            return True  # unknown: stay silent rather than risk contradicting a stored verdict

    def _peek_segment_id(self, payload: bytes) -> str | None:
        if len(payload) > self._max_bytes:
            return None
        try:
            sid = peek_header(payload).get("segment_id")
        except WireError:
            return None
        return sid if isinstance(sid, str) and _SEGMENT_ID.fullmatch(sid) else None


def _finite(x: float) -> float:
    x = float(x)
    return x if np.isfinite(x) else 0.0
