"""The events MqttTransport's worker thread handles, one frozen class per kind.

paho's callbacks (network thread) and the public API (caller threads) only put these on the worker's
queue; the worker owns every piece of state they touch and handles them in order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Connected:
    session_present: bool


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class SubAck:
    mid: int
    failures: tuple[str, ...]  # reason codes of the refused subscriptions


@dataclass(frozen=True, slots=True)
class Acked:
    """PUBACK (or PUBCOMP) for message id ``mid``."""

    mid: int


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int


@dataclass(frozen=True, slots=True)
class Spooled:
    """A segment was written to the spool."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Nothing came for a while: time to republish what waited too long for its verdict."""


@dataclass(frozen=True, slots=True)
class Clock:
    """``elapsed_s`` more seconds of audio went by (keepalives are charged on the audio clock)."""

    elapsed_s: float


@dataclass(frozen=True, slots=True)
class AwaitVerdict:
    """A new ``await_verdict_s``."""

    seconds: float | None


@dataclass(frozen=True, slots=True)
class HeartbeatOut:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Send:
    topic: str
    payload: bytes
    qos: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Say offline and end the worker; ``done`` is set once the offline status is out."""

    done: threading.Event


Event = Connected | Disconnected | SubAck | Acked | Received | Spooled | Tick | Clock | AwaitVerdict | HeartbeatOut \
    | Send | Stop
