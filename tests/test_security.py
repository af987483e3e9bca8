"""The shipped broker configuration, proven against a real mosquitto.

deploy/mosquitto/gate.conf and gate.acl run as shipped; only listener ports (bound to loopback),
file paths and, under root, the privilege drop are rewritten (`_render`); a second broker runs
the mutual-TLS variant the file documents in two commented lines. Accounts come from
deploy/mosquitto/make-passwords.sh and the PKI from deploy/certs/make-dev-certs.sh, so the tools
are exercised too.

Denied publishes are dropped silently by mosquitto (a v3.1.1 PUBACK still arrives), so a denial is
proven by ordering: after the forged message is acknowledged, a legitimate "marker" goes to the
same observer; once the marker arrives, anything the broker had routed earlier would have too.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from gate.transport.config import MqttConfig
from gate_core.wire import NodeTopics, shared_subscription

ROOT = Path(__file__).resolve().parents[1]
MOSQ_DIR = ROOT / "deploy/mosquitto"
WAIT_S = 5.0

TOOLS = {name: shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
         for name in ("mosquitto", "mosquitto_passwd", "openssl")}
pytestmark = pytest.mark.skipif(not all(TOOLS.values()),
                                reason=f"needs {', '.join(n for n, p in TOOLS.items() if not p)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _render(shipped: str, *, tls_port: int, local_port: int, files: dict[str, Path]) -> str:
    """The shipped config with ports and paths swapped; every swap must find its target."""
    swaps = {r"^listener 8883$": f"listener {tls_port} 127.0.0.1",
             r"^listener 1883 127\.0\.0\.1$": f"listener {local_port} 127.0.0.1"}
    swaps.update({rf"^(\w+) {re.escape(prod)}$": rf"\1 {local}" for prod, local in files.items()})
    out = shipped
    for pattern, repl in swaps.items():
        out, n = re.subn(pattern, repl, out, flags=re.M)
        assert n == 1, f"gate.conf no longer has exactly one line matching {pattern!r}"
    if os.geteuid() == 0:
        out += "\n# test only: stay root, the temporary files are root's\nuser root\n"
    return out


class Broker:
    def __init__(self, root: Path, *, mutual_tls: bool = False) -> None:
        self.root = root
        self.tls_port, self.local_port = _free_port(), _free_port()
        self.certs = root / "certs"
        subprocess.run(["bash", ROOT / "deploy/certs/make-dev-certs.sh", "-c", "node1", self.certs],
                       check=True, capture_output=True, timeout=30)
        subprocess.run(["bash", MOSQ_DIR / "make-passwords.sh", root / "accounts", "node1", "node2"],
                       check=True, capture_output=True, timeout=30)
        self.ca = self.certs / "ca.crt"
        (root / "data").mkdir()
        files = {"/etc/mosquitto/gate.passwd": root / "accounts/gate.passwd",
                 "/etc/mosquitto/gate.acl": MOSQ_DIR / "gate.acl",
                 "/etc/mosquitto/certs/server.crt": self.certs / "server.crt",
                 "/etc/mosquitto/certs/server.key": self.certs / "server.key",
                 "/var/lib/mosquitto/": f"{root / 'data'}/"}
        shipped = (MOSQ_DIR / "gate.conf").read_text()
        if mutual_tls:
            # The variant gate.conf documents: its two commented lines switched on.
            shipped, n = re.subn(r"^#((?:cafile|require_certificate) .*)$", r"\1", shipped, flags=re.M)
            assert n == 2, "gate.conf no longer carries the commented mutual-TLS lines"
            files["/etc/mosquitto/ca_certificates/ca.crt"] = self.ca
        self.conf = root / "gate.conf"
        self.conf.write_text(_render(shipped, tls_port=self.tls_port, local_port=self.local_port, files=files))
        self.log = root / "mosquitto.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([TOOLS["mosquitto"], "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not all(self._listening(p) for p in (self.tls_port, self.local_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def password(self, user: str) -> str:
        return (self.root / "accounts/secrets" / f"{user}.password").read_text().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("broker"))
    yield b
    b.stop()


class Client:
    """A paho client that records CONNACK, disconnects and every message, with bounded waits."""

    def __init__(self, broker: Broker, user: str | None, *, password: str | None = None, tls: bool = True,
                 client_id: str = "", v5: bool = False, cert: str | None = None) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()
        self.c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
        if user is not None:
            self.c.username_pw_set(user, broker.password(user) if password is None else password)
        if tls:
            self.c.tls_set(ca_certs=str(broker.ca), certfile=cert and str(broker.certs / f"{cert}.crt"),
                           keyfile=cert and str(broker.certs / f"{cert}.key"))
        self.c.reconnect_delay_set(60, 60)  # one attempt per test: a refusal must stay visible
        self.c.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.c.on_disconnect = lambda *a: self.disconnected.set()
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.refused_handshake = False
        try:
            # "localhost" rather than the address: the broker certificate's SAN must match the name.
            self.c.connect("localhost", broker.tls_port if tls else broker.local_port, keepalive=30)
        except ssl.SSLError:
            self.refused_handshake = True  # TLS 1.2 reports a refused client certificate here
            return
        self.c.loop_start()

    def connected(self) -> bool:
        deadline = time.monotonic() + WAIT_S
        while not self.refused_handshake and time.monotonic() < deadline:
            try:
                return not self.connack.get(timeout=0.05).is_failure
            except queue.Empty:
                if self.disconnected.is_set():  # closed before any CONNACK: TLS or protocol refusal
                    return False
        return False

    def subscribe(self, *filters: str) -> list:
        done: queue.Queue = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, codes, props: done.put(codes)
        self.c.subscribe([(f, 1) for f in filters])
        return done.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def until(self, payload: bytes) -> list[tuple[str, bytes]]:
        """Every message up to and including the first carrying ``payload``."""
        seen = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(msg)
            if msg[1] == payload:
                return seen
        raise AssertionError(f"{payload!r} never arrived; saw {seen}")

    def close(self) -> None:
        if not self.refused_handshake:
            self.c.disconnect()
            self.c.loop_stop()


@pytest.fixture(scope="module")
def mutual_tls_broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("broker-mtls"), mutual_tls=True)
    yield b
    b.stop()


def _client_factory(broker: Broker):
    made: list[Client] = []

    def make(user, **kw) -> Client:
        cl = Client(broker, user, **kw)
        made.append(cl)
        return cl

    return make, made


@pytest.fixture
def clients(broker):
    make, made = _client_factory(broker)
    yield make
    for cl in made:
        cl.close()


@pytest.fixture
def mtls_clients(mutual_tls_broker):
    make, made = _client_factory(mutual_tls_broker)
    yield make
    for cl in made:
        cl.close()


def online(make, user, **kw) -> Client:
    cl = make(user, **kw)
    assert cl.connected(), f"{user} could not connect"
    return cl


N1, N2 = NodeTopics("node1"), NodeTopics("node2")


# ---------------------------------------------------------------------------------------------
# Authentication and transport


def test_anonymous_client_is_refused(clients):
    assert not clients(None).connected()


def test_anonymous_client_is_refused_on_the_loopback_listener_too(clients):
    assert not clients(None, tls=False).connected()


def test_wrong_password_is_refused(clients):
    assert not clients("node1", password="not-the-password").connected()


def test_plain_mqtt_on_the_tls_port_gets_no_connack(broker):
    # A CONNECT with valid credentials, in clear text, to the TLS listener.
    user, pw = b"node1", broker.password("node1").encode()
    body = (b"\x00\x04MQTT\x04\xc2\x00\x1e" + b"\x00\x00" + len(user).to_bytes(2, "big") + user
            + len(pw).to_bytes(2, "big") + pw)
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=WAIT_S) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        try:
            reply = s.recv(4)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert not reply.startswith(b"\x20"), "the TLS listener answered a clear-text CONNECT with a CONNACK"


def test_tls_needs_a_trusted_broker_certificate(broker, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["bash", ROOT / "deploy/certs/make-dev-certs.sh", other], check=True, capture_output=True,
                   timeout=30)
    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    c.tls_set(ca_certs=str(other / "ca.crt"))
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        c.connect("localhost", broker.tls_port)


def test_mutual_tls_variant_needs_a_client_certificate_as_well_as_the_password(mtls_clients):
    assert not mtls_clients("node1").connected()
    assert not mtls_clients("node1", cert="node1", password="not-the-password").connected()
    assert online(mtls_clients, "node1", cert="node1")


# ---------------------------------------------------------------------------------------------
# Each node within its own topics


def test_node_and_cloud_round_trip_over_tls(clients):
    cloud = online(clients, "cloud", v5=True)
    assert [rc.value for rc in cloud.subscribe(shared_subscription("segments", group="gate-cloud"))] == [1]
    node = online(clients, "node1")
    node.subscribe(N1.verdict, N1.config)
    node.publish(N1.segments, b"segment")
    assert cloud.until(b"segment") == [(N1.segments, b"segment")]
    cloud.publish(N1.verdict, b"verdict")
    cloud.publish(N1.config, b"config")
    assert node.until(b"config") == [(N1.verdict, b"verdict"), (N1.config, b"config")]


def test_cloud_reads_every_node_uplink(clients):
    cloud = online(clients, "cloud")
    cloud.subscribe("gate/+/status", "gate/+/heartbeat", "gate/+/config/ack")
    node = online(clients, "node1")
    for topic in (N1.status, N1.heartbeat, N1.config_ack):
        node.publish(topic, topic.encode())
    assert [t for t, _ in cloud.until(N1.config_ack.encode())] == [N1.status, N1.heartbeat, N1.config_ack]


# (forged topic, who would see it, who may legitimately publish there)
FORGERIES = [
    (N2.segments, "cloud", "node2"),
    (N2.status, "cloud", "node2"),
    (N2.heartbeat, "cloud", "node2"),
    (N2.config_ack, "cloud", "node2"),
    (N2.verdict, "node2", "cloud"),
    (N2.config, "node2", "cloud"),
    (N1.verdict, "node1", "cloud"),  # a node cannot answer for the cloud, even about itself
    ("gate/fleet/model", "node2", "cloud"),  # nor release a model, to the fleet or to any node
    ("gate/node2/model", "node2", "cloud"),
    ("gate/node1/model", "node1", "cloud"),
    ("gate/node2/model/ack", "cloud", "node2"),
]


@pytest.mark.parametrize(("topic", "observer", "owner"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_node1_cannot_publish_outside_its_own_uplink(clients, topic, observer, owner):
    watcher = online(clients, observer)
    watcher.subscribe(topic)
    forger = watcher if observer == "node1" else online(clients, "node1")
    forger.publish(topic, b"forged", retain=topic.endswith("/status"))
    online(clients, owner).publish(topic, b"marker")
    assert watcher.until(b"marker") == [(topic, b"marker")]


def test_nodes_read_their_own_and_the_fleet_model_releases_and_the_cloud_their_acks(clients):
    cloud = online(clients, "cloud")
    cloud.subscribe("gate/+/model/ack")
    node = online(clients, "node1")
    node.subscribe("gate/node1/model", "gate/fleet/model", "gate/node2/model")
    for topic in ("gate/node2/model", "gate/fleet/model", "gate/node1/model"):
        cloud.publish(topic, topic.encode())
    assert node.until(b"gate/node1/model") == [("gate/fleet/model", b"gate/fleet/model"),
                                               ("gate/node1/model", b"gate/node1/model")]
    node.publish("gate/node1/model/ack", b"ack")
    assert cloud.until(b"ack") == [("gate/node1/model/ack", b"ack")]


def test_node1_reads_nothing_of_node2_even_through_wildcards(clients):
    spy = online(clients, "node1", v5=True)
    # mosquitto 2.0 grants these subscriptions and checks read rights on every delivery instead.
    spy.subscribe(N2.verdict, N2.config, "gate/+/segments", "gate/#", N1.verdict)
    cloud = online(clients, "cloud")
    cloud.publish(N2.verdict, b"for node2")
    cloud.publish(N2.config, b"for node2")
    online(clients, "node2").publish(N2.segments, b"from node2")
    cloud.publish(N1.verdict, b"marker")
    assert {m for m in spy.until(b"marker")} == {(N1.verdict, b"marker")}


def test_node1_cannot_read_node2_through_a_shared_subscription(clients):
    spy = online(clients, "node1")
    spy.subscribe(shared_subscription("segments", group="spy"), shared_subscription("verdict", group="spy"),
                  N1.verdict)
    cloud = online(clients, "cloud")
    online(clients, "node2").publish(N2.segments, b"from node2")
    cloud.publish(N2.verdict, b"for node2")
    cloud.publish(N1.verdict, b"marker")
    assert spy.until(b"marker") == [(N1.verdict, b"marker")]


def test_node1_cannot_take_over_node2s_session(clients):
    node2 = online(clients, "node2", client_id="gate-gate-node2")
    node2.subscribe(N2.verdict)
    # Same client id and clean_session false: without use_username_as_clientid this would
    # disconnect node2 and inherit its session.
    intruder = online(clients, "node1", client_id="gate-gate-node2")
    intruder.subscribe(N2.verdict)
    online(clients, "cloud").publish(N2.verdict, b"for node2")
    assert node2.until(b"for node2") == [(N2.verdict, b"for node2")]
    assert not node2.disconnected.is_set()
    assert intruder.messages.empty()


# ---------------------------------------------------------------------------------------------
# The cloud workers


def test_cloud_workers_share_the_segment_stream_on_the_loopback_listener(clients):
    group = shared_subscription("segments", group="gate-cloud")
    workers = [online(clients, "cloud", tls=False, v5=True, client_id=f"gate-cloud-test-{i}") for i in range(2)]
    for w in workers:
        w.subscribe(group)
    node = online(clients, "node1")
    sent = [f"seg-{i}".encode() for i in range(10)]
    for p in sent:
        node.publish(N1.segments, p)
    got: list[list[bytes]] = [[], []]
    deadline = time.monotonic() + WAIT_S
    while sum(map(len, got)) < len(sent) and time.monotonic() < deadline:
        for i, w in enumerate(workers):
            while not w.messages.empty():
                got[i].append(w.messages.get()[1])
        time.sleep(0.01)
    assert sorted(got[0] + got[1]) == sorted(sent), "each segment goes to exactly one worker"
    assert got[0] and got[1], "both workers take a share"


# ---------------------------------------------------------------------------------------------
# Size limits


def _directive(name: str) -> int:
    (value,) = re.findall(rf"^{name} (\d+)$", (MOSQ_DIR / "gate.conf").read_text(), flags=re.M)
    return int(value)


def test_broker_payload_limit_is_the_service_limit():
    example = yaml.safe_load((ROOT / "deploy/thresholds.example.yaml").read_text())
    limit = _directive("message_size_limit")
    assert limit == example["mqtt"]["max_payload_kb"] * 1024 == MqttConfig().max_payload_kb * 1024
    # Room for the fixed header, topic and packet id of a full-size segment.
    assert limit + 1024 <= _directive("max_packet_size") <= limit + 256 * 1024


def test_payload_over_the_limit_is_dropped_and_at_the_limit_delivered(clients):
    limit = _directive("message_size_limit")
    cloud = online(clients, "cloud")
    cloud.subscribe(N1.segments)
    node = online(clients, "node1")
    at_limit = b"a" * limit
    node.publish(N1.segments, b"b" * (limit + 1))
    node.publish(N1.segments, at_limit)
    node.publish(N1.segments, b"marker")
    assert [len(p) for _, p in cloud.until(b"marker")] == [limit, len(b"marker")]


def test_packet_over_max_packet_size_disconnects_the_sender(clients):
    node = online(clients, "node1")
    node.c.publish(N1.segments, b"x" * (_directive("max_packet_size") + 1), qos=1)
    assert node.disconnected.wait(WAIT_S)
