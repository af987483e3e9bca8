"""Store-and-forward on disk: segments wait here until they are acknowledged.

Every segment is written here before it is handed to MQTT and removed only once it is acknowledged
(the cloud's verdict, or the broker's PUBACK when ``mqtt.await_verdict_s`` is null; see
gate.transport.mqtt), so a broker outage, a dropped connection or a restart of the node loses
nothing that fits the bound. A full disk is treated like the bound: the oldest entries go first.
Delivery is at least once: a segment acknowledged just before a crash may be sent again after it,
and the cloud dedupes on the segment id.

One file per entry, named by a monotonic sequence number so a directory listing is the FIFO::

    <dir>/00000000000000000042.seg     b"GSP1" | crc32 (4) | key length (2) | key | payload
    <dir>/quarantine/                  entries that failed their check, kept for inspection

Writes go to a temporary name, are fsynced, renamed and the directory fsynced: after a power cut
an entry is either complete or absent, never torn, and a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from gate_core.errors import GateError

log = logging.getLogger(__name__)

MAGIC = b"GSP1"
_HEAD = struct.Struct(">4sIH")
SUFFIX = ".seg"
QUARANTINE = "quarantine"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class SpoolError(GateError):
    code = "spool_error"


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    seq: int
    key: str
    nbytes: int  # payload bytes
    path: Path


@dataclass(frozen=True, slots=True)
class SpoolStats:
    pending: int
    pending_bytes: int
    dropped: int
    quarantined: int
    failed: int = 0  # puts refused by a write error (the segment is lost)


class Spool:
    """A bounded FIFO of payloads on disk. Thread-safe; the bound counts payload bytes."""

    def __init__(self, directory: str | os.PathLike, *, max_bytes: int, fsync: bool = True) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory).expanduser()
        self.max_bytes = int(max_bytes)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._entries: dict[int, SpoolEntry] = {}  # insertion order == seq order
        self._bytes = 0
        self.dropped = 0
        self.quarantined = 0
        self.failed = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._scan()
        self._next_seq = max(self._entries, default=-1) + 1

    @classmethod
    def from_config(cls, cfg, **kw) -> Spool:  # cfg: gate.transport.config.MqttConfig
        return cls(cfg.spool_dir, max_bytes=int(cfg.spool_max_mb * 1024 * 1024), **kw)

    # -- queue ----------------------------------------------------------------------------------

    def put(self, payload: bytes, *, key: str) -> SpoolEntry:
        """Append durably; drops the oldest entries (counted, logged) when the bound would be passed.

        A full disk (ENOSPC, EDQUOT) is handled like the bound: the oldest entries go, one at a time,
        until the new one fits. Any other write error, or a full disk with nothing left to drop, is
        counted (``failed``) and raised as :class:`SpoolError` (``spool_write``). A failed write
        never leaves its temporary file behind.
        """
        kb = key.encode()
        if len(kb) > 0xFFFF:
            raise ValueError("spool key longer than 65535 bytes")
        if len(payload) > self.max_bytes:
            raise SpoolError(f"payload of {len(payload)} B exceeds the whole spool bound of {self.max_bytes} B",
                             code="spool_too_large")
        with self._lock:
            while self._entries and self._bytes + len(payload) > self.max_bytes:
                old = self._drop_oldest()
                log.warning("spool full (%d B bound): dropped oldest segment %s (seq %d); %d dropped so far",
                            self.max_bytes, old.key, old.seq, self.dropped)
            seq = self._next_seq
            self._next_seq += 1
            path = self.directory / f"{seq:020d}{SUFFIX}"
            tmp = self.directory / f".{seq:020d}.tmp"
            blob = _HEAD.pack(MAGIC, zlib.crc32(kb + payload), len(kb)) + kb + payload
            while True:
                try:
                    self._write(tmp, path, blob)
                    break
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        tmp.unlink(missing_ok=True)
                    if exc.errno in _DISK_FULL and self._entries:
                        old = self._drop_oldest()
                        log.warning("spool disk %s is full (%s): dropped oldest segment %s (seq %d); "
                                    "%d dropped so far", self.directory, exc.strerror, old.key, old.seq, self.dropped)
                        continue
                    self.failed += 1
                    log.error("spool: cannot write segment %s to %s (%s); %d write(s) failed so far",
                              key, self.directory, exc, self.failed)
                    raise SpoolError(f"cannot write segment {key} to {self.directory}: {exc}",
                                     code="spool_write") from exc
            if self._fsync:
                try:
                    self._sync_dir()
                except OSError as exc:  # the entry is complete and renamed; only its durability is in doubt
                    log.warning("spool: fsync of %s failed (%s)", self.directory, exc)
            entry = SpoolEntry(seq=seq, key=key, nbytes=len(payload), path=path)
            self._entries[seq] = entry
            self._bytes += len(payload)
            return entry

    def pending(self, limit: int | None = None) -> list[SpoolEntry]:
        """Oldest first."""
        with self._lock:
            entries = list(self._entries.values())
        return entries if limit is None else entries[:limit]

    def read(self, entry: SpoolEntry) -> bytes | None:
        """The payload, or None if the entry is gone (acked, dropped) or was corrupt (quarantined)."""
        try:
            blob = entry.path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self._forget(entry.seq)
            return None
        parsed = _parse(blob)
        if parsed is None or parsed[0] != entry.key:
            with self._lock:
                self._quarantine(entry.path, "checksum or key mismatch")
                self._forget(entry.seq)
            return None
        return parsed[1]

    def ack(self, seq: int) -> bool:
        """Remove a delivered entry; False if it was already gone (dropped while in flight)."""
        with self._lock:
            entry = self._entries.get(seq)
            if entry is None:
                return False
            # No directory fsync: an ack lost to a power cut only means one duplicate, which the cloud dedupes.
            self._remove(entry)
            return True

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(len(self._entries), self._bytes, self.dropped, self.quarantined, self.failed)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # -- internals ------------------------------------------------------------------------------

    def _scan(self) -> None:
        found: list[tuple[int, Path]] = []
        for p in self.directory.iterdir():
            if p.is_dir():
                continue
            if p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # a write that never reached its rename
                continue
            stem = p.name[:-len(SUFFIX)] if p.name.endswith(SUFFIX) else ""
            if not stem.isdigit():
                self._quarantine(p, "not a spool file name")
                continue
            found.append((int(stem), p))
        for seq, p in sorted(found):
            try:
                blob = p.read_bytes()
            except OSError as exc:
                self._quarantine(p, f"unreadable ({exc})")
                continue
            parsed = _parse(blob)
            if parsed is None:
                self._quarantine(p, "bad magic, length or checksum")
                continue
            key, payload = parsed
            self._entries[seq] = SpoolEntry(seq=seq, key=key, nbytes=len(payload), path=p)
            self._bytes += len(payload)
        if self._entries:
            log.info("spool %s: %d segments (%d B) waiting from an earlier run",
                     self.directory, len(self._entries), self._bytes)

    def _write(self, tmp: Path, path: Path, blob: bytes) -> None:
        with open(tmp, "wb") as f:
            f.write(blob)
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def _drop_oldest(self) -> SpoolEntry:
        old = next(iter(self._entries.values()))
        self._remove(old)
        self.dropped += 1
        return old

    def _remove(self, entry: SpoolEntry) -> None:
        entry.path.unlink(missing_ok=True)
        self._forget(entry.seq)

    def _forget(self, seq: int) -> None:
        entry = self._entries.pop(seq, None)
        if entry is not None:
            self._bytes -= entry.nbytes

    def _quarantine(self, path: Path, why: str) -> None:
        qdir = self.directory / QUARANTINE
        qdir.mkdir(exist_ok=True)
        try:
            os.replace(path, qdir / path.name)
        except FileNotFoundError:
            return
        self.quarantined += 1
        log.warning("spool: quarantined %s (%s)", path.name, why)

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _parse(blob: bytes) -> tuple[str, bytes] | None:
    if len(blob) < _HEAD.size:
        return None
    magic, crc, klen = _HEAD.unpack_from(blob)
    body = blob[_HEAD.size:]
    if magic != MAGIC or klen > len(body) or zlib.crc32(body) != crc:
        return None
    try:
        key = body[:klen].decode()
    except UnicodeDecodeError:
        return None
    return key, body[klen:]
