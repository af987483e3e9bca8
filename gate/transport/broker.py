"""A private broker for one run: mosquitto on a free loopback port, or the pure-Python fallback.

``--broker embedded`` (the default) means the node needs no broker set up for a demo, a replay or a
test; the broker lives exactly as long as the ``with`` block and is never reachable off-host.
"""

from __future__ import annotations

import getpass
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gate_core.netutil import BrokerError, BrokerUrl, parse_broker_url

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    for name in MOSQUITTO_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def wait_for_port(host: str, port: int, timeout: float, alive=lambda: True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


@contextmanager
def broker_endpoint(broker: str, **embedded) -> Iterator[BrokerUrl]:
    """``MqttConfig.broker`` as an address: "embedded" starts a private broker for the block."""
    if broker != "embedded":
        yield parse_broker_url(broker)
        return
    with EmbeddedBroker(**embedded) as b:
        yield BrokerUrl(b.host, b.port, False)


class EmbeddedBroker:
    """A broker on ``127.0.0.1:<free port>`` for the life of a ``with`` block.

    ``kind``: "auto" (mosquitto if installed, else Python), "mosquitto" or "python". With
    ``persistence`` mosquitto keeps sessions and queued messages across :meth:`restart`, which is
    what fault tests need (the Python broker keeps nothing across a restart). :meth:`stop` and
    :meth:`restart` keep the port.
    """

    def __init__(self, *, kind: str = "auto", port: int | None = None, persistence: bool = False,
                 startup_timeout: float = 10.0, mosquitto: str | None = None) -> None:
        if kind not in ("auto", "mosquitto", "python"):
            raise ValueError(f"kind must be auto, mosquitto or python, got {kind!r}")
        binary = mosquitto or (find_mosquitto() if kind != "python" else None)
        if kind == "mosquitto" and binary is None:
            raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)",
                              code="broker_missing")
        self.kind = "mosquitto" if binary else "python"
        self.host = LOOPBACK
        self.port = port or 0
        self.persistence = persistence
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._dir: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None
        self._py = None
        # Kills a broker whose owner forgot close(): the finalizer holds this dict, never the broker.
        self._live: dict[str, subprocess.Popen | None] = {"proc": None}
        self._finalizer = weakref.finalize(self, _reap, self._live)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._py is not None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="gate-broker-")
        # A free port can be taken between probe and bind: a fresh one is tried then, unless pinned
        # (a restart keeps its port, so clients reconnect to the same address).
        pinned = bool(self.port)
        for _ in range(1 if pinned else 3):
            if not pinned:
                self.port = free_port()
            try:
                self._start_once()
                return self
            except BrokerError:
                if pinned:
                    raise
        raise BrokerError("could not start a broker on a free loopback port", code="broker_start")

    def stop(self, *, hard: bool = False) -> None:
        """Stop the broker; ``hard`` kills mosquitto (SIGKILL) without letting it save its state."""
        if self._proc is not None:
            _stop_process(self._proc, hard=hard)
            self._proc = None
            self._live["proc"] = None
        if self._py is not None:
            self._py.stop()
            self._py = None

    def restart(self, *, hard: bool = False) -> None:
        self.stop(hard=hard)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, n: int = 20) -> str:
        if self._dir is None:
            return ""
        path = Path(self._dir.name) / "mosquitto.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def _start_once(self) -> None:
        if self.kind == "python":
            from gate.transport.pybroker import PyBroker

            try:
                self._py = PyBroker(host=self.host, port=self.port).start()
            except OSError as exc:
                raise BrokerError(f"python broker cannot bind {self.host}:{self.port} ({exc})",
                                  code="broker_start") from None
            return
        assert self._dir is not None and self._binary is not None
        workdir = Path(self._dir.name)
        conf = workdir / "mosquitto.conf"
        conf.write_text(_mosquitto_conf(self.host, self.port, workdir, self.persistence))
        logf = open(workdir / "mosquitto.log", "ab")
        try:
            # Own session: a Ctrl-C meant for the node does not reach the broker before the node has said goodbye.
            self._proc = subprocess.Popen([self._binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                          stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            logf.close()
        self._live["proc"] = self._proc
        if not wait_for_port(self.host, self.port, self.startup_timeout, alive=lambda: self._proc.poll() is None):
            tail = self.log_tail()
            _stop_process(self._proc, hard=True)
            self._proc = None
            self._live["proc"] = None
            raise BrokerError(f"mosquitto did not start on {self.host}:{self.port}:\n{tail}", code="broker_start")
        log.info("embedded mosquitto on %s (pid %d)", self.url, self._proc.pid)


def _run_as(workdir: Path) -> str:
    """The user mosquitto drops to: it must be able to write its persistence file in ``workdir``."""
    if os.geteuid() != 0:
        return getpass.getuser()  # mosquitto only switches user when started as root
    try:
        pw = pwd.getpwnam("mosquitto")
    except KeyError:
        return "root"
    os.chown(workdir, pw.pw_uid, pw.pw_gid)
    return "mosquitto"


def _mosquitto_conf(host: str, port: int, workdir: Path, persistence: bool) -> str:
    user = _run_as(workdir)
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        f"user {user}",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {workdir}{os.sep}",
        # With persistence, save after every change: a crash then loses as little as mosquitto allows.
        *(["autosave_on_changes true", "autosave_interval 1"] if persistence else []),
        # Segments wait in the broker for a slow cloud; the default of 1000 queued messages is too few for a replay.
        "max_queued_messages 100000",
        # Nagle on the broker side delays each small PUBACK/verdict by a delayed-ACK period (~40 ms).
        "set_tcp_nodelay true",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    return "\n".join(lines) + "\n"


def _stop_process(proc: subprocess.Popen, *, hard: bool) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _reap(live: dict) -> None:  # pragma: no cover - only for a broker never closed
    if live.get("proc") is not None:
        _stop_process(live["proc"], hard=True)
