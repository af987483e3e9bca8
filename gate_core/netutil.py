"""Socket tuning shared by the node's and the cloud's MQTT clients."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gate_core.errors import GateError


def set_no_delay(sock: socket.socket | None) -> None:
    """Turn Nagle off on a TCP socket (a no-op for anything else).

    paho leaves Nagle on, so each small PUBLISH or PUBACK waits for the peer's delayed ACK
    (~40 ms on Linux) before it leaves: that dominated publish -> verdict latency on loopback.
    """
    try:
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class UnreachableLog:
    """Says once that a broker cannot be reached, then at most every ``every_s`` while paho retries,
    and once more when it is reached again; shared by the node's and the cloud's MQTT clients.

    The rate is in wall seconds: it paces a log about a network, not anything the audio clock measures."""

    def __init__(self, log: logging.Logger, where: str, *, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.where, self.every_s, self.clock = log, where, every_s, clock
        self.failures = 0
        self._last: float | None = None

    def failed(self, reason: str = "connection refused or timed out") -> None:
        self.failures += 1
        now = self.clock()
        if self._last is None or now - self._last >= self.every_s:
            again = "" if self.failures == 1 else f" ({self.failures} attempts so far)"
            self.log.warning("broker %s unreachable: %s; retrying%s", self.where, reason, again)
            self._last = now

    def reached(self) -> None:
        if self.failures:
            self.log.warning("broker %s reachable again after %d failed attempt(s)", self.where, self.failures)
        self.failures = 0
        self._last = None


DEFAULT_PORT, DEFAULT_TLS_PORT = 1883, 8883


class BrokerError(GateError):
    code = "broker_error"


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://host[:port]`` (1883) or ``mqtts://host[:port]`` (8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise BrokerError(f"broker URL {url!r}: expected mqtt://host[:port] or mqtts://host[:port]",
                          code="broker_url")
    try:
        port = parts.port
    except ValueError:
        raise BrokerError(f"broker URL {url!r}: port must be 1-65535", code="broker_url") from None
    tls = parts.scheme == "mqtts"
    if port == 0:
        raise BrokerError(f"broker URL {url!r}: port must be 1-65535", code="broker_url")
    return BrokerUrl(parts.hostname, port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT), tls)
