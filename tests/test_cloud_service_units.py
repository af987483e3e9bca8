"""Units of `gate-cloud serve`: config, handler (validate, dedupe, models, store), energy, metrics.

The handler runs here with a deterministic stand-in scorer (``cloud_helpers.fake_models``), so these tests pin
the message path without trained weights; the MQTT tests in test_cloud_service.py use the real
models.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.request

import pytest
from cloud_helpers import FakeCommands, FakeVerifier, fake_models, make_segment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud.energy_meter import EnergyMeter, ThreadCpuTimer
from cloud.metrics import MetricsServer, ServiceMetrics
from cloud.service.handler import SegmentHandler
from cloud.service.models import CloudModels
from cloud.service.supervisor import merge_summaries
from cloud.store import SQLiteStore, StoreError
from gate_core.cloud_config import CloudConfig, ServerPowerConfig
from gate_core.wire import Verdict


class BrokenStore:
    def lookup(self, segment_id):
        raise StoreError("database is locked", code="store_read")

    def record_reject(self, rej):
        raise StoreError("database is locked", code="store_write")


@pytest.fixture
def handler(tmp_path):
    cfg = CloudConfig(db_url=f"sqlite:///{tmp_path}/c.db", max_payload_kb=64, store_audio=True)
    store = SQLiteStore(tmp_path / "c.db")
    metrics = ServiceMetrics(worker="w0")
    h = SegmentHandler(cfg=cfg, store=store, models=fake_models(), metrics=metrics,
                       energy=EnergyMeter(cfg.server), worker="w0")
    yield h
    store.close()


# ---------------------------------------------------------------------------------------------
# Config


def test_config_defaults_and_bounds():
    cfg = CloudConfig()
    assert cfg.server.pue == 1.58 and cfg.workers == 1 and cfg.db_url.startswith("sqlite:///")
    assert cfg.client_id(3).endswith("-3")
    assert CloudConfig(metrics_port=9000, workers=3).metrics_port_of(2) == 9002
    assert CloudConfig(metrics_port=0).metrics_port_of(5) == 0
    for bad in ({"workers": 0}, {"group": "a/b"}, {"group": "+"}, {"broker": "http://x"}, {"db_url": "mysql://x"},
                {"server": {"pue": 0.5}}, {"bogus": 1}, {"max_payload_kb": 1}, {"models_factory": "nope"},
                {"reconnect_min_s": 10, "reconnect_max_s": 1}, {"metrics_port": 65535, "workers": 2},
                {"command_read_offsets_s": []}, {"command_read_offsets_s": [0.0, 2.0]},
                {"command_read_offsets_s": [0.0] * 9}):
        with pytest.raises(ValidationError):
            CloudConfig.model_validate(bad)


def test_every_field_is_described():
    for model in (CloudConfig, ServerPowerConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


# ---------------------------------------------------------------------------------------------
# Handler


def test_valid_segment_gets_a_stored_verdict(handler):
    header, payload = make_segment(sent_unix=1.0)
    out = handler.handle("gate/n1/segments", payload, 100.0)
    assert out.kind == "verdict" and out.ack and out.reply_topic == "gate/n1/verdict"
    v = Verdict.model_validate_json(out.reply)
    assert v.segment_id == header.segment_id and v.node_id == "n1"
    assert set(v.scores) >= {"verifier"} and v.models["verifier"] == "fake-1"
    assert (v.command is not None) == v.accepted  # the command model only runs on accepted segments
    assert v.sent_unix == 1.0 and v.received_unix == 100.0
    rows = handler.store.query("SELECT node_id, accepted, command, audio IS NOT NULL, worker FROM segments")
    assert rows == [("n1", int(v.accepted), v.command, 1, "w0")]
    assert handler.energy.summary()["segments"] == 1


def test_redelivery_is_answered_from_the_store(handler):
    _, payload = make_segment()
    first = handler.handle("gate/n1/segments", payload, 1.0)
    calls = handler.models.verifier.calls
    again = handler.handle("gate/n1/segments", payload, 2.0)
    assert again.kind == "duplicate" and again.ack and again.reply == first.reply
    assert handler.models.verifier.calls == calls  # no second inference
    assert handler.metrics.summary()["dedupe_hits"] == 1
    assert handler.store.counts()["segments"] == 1


def test_a_corrupted_copy_of_an_answered_segment_gets_no_rejection(handler):
    _, payload = make_segment(seed=12)
    assert handler.handle("gate/n1/segments", payload, 1.0).kind == "verdict"
    out = handler.handle("gate/n1/segments", payload[:-40], 2.0)
    assert out.kind == "malformed" and out.reply is None


def test_reused_segment_id_with_other_audio_is_refused_without_reply(handler):
    header, payload = make_segment(seed=1)
    handler.handle("gate/n1/segments", payload, 1.0)
    _, forged = make_segment(seed=2, segment_id=header.segment_id)
    out = handler.handle("gate/n1/segments", forged, 2.0)
    assert out.kind == "malformed" and out.code == "wire_segment_id_conflict" and out.reply is None


@pytest.mark.parametrize(("topic", "mutate", "code"), [
    ("gate/n1/segments", lambda p: b"junk", "wire_truncated"),
    ("gate/n1/segments", lambda p: b"XYZ" + p[3:], "wire_bad_magic"),
    ("gate/n1/segments", lambda p: p[:8] + b"\xff" + p[9:], "wire_header_json"),
    ("gate/n1/segments", lambda p: p[:-50], "wire_audio"),
    ("gate/n1/segments", lambda p: p + b"\0" * 70_000, "wire_too_large"),
    ("gate/n2/segments", lambda p: p, "wire_node_mismatch"),
    ("gate/n1/heartbeat", lambda p: p, "wire_topic"),
    ("gate/bad node/segments", lambda p: p, "wire_topic"),
])
def test_malformed_messages_are_counted_logged_and_acknowledged(handler, topic, mutate, code):
    header, payload = make_segment()
    out = handler.handle(topic, mutate(payload), 1.0)
    assert out.kind == "malformed" and out.ack and out.code == code
    assert handler.metrics.summary()["malformed_by_code"] == {code: 1}
    assert handler.store.query("SELECT code, topic FROM rejects") == [(code, topic)]
    assert handler.store.counts()["segments"] == 0
    if out.reply is not None:  # a rejection verdict goes to the node the topic names
        v = Verdict.model_validate_json(out.reply)
        assert not v.accepted and v.rejected_code == code and v.segment_id == header.segment_id


def test_wrong_rate_and_codec_are_refused(handler):
    header, payload = make_segment(codec="pcm_s16le")
    head = json.loads(payload[8:8 + int.from_bytes(payload[4:8], "big")])
    for key, value, code in (("sample_rate", 8000, "wire_sample_rate"), ("codec", "opus", "wire_codec"),
                             ("v", 2, "wire_version")):
        bad = dict(head, **{key: value})
        raw = json.dumps(bad).encode()
        msg = payload[:4] + len(raw).to_bytes(4, "big") + raw + payload[8 + len(json.dumps(head).encode()):]
        assert handler.handle("gate/n1/segments", msg, 1.0).code == code


def test_model_failure_becomes_a_stored_rejection(handler):
    handler.models = CloudModels(verifier=FakeVerifier(fail=True), commands=FakeCommands())
    header, payload = make_segment()
    out = handler.handle("gate/n1/segments", payload, 1.0)
    v = Verdict.model_validate_json(out.reply)
    assert out.kind == "verdict" and out.ack and not v.accepted and v.rejected_code == "cloud_model_error"
    assert handler.store.lookup(header.segment_id) is not None


def test_store_outage_leaves_the_segment_unacknowledged(handler):
    handler.store = BrokenStore()
    _, payload = make_segment()
    out = handler.handle("gate/n1/segments", payload, 1.0)
    assert out.kind == "retry" and not out.ack and out.reply is None
    # A malformed message is still refused (and acknowledged) while the store is down.
    assert handler.handle("gate/n1/segments", b"junk", 1.0).ack


# ---------------------------------------------------------------------------------------------
# Energy and metrics


def test_energy_is_cpu_seconds_times_watts_times_pue():
    clock = iter([10.0, 12.0]).__next__
    meter = EnergyMeter(ServerPowerConfig(watts_per_busy_core=3.5, pue=1.58), process_clock=clock)
    r = meter.process()
    assert r.cpu_s == pytest.approx(2.0) and r.joules == pytest.approx(2.0 * 3.5 * 1.58)
    assert r.g_co2e == pytest.approx(r.joules / 3.6e6 * 475.0)
    with ThreadCpuTimer() as t:
        sum(i * i for i in range(200_000))
    assert t.seconds > 0


def test_metrics_endpoint_serves_prometheus_and_json(handler):
    _, payload = make_segment()
    handler.handle("gate/n1/segments", payload, 1.0)
    handler.metrics.on_latency(0.02)
    server = MetricsServer(host="127.0.0.1", port=0, metrics=handler.metrics,
                           summary=handler.metrics.summary, healthy=lambda: False).start()
    try:
        text = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
        for name in ("gate_cloud_segments_accepted_total", "gate_cloud_messages_malformed_total",
                     "gate_cloud_dedupe_hits_total", "gate_cloud_latency_seconds_bucket",
                     "gate_cloud_model_seconds_bucket", "gate_cloud_energy_joules"):
            assert name in text
        summary = json.loads(urllib.request.urlopen(server.url + "/summary.json", timeout=5).read())
        assert summary["latency_s"]["p50"] == pytest.approx(0.02)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "/healthz", timeout=5)
        assert e.value.code == 503
    finally:
        server.close()


def test_merge_summaries_adds_counts_and_energy():
    w = {"received": 3, "accepted": 1, "rejected": 1, "malformed": 1, "dedupe_hits": 0, "errors": 0,
         "malformed_by_code": {"wire_audio": 1},
         "energy": {"process": {"cpu_s": 1.0, "joules": 5.53, "g_co2e": 0.001}, "models": {"cpu_s": 0.5},
                    "audio_s": 2.0, "segments": 2}}
    m = merge_summaries([w, w])
    assert m["received"] == 6 and m["malformed_by_code"] == {"wire_audio": 2}
    assert m["energy"]["joules"] == pytest.approx(11.06) and m["energy"]["j_per_audio_s"] == pytest.approx(11.06 / 4)


def test_an_acknowledgement_never_crosses_connections():
    from cloud.service.broker_client import BrokerClient, Delivery

    client = BrokerClient(CloudConfig(), client_id="t-0", metrics=ServiceMetrics(worker="t-0"))
    client._generation, client._connected = 2, True
    sent = []
    client._client.ack = lambda mid, qos: sent.append(mid) or 0
    old = Delivery(topic="gate/n1/segments", payload=b"", mid=7, qos=1, dup=False, generation=1, received_unix=0.0)
    assert client.ack(old) is False and sent == []  # packet id 7 may now name another message
    assert client.ack(dataclasses.replace(old, generation=2)) is True and sent == [7]


def test_a_segment_committed_by_another_worker_meanwhile_is_a_duplicate(handler):
    header, payload = make_segment(seed=11)
    first = handler.handle("gate/n1/segments", payload, 1.0)
    real = handler.store

    class Racing:  # lookup misses, then the insert finds the row another worker just committed
        def __init__(self):
            self.looked = 0

        def lookup(self, segment_id):
            self.looked += 1
            return None if self.looked == 1 else real.lookup(segment_id)

        def record(self, rec):
            return real.record(rec)

    handler.store = Racing()
    again = handler.handle("gate/n1/segments", payload, 2.0)
    assert again.kind == "duplicate" and again.reply == first.reply


_SEED_SEGMENT = make_segment(seed=21, seconds=0.2)[1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=2048), flips=st.lists(st.tuples(st.integers(0, len(_SEED_SEGMENT) - 1),
                                                                st.integers(1, 255)), max_size=6))
def test_hostile_payloads_never_raise_and_are_always_acknowledged(handler, junk, flips):
    mutated = bytearray(_SEED_SEGMENT)
    for i, x in flips:
        mutated[i] ^= x
    for payload in (junk, bytes(mutated), bytes(mutated[: len(junk) % len(mutated)])):
        out = handler.handle("gate/n1/segments", payload, 1.0)
        assert out.ack and out.kind in ("malformed", "verdict", "duplicate")
        if out.kind == "malformed":
            assert out.code and out.code.startswith("wire_")
