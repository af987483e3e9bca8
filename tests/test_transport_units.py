"""The transport's parts without a broker: radio charges, remote configuration answers, the settings
objects a transport is built from, the worker's typed events and the segments awaiting a verdict."""

from __future__ import annotations

import dataclasses
import logging
import time
import typing

import pytest
from mqtt_helpers import free_port

from gate.energy import RADIO, EnergyLedger, mqtt_publish_b, wire_bytes
from gate.energy.wire import MQTT_ACK_PACKET_B, TCP_IPV4_HEADER_B, TLS_RECORD_OVERHEAD_B, SessionBytes
from gate.transport import events
from gate.transport.awaiting import VerdictWait
from gate.transport.config import BrokerLink, Delivery, MqttConfig, NodeIdentity, TransportError
from gate.transport.mqtt import MqttTransport
from gate.transport.radio import RadioMeter
from gate.transport.remote import RemoteConfig, request_id
from gate.transport.spool import Spool
from gate_core.wire import ConfigAck, ConfigUpdate

TOPIC = "gate/kitchen/segments"


def session(keepalive_s: float = 30.0, tls_overhead: int = 0) -> SessionBytes:
    return SessionBytes.of(client_id="gate-gate-kitchen", will_topic="gate/kitchen/status", will_payload=b"{}",
                           username=None, password=None, subscribe=["gate/kitchen/verdict", "gate/kitchen/config"],
                           keepalive_s=keepalive_s, tls_record_overhead=tls_overhead)


def meter(ledger: EnergyLedger | None, *, qos: int = 1, tls_overhead: int = 0, keepalive_s: float = 30.0) -> RadioMeter:
    return RadioMeter(ledger, qos=qos, tls_overhead=tls_overhead, session=session(keepalive_s, tls_overhead))


def radio(ledger: EnergyLedger) -> tuple[int, int]:
    counts = ledger.snapshot()[RADIO]
    return counts.bytes, counts.invocations


# -- radio ---------------------------------------------------------------------------------------


def test_a_message_is_its_bytes_and_acknowledgements_without_a_wake():
    ledger = EnergyLedger()
    m = meter(ledger)
    m.message(300, "gate/kitchen/status", 1)
    assert radio(ledger) == (wire_bytes(300, topic_len=len("gate/kitchen/status"), qos=1), 0)
    m.message(50, "gate/kitchen/heartbeat", 0)  # QoS 0: no PUBACK comes back
    assert radio(ledger)[0] == wire_bytes(300, topic_len=19, qos=1) + mqtt_publish_b(50, topic_len=22, qos=0) + 40


def test_a_delivered_segment_is_one_wake_and_a_republished_one_none():
    ledger = EnergyLedger()
    m = meter(ledger, qos=2)
    m.delivered(5000, len(TOPIC), republish=False)
    one = wire_bytes(5000, topic_len=len(TOPIC), qos=2)  # the segments' QoS, not the caller's
    assert radio(ledger) == (one, 1)
    m.delivered(5000, len(TOPIC), republish=True)
    assert radio(ledger) == (2 * one, 1)


@pytest.mark.parametrize("tls_overhead", [0, TLS_RECORD_OVERHEAD_B])
def test_a_resend_after_a_reconnect_is_the_publish_alone(tls_overhead):
    ledger = EnergyLedger()
    m = meter(ledger, tls_overhead=tls_overhead)
    m.resent(1000, len(TOPIC))
    resent, wakes = radio(ledger)
    assert wakes == 0
    assert resent == mqtt_publish_b(1000, topic_len=len(TOPIC), qos=1) + tls_overhead + TCP_IPV4_HEADER_B
    # ...and its PUBACK comes with the delivery: together, what a first send costs.
    assert resent + MQTT_ACK_PACKET_B + TCP_IPV4_HEADER_B + tls_overhead == \
        wire_bytes(1000, topic_len=len(TOPIC), tls_record_overhead=tls_overhead)


def test_tls_records_are_charged_on_every_message():
    plain, tls = EnergyLedger(), EnergyLedger()
    meter(plain).message(800, TOPIC, 1)
    meter(tls, tls_overhead=TLS_RECORD_OVERHEAD_B).message(800, TOPIC, 1)
    assert radio(tls)[0] - radio(plain)[0] == 2 * TLS_RECORD_OVERHEAD_B  # the PUBLISH record and the PUBACK's


def test_session_control_and_keepalives_on_the_audio_clock():
    ledger = EnergyLedger()
    m = meter(ledger, keepalive_s=30.0)
    m.connected()
    assert radio(ledger) == (m.session.connect, 0)
    assert m.keepalives(45.0) == 1 and m.keepalives(15.0) == 1 and m.keepalives(29.0) == 0
    assert radio(ledger)[0] == m.session.connect + 2 * m.session.ping
    m.disconnected()
    assert radio(ledger) == (m.session.connect + 2 * m.session.ping + m.session.disconnect, 0)
    with pytest.raises(ValueError, match="elapsed_s must be >= 0, got -1"):
        m.keepalives(-1.0)


def test_without_a_ledger_nothing_is_charged_but_keepalives_are_counted():
    m = meter(None, keepalive_s=10.0)
    m.connected()
    m.message(100, TOPIC, 1)
    m.delivered(100, len(TOPIC), republish=False)
    assert m.keepalives(25.0) == 2


# -- remote configuration ----------------------------------------------------------------------


def update(rid: str = "r1", **changes) -> bytes:
    return ConfigUpdate(request_id=rid, changes=changes or {"kws.threshold": 0.7}).to_json()


def test_an_update_is_answered_by_the_node_callback():
    seen: list[ConfigUpdate] = []

    def apply(u: ConfigUpdate) -> ConfigAck:
        seen.append(u)
        return ConfigAck(request_id=u.request_id, node_id="kitchen", accepted=True, applied=u.changes)

    ack = RemoteConfig("kitchen", apply).answer(update())
    assert ack.accepted and ack.request_id == "r1" and ack.applied == {"kws.threshold": 0.7}
    assert [u.changes for u in seen] == [{"kws.threshold": 0.7}]


def test_a_callback_that_raises_is_a_rejection_with_its_text():
    def refuse(u: ConfigUpdate) -> ConfigAck:
        raise ValueError("kws.threshold: must be a number in [0, 1]" + "x" * 2000)

    remote = RemoteConfig("kitchen", refuse)
    ack = remote.answer(update("r2"))
    assert (ack.accepted, ack.request_id, ack.node_id) == (False, "r2", "kitchen")
    assert ack.reason.startswith("kws.threshold: must be") and len(ack.reason) == 1000
    assert remote.malformed == 0  # a valid update the node refused is not malformed

    def silent(u: ConfigUpdate) -> ConfigAck:
        raise KeyError()

    assert RemoteConfig("kitchen", silent).answer(update()).reason == "KeyError"


def test_without_a_callback_every_update_is_refused():
    ack = RemoteConfig("kitchen", None).answer(update("r3"))
    assert (ack.accepted, ack.request_id, ack.reason) == (False, "r3", "remote configuration is disabled on this node")


@pytest.mark.parametrize(("payload", "rid", "reason"), [
    (b"{not json", None, "malformed update: Invalid JSON"),
    (b'{"request_id": "r4", "changes": "all"}', "r4", "malformed update: changes: Input should be an object"),
    (b'{"request_id": "' + b"r" * 65 + b'", "changes": {}}', None, "malformed update: request_id"),
    (b"[1, 2]", None, "malformed update: Input should be"),
])
def test_a_malformed_update_is_refused_and_counted(payload, rid, reason):
    called: list[ConfigUpdate] = []
    remote = RemoteConfig("kitchen", lambda u: called.append(u))  # type: ignore[arg-type, return-value]
    ack = remote.answer(payload)
    assert (ack.accepted, ack.request_id) == (False, rid) and ack.reason.startswith(reason), ack.reason
    assert remote.malformed == 1 and not called


def test_request_id_of_a_broken_message():
    assert request_id(b'{"request_id": "abc"}') == "abc"
    assert request_id(b'{"request_id": ""}') is None
    assert request_id(b'{"request_id": 7}') is None
    assert request_id(b'"just a string"') is None
    assert request_id(b"[" * 100_000) is None


# -- settings objects --------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "message"), [
    ({"qos": 0}, "qos must be 1 or 2, got 0: the spool deletes a segment only on its acknowledgement"),
    ({"window": 0}, "window must be >= 1, got 0"),
    ({"max_payload_bytes": 0}, "max_payload_bytes must be >= 1, got 0"),
    ({"await_verdict_s": 0.0}, "await_verdict_s must be positive or None, got 0.0"),
    ({"await_verdict_s": -5}, "await_verdict_s must be positive or None, got -5"),
])
def test_bad_delivery_settings_are_one_line_errors(kw, message):
    with pytest.raises(ValueError) as err:
        Delivery(**kw)
    assert str(err.value) == message
    with pytest.raises(ValueError, match=message.split(":")[0]):
        dataclasses.replace(Delivery(), **kw)  # a changed copy is checked too


def test_broker_link_settings():
    for name in ("keepalive_s", "reconnect_min_s", "reconnect_max_s"):
        with pytest.raises(ValueError, match=f"^{name} must be positive, got 0$"):
            BrokerLink("127.0.0.1", 1883, **{name: 0})
    link = BrokerLink("127.0.0.1", "1883")  # type: ignore[arg-type]
    assert link.port == 1883 and not link.tls_enabled and link.tls_record_overhead == 0


def test_settings_from_the_thresholds_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\r\n")
    cfg = MqttConfig(broker="mqtts://broker.lan", node_id="n7", username="node", password_file=str(pw),
                     keepalive_s=45, reconnect_min_s=2.0, reconnect_max_s=20.0, qos=2, max_payload_kb=16,
                     await_verdict_s=12.0)
    link = BrokerLink.of(cfg)
    assert (link.host, link.port, link.username, link.password) == ("broker.lan", 8883, "node", "s3cret")
    assert link.tls_enabled and link.tls_record_overhead == TLS_RECORD_OVERHEAD_B
    assert not cfg.tls.enabled  # the file's settings are left as they were
    assert (link.keepalive_s, link.reconnect_min_s, link.reconnect_max_s) == (45, 2.0, 20.0)
    assert BrokerLink.of(cfg, host="127.0.0.1", port=1999).port == 1999
    assert Delivery.of(cfg) == Delivery(qos=2, max_payload_bytes=16 * 1024, await_verdict_s=12.0)
    plain = BrokerLink.of(MqttConfig(broker="mqtt://10.0.0.2"))
    assert (plain.port, plain.password, plain.tls_enabled) == (1883, None, False)
    with pytest.raises(TransportError) as err:
        BrokerLink.of(MqttConfig())
    assert err.value.code == "transport_state" and "embedded" in str(err.value)


# -- the worker's events -----------------------------------------------------------------------


def test_every_event_kind_is_a_frozen_dataclass():
    kinds = typing.get_args(events.Event)
    assert len(kinds) == 12 and all(dataclasses.is_dataclass(k) for k in kinds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        events.Acked(3).mid = 4  # type: ignore[misc]


def test_a_wrong_event_is_a_type_error_and_the_worker_goes_on(tmp_path, caplog):
    t = MqttTransport(BrokerLink("127.0.0.1", free_port()), NodeIdentity("kitchen"), Spool(tmp_path, max_bytes=1 << 20),
                      delivery=Delivery(await_verdict_s=30.0))
    with pytest.raises(TypeError, match="mqtt worker: no handler for"):
        t._handle(("tick",))  # type: ignore[arg-type]
    t.start()
    try:
        with caplog.at_level(logging.ERROR, logger="gate.transport.mqtt"):
            t._events.put(("await", None))  # type: ignore[arg-type]
            t.set_await_verdict(None)
            deadline = time.monotonic() + 5
            while t.await_verdict_s is not None and time.monotonic() < deadline:
                time.sleep(0.01)
        assert t.await_verdict_s is None  # the event after the bad one was handled
        assert any("tuple event failed" in r.getMessage() for r in caplog.records)
    finally:
        t.close(timeout=0.5)


def test_a_transport_is_built_from_its_settings_objects(tmp_path):
    t = MqttTransport(BrokerLink("127.0.0.1", 1), NodeIdentity("n1", "lab", client_id="c1", boot_id="b" * 32),
                      Spool(tmp_path, max_bytes=1 << 20),
                      delivery=Delivery(max_payload_bytes=4096, await_verdict_s=2.5))
    assert (t.client_id, t.boot_id, t.topics.segments) == ("c1", "b" * 32, "lab/n1/segments")
    assert (t.max_payload_bytes, t.await_verdict_s) == (4096, 2.5)
    default = MqttTransport(BrokerLink("127.0.0.1", 1), NodeIdentity("n1"), Spool(tmp_path / "b", max_bytes=1 << 20))
    assert default.client_id == "gate-gate-n1" and len(default.boot_id) == 32 and default.await_verdict_s is None


# -- segments awaiting their verdict -------------------------------------------------------------


def waiting(tmp_path, seconds: float | None) -> tuple[VerdictWait, Spool, list]:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    entries = [spool.put(bytes([i]) * 100, key=f"{i:032x}") for i in range(3)]
    return VerdictWait(spool, seconds, logging.getLogger("gate.transport.mqtt")), spool, entries


def test_without_await_a_puback_settles_a_segment(tmp_path):
    wait, spool, (a, b, c) = waiting(tmp_path, None)
    wait.acked(a)
    assert [e.key for e in spool.pending()] == [b.key, c.key] and len(wait) == 0
    assert wait.republish_overdue(5, lambda e: pytest.fail("nothing awaits a verdict")) == 0


def test_a_segment_waits_for_its_verdict_wherever_it_is(tmp_path):
    wait, spool, (a, b, c) = waiting(tmp_path, 30.0)
    wait.acked(a)
    wait.acked(b)
    wait.publish_seqs()
    assert wait.seqs == {a.seq, b.seq} == wait.held() and len(spool) == 3  # PUBACKed, still spooled
    wait.settle(a.key, [])
    wait.publish_seqs()
    assert wait.seqs == {b.seq} and [e.key for e in spool.pending()] == [b.key, c.key]
    # Answered while in flight (a republish): out of the spool now, and its PUBACK holds nothing.
    wait.settle(c.key, [c])
    wait.acked(c)
    assert wait.held() == {b.seq} and [e.key for e in spool.pending()] == [b.key]
    # Switched off: what awaits a verdict is settled by its PUBACK.
    wait.set_seconds(None)
    assert len(spool) == 0 and len(wait) == 0 and wait.seconds is None


def test_a_verdict_for_a_segment_of_an_earlier_run_settles_it(tmp_path):
    wait, spool, (a, b, c) = waiting(tmp_path, 30.0)
    wait.settle(b.key, [])
    assert [e.key for e in spool.pending()] == [a.key, c.key]
    wait.settle("f" * 32, [])  # nobody's: nothing changes
    assert len(spool) == 2


def test_overdue_segments_are_republished_oldest_first_within_the_room(tmp_path, caplog):
    wait, spool, (a, b, c) = waiting(tmp_path, 0.05)
    for e in (a, b, c):
        wait.acked(e)
    assert wait.republish_overdue(3, lambda e: pytest.fail("not due yet")) == 0
    time.sleep(0.06)
    sent: list[str] = []
    with caplog.at_level(logging.WARNING, logger="gate.transport.mqtt"):
        assert wait.republish_overdue(2, lambda e: sent.append(e.key) or True) == 2
        assert sent == [a.key, b.key] and wait.held() == {c.seq} and wait.republished == 2
        assert wait.republish_overdue(5, lambda e: False) == 0 and wait.held() == {c.seq}  # refused: still waiting
        assert wait.republish_overdue(5, lambda e: None) == 0 and len(wait) == 0  # gone from the spool meanwhile
    assert wait.republished == 2 and len(spool) == 3  # republishing settles nothing
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["2 segment(s) acknowledged by the broker got no verdict within 0 s: published again "
                        "(2 republished so far, 1 still awaiting a verdict)"]
