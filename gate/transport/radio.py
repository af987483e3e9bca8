"""What the node's MQTT link puts on the radio, charged to the energy ledger.

Bytes are those of gate.energy.wire (MQTT 3.1.1 packets, TCP/IPv4 headers, TLS records when the link
is encrypted). A radio invocation is a wake (priced with the profile's wake_j): one per delivered
segment. Status, heartbeats, verdicts, config messages, resends, republishes and session control ride
on a link that is already up: bytes only.
"""

from __future__ import annotations

from gate.energy import RADIO, EnergyLedger, wire_bytes
from gate.energy.wire import MQTT_ACK_PACKET_B, TCP_IPV4_HEADER_B, SessionBytes


class RadioMeter:
    """Charges ``ledger`` (None: counts nothing) for one MQTT link; ``qos`` is that of its segments,
    ``tls_overhead`` the bytes a TLS record adds (0 on a plain link).

    ``session`` is the link's control traffic (CONNECT with its will, the subscriptions, keepalives,
    DISCONNECT); replace it when the subscriptions change.
    """

    def __init__(self, ledger: EnergyLedger | None, *, qos: int, tls_overhead: int, session: SessionBytes) -> None:
        self.ledger = ledger
        self.qos = qos
        self.tls_overhead = tls_overhead
        self.session = session

    def message(self, nbytes: int, topic: str, qos: int) -> None:
        """A message of ``nbytes`` on ``topic`` sent or received, with its acknowledgement at ``qos``."""
        self._charge(self.wire_b(nbytes, len(topic.encode()), qos))

    def delivered(self, nbytes: int, topic_len: int, *, republish: bool) -> None:
        """A segment PUBACKed: its PUBLISH and PUBACK, and a wake unless it went out again on an open link."""
        self._charge(self.wire_b(nbytes, topic_len, self.qos), wakes=0 if republish else 1)

    def resent(self, nbytes: int, topic_len: int) -> None:
        """A segment in flight sent again (DUP) after a reconnect: the PUBLISH only, its PUBACK comes with
        :meth:`delivered`."""
        ack = MQTT_ACK_PACKET_B + TCP_IPV4_HEADER_B + self.tls_overhead
        self._charge(self.wire_b(nbytes, topic_len, self.qos) - ack)

    def connected(self) -> None:
        """CONNECT/CONNACK and SUBSCRIBE/SUBACK."""
        self._charge(self.session.connect)

    def disconnected(self) -> None:
        """DISCONNECT."""
        self._charge(self.session.disconnect)

    def keepalives(self, elapsed_s: float) -> int:
        """One PINGREQ/PINGRESP exchange per keepalive period of ``elapsed_s`` more seconds connected (the
        remainder carried to the next call); returns how many."""
        n, nbytes = self.session.keepalives(elapsed_s)
        self._charge(nbytes)
        return n

    def wire_b(self, nbytes: int, topic_len: int, qos: int) -> int:
        return wire_bytes(nbytes, topic_len=topic_len, qos=qos, tls_record_overhead=self.tls_overhead)

    def _charge(self, nbytes: int, *, wakes: int = 0) -> None:
        if self.ledger is not None and (nbytes or wakes):
            self.ledger.charge(RADIO, invocations=wakes, nbytes=nbytes)
