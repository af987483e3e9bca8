"""A real mosquitto per test on a free loopback port, and a subscriber that collects what it sees.

Deliberately independent of gate.transport.broker, so the transport tests do not trust the code
they could be hiding a bug in.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """mosquitto with persistence in ``workdir``; :meth:`restart` keeps the port (fault tests)."""

    def __init__(self, workdir: Path, *, persistence: bool = True) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.persistence = persistence
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            # mosquitto started as root drops to user "mosquitto", which cannot write a root-owned tmp dir.
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
            f"persistence {'true' if self.persistence else 'false'}\npersistence_location {self.workdir}/\n"
            # Save after every change, so a SIGKILL loses as little as mosquitto allows (fault tests).
            "autosave_on_changes true\nautosave_interval 1\n"
            "max_queued_messages 100000\nset_tcp_nodelay true\nlog_dest stdout\n")
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.workdir / "mosquitto.log").read_text()[-2000:])
            time.sleep(0.02)

    def stop(self, *, hard: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def restart(self, *, hard: bool = False) -> None:
        self.stop(hard=hard)
        self.start()


class Collector:
    """A paho subscriber (the cloud's stand-in) that records (topic, payload, retain) thread-safely."""

    def __init__(self, host: str, port: int, filters: list[str], *, client_id: str = "collector",
                 persistent: bool = False) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent, protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()

        def on_connect(client, userdata, flags, reason_code, properties) -> None:
            if filters:
                client.subscribe([(f, 1) for f in filters])
            else:
                subscribed.set()  # a persistent session coming back for what was queued

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(5):
            raise RuntimeError("collector could not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def on(self, topic_suffix: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t.endswith(topic_suffix)]

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 10.0) -> bool:
        # Re-checked every 50 ms too, so a predicate may also look at other collectors.
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class CountingProxy:
    """A loopback TCP relay that counts the MQTT bytes each way (one connection at a time)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = self.down = 0  # client -> broker, broker -> client
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self._server.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()
        for s in self._socks:
            s.close()
