"""Where verdicts are committed: SQLite (WAL) by default, PostgreSQL given a URL, one small interface.

The store is also the dedupe set: a segment id already present means the segment was handled and
its stored verdict is the answer. A segment is acknowledged to the broker only after
:meth:`Store.record` returned, so a crash at any point either loses nothing or leaves a row that
turns the redelivery into a dedupe hit.

Schema (both back ends)::

    segments(segment_id PK, node_id, boot_id, seq, received_at, decided_at, header, verdict,
             accepted, command, model_cpu_s, worker, audio_codec, audio NULL-able)
    rejects(id PK, received_at, topic, code, reason, nbytes, segment_id)   malformed-message log
    meta(key PK, value)                        schema_version, worker high-water marks

Times are unix seconds; ``header`` and ``verdict`` are the JSON exactly as received / published.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gate_core.errors import GateError

SCHEMA_VERSION = 1


class StoreError(GateError):
    code = "store_error"


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    segment_id: str
    node_id: str
    boot_id: str
    seq: int
    received_at: float
    decided_at: float
    header: str  # JSON
    verdict: str  # JSON
    accepted: bool
    command: str | None
    model_cpu_s: float
    worker: str
    audio_codec: str | None = None
    audio: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    segment_id: str
    node_id: str
    audio_sha256: str
    verdict: str  # JSON as published


@dataclass(frozen=True, slots=True)
class RejectRecord:
    received_at: float
    topic: str
    code: str
    reason: str
    nbytes: int
    segment_id: str | None = None


class Store(Protocol):
    def lookup(self, segment_id: str) -> StoredVerdict | None: ...

    def record(self, rec: SegmentRecord) -> bool:
        """Commit ``rec``; False (and nothing written) if its segment id is already stored."""
        ...

    def record_reject(self, rej: RejectRecord) -> None: ...

    def prune(self, *, audio_before: float, rejects_before: float) -> tuple[int, int]:
        """Drop audio received before ``audio_before`` and rejects before ``rejects_before``: (audio, rejects)."""
        ...

    def counts(self) -> dict[str, int]: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...


def open_store(url: str) -> Store:
    """``sqlite:///<path>`` or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):])
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise StoreError(f"unsupported database URL {url!r} (sqlite:///<path> or postgresql://...)", code="store_url")


def _audio_sha(header_json: str) -> str:
    try:
        return str(json.loads(header_json).get("audio_sha256", ""))
    except (ValueError, AttributeError):
        return ""


_COLUMNS = ("segment_id", "node_id", "boot_id", "seq", "received_at", "decided_at", "header", "verdict",
            "accepted", "command", "model_cpu_s", "worker", "audio_codec", "audio")


def _row(rec: SegmentRecord) -> tuple[Any, ...]:
    return (rec.segment_id, rec.node_id, rec.boot_id, rec.seq, rec.received_at, rec.decided_at, rec.header,
            rec.verdict, int(rec.accepted), rec.command, rec.model_cpu_s, rec.worker, rec.audio_codec, rec.audio)


# ---------------------------------------------------------------------------------------------
# SQLite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    segment_id  TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    boot_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    received_at REAL NOT NULL,
    decided_at  REAL NOT NULL,
    header      TEXT NOT NULL,
    verdict     TEXT NOT NULL,
    accepted    INTEGER NOT NULL,
    command     TEXT,
    model_cpu_s REAL NOT NULL,
    worker      TEXT NOT NULL,
    audio_codec TEXT,
    audio       BLOB
);
CREATE INDEX IF NOT EXISTS segments_node_time ON segments(node_id, received_at);
CREATE INDEX IF NOT EXISTS segments_audio_time ON segments(received_at) WHERE audio IS NOT NULL;
CREATE TABLE IF NOT EXISTS rejects (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    topic       TEXT NOT NULL,
    code        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    nbytes      INTEGER NOT NULL,
    segment_id  TEXT
);
CREATE INDEX IF NOT EXISTS rejects_time ON rejects(received_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _retry_locked(step, timeout_s: float) -> None:
    """Run ``step``, retrying while the database is locked. Switching a new file to WAL needs an
    exclusive lock and SQLite can answer SQLITE_BUSY at once, without its busy handler, when two
    workers open the same new file together."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class SQLiteStore:
    """One connection per store; several worker processes may share the file (WAL, busy timeout).

    ``synchronous=FULL``: a verdict is acknowledged to the broker right after commit, so the commit
    must survive a power cut, not just a process crash.
    """

    def __init__(self, path: str | os.PathLike, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
            _retry_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"), busy_timeout_s)
            self._db.execute("PRAGMA synchronous=FULL")
            # IMMEDIATE: workers starting together create the schema one after the other.
            self._db.executescript("BEGIN IMMEDIATE;" + _SQLITE_SCHEMA +
                                   f"INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', "
                                   f"'{SCHEMA_VERSION}');COMMIT;")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open SQLite store ({exc})", code="store_open") from None
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {row and row[0]} is not {SCHEMA_VERSION}",
                             code="store_schema")

    def lookup(self, segment_id: str) -> StoredVerdict | None:
        try:
            with self._lock:
                row = self._db.execute("SELECT node_id, header, verdict FROM segments WHERE segment_id=?",
                                       (segment_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed ({exc})", code="store_read") from None
        return None if row is None else StoredVerdict(segment_id, row[0], _audio_sha(row[1]), row[2])

    def record(self, rec: SegmentRecord) -> bool:
        sql = f"INSERT OR IGNORE INTO segments({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        try:
            with self._lock:
                cur = self._db.execute(sql, _row(rec))
                return cur.rowcount == 1
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: commit failed ({exc})", code="store_write") from None

    def record_reject(self, rej: RejectRecord) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO rejects(received_at, topic, code, reason, nbytes, segment_id) VALUES (?,?,?,?,?,?)",
                    (rej.received_at, rej.topic[:256], rej.code[:64], rej.reason[:1024], rej.nbytes, rej.segment_id))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: commit failed ({exc})", code="store_write") from None

    def prune(self, *, audio_before: float, rejects_before: float) -> tuple[int, int]:
        try:
            with self._lock:
                a = self._db.execute("UPDATE segments SET audio=NULL, audio_codec=NULL "
                                     "WHERE audio IS NOT NULL AND received_at < ?", (audio_before,)).rowcount
                r = self._db.execute("DELETE FROM rejects WHERE received_at < ?", (rejects_before,)).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: retention pass failed ({exc})", code="store_write") from None
        return a, r

    def counts(self) -> dict[str, int]:
        (seg, acc, aud), = self.query("SELECT COUNT(*), COALESCE(SUM(accepted), 0), COUNT(audio) FROM segments")
        (rej,), = self.query("SELECT COUNT(*) FROM rejects")
        return {"segments": seg, "accepted": acc, "with_audio": aud, "rejects": rej}

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        try:
            with self._lock:
                self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                                 "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: commit failed ({exc})", code="store_write") from None

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read access for reports and tests."""
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed ({exc})", code="store_read") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------
# PostgreSQL

_PG_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS segments (
        segment_id  TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        boot_id     TEXT NOT NULL,
        seq         BIGINT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        decided_at  DOUBLE PRECISION NOT NULL,
        header      JSONB NOT NULL,
        verdict     TEXT NOT NULL,
        accepted    SMALLINT NOT NULL,
        command     TEXT,
        model_cpu_s DOUBLE PRECISION NOT NULL,
        worker      TEXT NOT NULL,
        audio_codec TEXT,
        audio       BYTEA)""",
    "CREATE INDEX IF NOT EXISTS segments_node_time ON segments(node_id, received_at)",
    "CREATE INDEX IF NOT EXISTS segments_audio_time ON segments(received_at) WHERE audio IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS rejects (
        id          BIGSERIAL PRIMARY KEY,
        received_at DOUBLE PRECISION NOT NULL,
        topic       TEXT NOT NULL,
        code        TEXT NOT NULL,
        reason      TEXT NOT NULL,
        nbytes      INTEGER NOT NULL,
        segment_id  TEXT)""",
    "CREATE INDEX IF NOT EXISTS rejects_time ON rejects(received_at)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]


class PostgresStore:
    """The same interface on PostgreSQL (psycopg 3, autocommit: each statement is its own transaction).

    The verdict is kept as TEXT, not JSONB, so a re-published verdict is byte-identical to the first.
    """

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg: pip install 'psycopg[binary]>=3.1'",
                             code="store_driver") from None
        self._psycopg = psycopg
        self._url = url
        self._lock = threading.Lock()
        try:
            self._db = self._connect()
            with self._db.transaction():
                # Serialise schema creation between workers starting together.
                self._db.execute("SELECT pg_advisory_xact_lock(7301)")
                for stmt in _PG_SCHEMA:
                    self._db.execute(stmt)
                self._db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', %s) "
                                 "ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"cannot open PostgreSQL store ({exc})".strip(), code="store_open") from None
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"schema version {row and row[0]} is not {SCHEMA_VERSION}", code="store_schema")

    def _connect(self):
        return self._psycopg.connect(self._url, autocommit=True, connect_timeout=10)

    def _run(self, sql: str, params: tuple = ()):
        try:
            with self._lock:
                # A server restart breaks the connection for good: the caller's retry gets a new one.
                if self._db.closed or self._db.broken:
                    self._db = self._connect()
                return self._db.execute(sql, params)
        except self._psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {exc}".strip(), code="store_write") from None

    def lookup(self, segment_id: str) -> StoredVerdict | None:
        row = self._run("SELECT node_id, header->>'audio_sha256', verdict FROM segments WHERE segment_id=%s",
                        (segment_id,)).fetchone()
        return None if row is None else StoredVerdict(segment_id, row[0], row[1] or "", row[2])

    def record(self, rec: SegmentRecord) -> bool:
        sql = (f"INSERT INTO segments({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
               "ON CONFLICT (segment_id) DO NOTHING")
        return self._run(sql, _row(rec)).rowcount == 1

    def record_reject(self, rej: RejectRecord) -> None:
        self._run("INSERT INTO rejects(received_at, topic, code, reason, nbytes, segment_id) "
                  "VALUES (%s,%s,%s,%s,%s,%s)",
                  (rej.received_at, rej.topic[:256], rej.code[:64], rej.reason[:1024], rej.nbytes, rej.segment_id))

    def prune(self, *, audio_before: float, rejects_before: float) -> tuple[int, int]:
        a = self._run("UPDATE segments SET audio=NULL, audio_codec=NULL "
                      "WHERE audio IS NOT NULL AND received_at < %s", (audio_before,)).rowcount
        r = self._run("DELETE FROM rejects WHERE received_at < %s", (rejects_before,)).rowcount
        return a, r

    def counts(self) -> dict[str, int]:
        seg, acc, aud = self._run(
            "SELECT COUNT(*), COALESCE(SUM(accepted), 0), COUNT(audio) FROM segments").fetchone()
        rej = self._run("SELECT COUNT(*) FROM rejects").fetchone()[0]
        return {"segments": int(seg), "accepted": int(acc), "with_audio": int(aud), "rejects": int(rej)}

    def get_meta(self, key: str) -> str | None:
        row = self._run("SELECT value FROM meta WHERE key=%s", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._run("INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value=EXCLUDED.value",
                  (key, value))

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        cur = self._run(sql.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []

    def close(self) -> None:
        with self._lock:
            self._db.close()
