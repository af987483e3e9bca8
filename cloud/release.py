"""The cloud's half of over-the-air model updates: key pair, signed release, retained publish, acks.

``gate-cloud keygen --out DIR`` and ``gate-cloud release MODEL.tflite --card CARD.json --key KEY``
are thin wrappers; the federated release path calls :func:`build_release` and :func:`publish_release`
directly. Payload format and the node's checks: gate_core/release.py, docs/ota.md.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gate_core import cards
from gate_core import release as fmt
from gate_core.errors import GateError

log = logging.getLogger(__name__)

PRIVATE_NAME, PUBLIC_NAME = "release.key", "release.pub"
# The broker drops (silently) any message over its message_size_limit (deploy/mosquitto/gate.conf).
BROKER_MESSAGE_LIMIT = 1_048_576


class ReleasePublishError(GateError):
    code = "release_publish"


def keygen(out_dir: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair in ``out_dir``: release.key (PEM PKCS#8, mode 0600) and release.pub
    (PEM, for the nodes' ``kws.ota.public_key``). An existing key is never overwritten."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    out = Path(out_dir)
    priv, pub = out / PRIVATE_NAME, out / PUBLIC_NAME
    for p in (priv, pub):
        if p.exists():
            raise ReleasePublishError(f"{p}: already exists; refusing to overwrite a release key", code="key_exists")
    out.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(priv, 0o600)  # whatever the umask
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def build_release(model_bytes: bytes, card: dict, private_key, *, node: str | None = None,
                  version: str | None = None, created_unix: float | None = None) -> bytes:
    """The signed payload for the fleet (``node=None``) or one node. ``private_key``: a key object or
    the path of a PEM file. ``version`` defaults to the card's ``version`` or the model's hash prefix. The
    release carries the card's runtime part (gate_core.cards), checked: what the node validates and runs by."""
    if isinstance(private_key, (str, Path)):
        private_key = fmt.load_private_key(private_key)
    if not model_bytes:
        raise fmt.ReleaseError("the model is empty", code="release_empty")
    try:
        card = cards.check_runtime(card, "the release card")
    except cards.CardError as exc:
        raise fmt.ReleaseError(exc.args[0], code="release_card") from None
    target = node or fmt.FLEET
    fmt.model_topic("gate", node)  # validates the node level
    if version is None:
        version = str(card.get("version") or fmt.sha256_hex(model_bytes)[:12])
    return fmt.encode(model_bytes, card, private_key, target=target, version=version,
                      created_unix=time.time() if created_unix is None else created_unix)


@dataclass
class AckCollector:
    """Subscribes to every node's ``model/ack`` and keeps the latest ack of each node."""

    host: str
    port: int
    prefix: str = "gate"
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.acks: dict[str, tuple[float, fmt.Ack]] = {}
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        if self.username is not None:
            self._client.username_pw_set(self.username, self.password)
        self._client.on_connect = lambda c, *_: c.subscribe(fmt.ack_filter(self.prefix), qos=1)
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = self._message

    def __enter__(self) -> AckCollector:
        try:
            self._client.connect(self.host, self.port)
        except OSError as exc:
            raise ReleasePublishError(f"broker {self.host}:{self.port}: {exc.strerror or exc}",
                                      code="broker_unreachable") from None
        self._client.loop_start()
        if not self._ready.wait(10):
            raise ReleasePublishError(f"broker {self.host}:{self.port}: no SUBACK for the acks",
                                      code="broker_unreachable")
        return self

    def __exit__(self, *exc) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _message(self, client, userdata, msg) -> None:
        node = msg.topic.split("/")[1] if msg.topic.count("/") == 3 else "?"
        try:
            ack = fmt.Ack.from_json(msg.payload)
        except (ValueError, TypeError):
            log.warning("unreadable ack on %s", msg.topic)
            return
        with self._cond:
            self.acks[node] = (time.monotonic(), ack)
            self._cond.notify_all()

    def wait(self, nodes: Iterable[str], sha256: str, timeout: float) -> dict[str, fmt.Ack]:
        """Wait until every node in ``nodes`` has answered the release of ``sha256`` (accepted or not)."""
        want = set(nodes)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                done = {n: a for n, (_, a) in self.acks.items() if n in want and a.sha256 == sha256}
                left = deadline - time.monotonic()
                if len(done) == len(want) or left <= 0:
                    return done
                self._cond.wait(min(left, 0.1))


def publish_release(host: str, port: int, payload: bytes, *, node: str | None = None, prefix: str = "gate",
                    username: str | None = None, password: str | None = None, timeout: float = 10.0) -> str:
    """Publish ``payload`` retained (QoS 1) on the fleet topic or ``node``'s; returns the topic once the
    broker has acknowledged it."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    topic = fmt.model_topic(prefix, node)
    if len(payload) > BROKER_MESSAGE_LIMIT:
        raise ReleasePublishError(f"release is {len(payload)} B, over the broker's {BROKER_MESSAGE_LIMIT} B message "
                                  "limit (it would be dropped)", code="release_too_large")
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    try:
        client.connect(host, port)
    except OSError as exc:
        raise ReleasePublishError(f"broker {host}:{port}: {exc.strerror or exc}", code="broker_unreachable") from None
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise ReleasePublishError(f"broker {host}:{port}: release not acknowledged within {timeout:g} s",
                                      code="broker_timeout")
    finally:
        client.disconnect()
        client.loop_stop()
    return topic
