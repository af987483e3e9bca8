"""End-to-end acknowledgement: the segments a broker has PUBACKed and the cloud has not answered yet.

With ``await_verdict_s`` set, a PUBACKed segment stays in the spool until its verdict arrives, and is
published again (same segment id) every ``await_verdict_s`` until then; None deletes it on PUBACK
(see gate.transport.mqtt). Owned by the transport's worker thread; :attr:`VerdictWait.seqs`, replaced
whole, is what other threads may read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gate.transport.spool import Spool, SpoolEntry


@dataclass(frozen=True, slots=True)
class _Awaiting:
    entry: SpoolEntry
    since: float  # time.monotonic() of its PUBACK


class VerdictWait:
    """PUBACKed segments waiting for their verdict, oldest PUBACK first; republish warnings go to ``log``."""

    def __init__(self, spool: Spool, seconds: float | None, log: logging.Logger) -> None:
        self.spool = spool
        self.seconds = seconds
        self.log = log
        self.seqs: frozenset[int] = frozenset()  # spool seqs only a verdict is missing for
        self.republished = 0  # segments published again for want of a verdict
        self._awaiting: dict[str, _Awaiting] = {}  # segment id -> PUBACKed entry
        self._answered: set[int] = set()  # seqs whose verdict came while they were in flight
        self._unlogged = 0
        self._next_log = 0.0

    def __len__(self) -> int:
        return len(self._awaiting)

    def set_seconds(self, seconds: float | None) -> None:
        """Off (None) settles what awaits a verdict as if answered: the broker has acknowledged it."""
        self.seconds = seconds
        if seconds is None:
            for a in self._awaiting.values():
                self.spool.ack(a.entry.seq)
            self._awaiting.clear()

    def acked(self, entry: SpoolEntry) -> None:
        """The broker PUBACKed ``entry``."""
        if entry.seq in self._answered:
            self._answered.discard(entry.seq)  # answered while in flight: already out of the spool
        elif self.seconds is None:
            self.spool.ack(entry.seq)
        else:
            # The broker has it, which does not mean a cloud worker will: keep it until its verdict.
            self._awaiting.pop(entry.key, None)
            self._awaiting[entry.key] = _Awaiting(entry, time.monotonic())

    def held(self) -> set[int]:
        return {a.entry.seq for a in self._awaiting.values()}

    def republish_overdue(self, room: int, publish: Callable[[SpoolEntry], bool | None]) -> int:
        """``publish`` again (up to ``room``) the segments PUBACKed ``seconds`` ago and still unanswered;
        how many went. ``publish``: True in flight, False refused (stop for now), None gone from the spool."""
        if self.seconds is None or not self._awaiting:
            return 0
        due = time.monotonic() - self.seconds
        n = 0
        while self._awaiting and n < room:
            key, a = next(iter(self._awaiting.items()))
            if a.since > due:
                break  # oldest PUBACK first: the rest are younger
            sent = publish(a.entry)
            if sent is False:
                break
            del self._awaiting[key]
            if sent:  # None: dropped from the spool meanwhile (bound, full disk), nothing to wait for
                n += 1
        if n:
            self.republished += n
            self._unlogged += n
            now = time.monotonic()
            if now >= self._next_log:  # one line per await_verdict_s at most, whatever the backlog
                self.log.warning("%d segment(s) acknowledged by the broker got no verdict within %.0f s: published "
                                 "again (%d republished so far, %d still awaiting a verdict)", self._unlogged,
                                 self.seconds, self.republished, len(self._awaiting))
                self._unlogged = 0
                self._next_log = now + self.seconds
        return n

    def settle(self, segment_id: str, inflight: Iterable[SpoolEntry]) -> None:
        """The cloud answered ``segment_id``: it leaves the spool, wherever it is in its life."""
        a = self._awaiting.pop(segment_id, None)
        if a is not None:
            self.spool.ack(a.entry.seq)
            return
        for entry in inflight:
            if entry.key == segment_id:  # republished, or resent after a reconnect, and answered meanwhile
                self._answered.add(entry.seq)
                self.spool.ack(entry.seq)
                return
        for entry in self.spool.pending():  # spooled by an earlier run, answered on our persistent session
            if entry.key == segment_id:
                self.spool.ack(entry.seq)
                return

    def publish_seqs(self) -> None:
        """Replace :attr:`seqs` with the current set (after each event)."""
        seqs = frozenset(self.held())
        if seqs != self.seqs:
            self.seqs = seqs
