"""Socket tuning shared by the node's and the cloud's MQTT clients."""

from __future__ import annotations

import socket


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
