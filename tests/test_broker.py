from __future__ import annotations

import socket
import threading
import time

import numpy as np
import paho.mqtt.client as paho
import pytest
from mqtt_helpers import Collector, needs_mosquitto, port_open
from paho.mqtt.enums import CallbackAPIVersion

from gate.energy import EnergyLedger
from gate.transport import broker as broker_mod
from gate.transport.broker import EmbeddedBroker
from gate.transport.config import BrokerLink, NodeIdentity
from gate.transport.mqtt import MqttTransport
from gate.transport.spool import Spool
from gate_core.netutil import BrokerError, parse_broker_url
from gate_core.wire import SegmentHeader, Status, decode_segment, encode_segment, new_id


@pytest.mark.parametrize("url,expected", [
    ("mqtt://localhost", ("localhost", 1883, False)),
    ("mqtt://10.0.0.2:1884", ("10.0.0.2", 1884, False)),
    ("mqtts://broker.lan", ("broker.lan", 8883, True)),
    ("mqtts://broker.lan:9999/", ("broker.lan", 9999, True)),
])
def test_parse_broker_url(url, expected):
    u = parse_broker_url(url)
    assert (u.host, u.port, u.tls) == expected
    assert parse_broker_url(str(u)) == u


@pytest.mark.parametrize("url", ["embedded", "http://h:1", "mqtt://", "mqtt://h:0", "mqtt://h:70000",
                                 "mqtt://h:1/topic", "mqtt://u:p@h:1", "mqtt://h:x", "mqtt://h:1?x=1"])
def test_parse_broker_url_rejects(url):
    with pytest.raises(BrokerError) as err:
        parse_broker_url(url)
    assert err.value.code == "broker_url"


@needs_mosquitto
def test_embedded_mosquitto_lives_for_the_block_and_keeps_its_port():
    with EmbeddedBroker(kind="mosquitto") as b:
        assert b.kind == "mosquitto" and b.running and b.url == f"mqtt://127.0.0.1:{b.port}"
        proc = b._proc
        b.restart()
        assert b.running and port_open(b.port) and proc.poll() is not None
        port = b.port
    assert not b.running and proc.poll() is not None and not port_open(port)


def test_auto_falls_back_to_python_without_mosquitto(monkeypatch):
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    with EmbeddedBroker() as b:
        assert b.kind == "python" and port_open(b.port)
    assert not port_open(b.port)
    with pytest.raises(BrokerError) as err:
        EmbeddedBroker(kind="mosquitto")
    assert err.value.code == "broker_missing"


def _client(port: int, cid: str, *, clean: bool = True, will: bytes | None = None) -> paho.Client:
    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean,
                    protocol=paho.MQTTv311)
    if will is not None:
        c.will_set("t/will", will, qos=1, retain=True)
    c.reconnect_delay_set(0.02, 0.1)
    c.connect("127.0.0.1", port, keepalive=5)
    c.loop_start()
    return c


@pytest.fixture(params=["python", pytest.param("mosquitto", marks=needs_mosquitto)])
def any_broker(request):
    with EmbeddedBroker(kind=request.param) as b:
        yield b


def test_publish_subscribe_retained_and_will(any_broker):
    port = any_broker.port
    pub = _client(port, "pub")
    pub.publish("t/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
    sub = Collector("127.0.0.1", port, ["t/#"], client_id="sub")
    assert sub.wait_for(lambda c: c.on("t/retained") == [b"kept"], 5)
    assert sub.messages[0][2]  # flagged retained
    for qos in (0, 1):
        pub.publish(f"t/q{qos}", f"m{qos}".encode(), qos=qos).wait_for_publish(5)
    assert sub.wait_for(lambda c: c.on("t/q0") == [b"m0"] and c.on("t/q1") == [b"m1"], 5)

    dying = _client(port, "dying", will=b"gone")
    time.sleep(0.2)
    dying.socket().shutdown(socket.SHUT_RDWR)  # an unclean end: no DISCONNECT
    assert sub.wait_for(lambda c: c.on("t/will") == [b"gone"], 5)
    dying.loop_stop()
    pub.disconnect()
    pub.loop_stop()
    sub.close()


def test_shared_group_and_persistent_session(any_broker):
    port = any_broker.port
    a = Collector("127.0.0.1", port, ["$share/cloud/gate/+/segments"], client_id="a")
    b = Collector("127.0.0.1", port, ["$share/cloud/gate/+/segments"], client_id="b")
    pub = _client(port, "pub")
    for i in range(6):
        pub.publish(f"gate/n{i}/segments", b"%d" % i, qos=1).wait_for_publish(5)
    assert a.wait_for(lambda c: len(a.on("/segments")) + len(b.on("/segments")) == 6, 5)
    assert sorted(a.on("/segments") + b.on("/segments")) == [b"%d" % i for i in range(6)]  # each exactly once
    assert a.on("/segments") and b.on("/segments")  # the group is balanced
    a.close()
    b.close()

    durable = Collector("127.0.0.1", port, ["q/x"], client_id="durable", persistent=True)
    durable.close()
    pub.publish("q/x", b"while away", qos=1).wait_for_publish(5)
    back = Collector("127.0.0.1", port, [], client_id="durable", persistent=True)
    assert back.wait_for(lambda c: c.on("q/x") == [b"while away"], 5)
    back.close()
    pub.disconnect()
    pub.loop_stop()


def test_python_broker_carries_the_node_transport(tmp_path):
    with EmbeddedBroker(kind="python") as b:
        cloud = Collector(b.host, b.port, ["$share/cloud/gate/+/segments", "gate/+/status"])
        t = MqttTransport(BrokerLink(b.host, b.port, reconnect_min_s=0.05, reconnect_max_s=0.5), NodeIdentity("n1"),
                          Spool(tmp_path, max_bytes=1 << 20), ledger=EnergyLedger())
        t.start()
        assert t.wait_connected(5)
        x = (np.sin(np.arange(8000) * 0.1) * 5000).astype(np.int16)
        h = SegmentHeader(node_id="n1", boot_id=t.boot_id, segment_id=new_id(), seq=0, t_start_s=1.0,
                          t_end_s=1.5, t_detect_s=1.2, sample_rate=16000, codec="flac", n_samples=1,
                          audio_sha256="0" * 64)
        t.publish_segment(encode_segment(h, x), segment_id=h.segment_id)
        assert t.flush(5)
        assert cloud.wait_for(lambda c: len(c.on("/segments")) == 1, 5)
        got, y = decode_segment(cloud.on("/segments")[0], max_bytes=1 << 20)
        assert got.segment_id == h.segment_id and np.array_equal(x, y)
        t.close()
        assert cloud.wait_for(lambda c: len(c.on("/status")) == 2, 5)
        assert Status.model_validate_json(cloud.on("/status")[-1]).state == "offline"
        cloud.close()


def test_python_broker_survives_garbage(tmp_path):
    with EmbeddedBroker(kind="python") as b:
        for junk in (b"\x10\xff\xff\xff\xff\x01", b"\x30\x05\x00", b"GET / HTTP/1.1\r\n\r\n", b"\x10\x02\x00\x04"):
            with socket.create_connection((b.host, b.port), timeout=2) as s:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(2)
                try:
                    while s.recv(100):
                        pass
                except OSError:
                    pass
        done = threading.Event()
        c = Collector(b.host, b.port, ["ok"], client_id="after")
        c.publish("ok", b"1")
        assert c.wait_for(lambda col: col.on("ok") == [b"1"], 5)
        c.close()
        done.set()


@needs_mosquitto
def test_persistent_embedded_mosquitto_keeps_queued_messages_across_a_restart():
    with EmbeddedBroker(kind="mosquitto", persistence=True) as b:
        away = Collector(b.host, b.port, ["q/#"], client_id="away", persistent=True)
        away.close()
        pub = _client(b.port, "pub")
        pub.publish("q/1", b"kept", qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        b.restart()  # SIGTERM: mosquitto saves; after SIGKILL only what its last autosave held survives
        back = Collector(b.host, b.port, [], client_id="away", persistent=True)
        assert back.wait_for(lambda c: c.on("q/1") == [b"kept"], 5)
        back.close()
