"""The verdict store: one contract, run on SQLite (always) and PostgreSQL (when a server can be started here)."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import pytest

from cloud.store import SCHEMA_VERSION, RejectRecord, SegmentRecord, SQLiteStore, StoreError, open_store


def record(segment_id: str, *, received_at: float = 100.0, audio: bytes | None = b"fLaC...", sha: str = "ab" * 32,
           node: str = "n1") -> SegmentRecord:
    header = json.dumps({"segment_id": segment_id, "node_id": node, "audio_sha256": sha})
    verdict = json.dumps({"segment_id": segment_id, "accepted": True})
    return SegmentRecord(segment_id=segment_id, node_id=node, boot_id="b" * 32, seq=1, received_at=received_at,
                         decided_at=received_at + 0.01, header=header, verdict=verdict, accepted=True,
                         command="lights_on", model_cpu_s=0.004, worker="w0",
                         audio_codec="flac" if audio else None, audio=audio)


def _sid(i: int) -> str:
    return f"{i:032x}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/store.db")
    else:
        url = request.getfixturevalue("pg_url")
        s = open_store(url)
        s.query("TRUNCATE segments, rejects")
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------
# The contract


def test_record_then_lookup(store):
    assert store.lookup(_sid(1)) is None
    assert store.record(record(_sid(1))) is True
    got = store.lookup(_sid(1))
    assert got.node_id == "n1" and got.audio_sha256 == "ab" * 32
    assert json.loads(got.verdict) == {"segment_id": _sid(1), "accepted": True}
    assert store.counts() == {"segments": 1, "accepted": 1, "with_audio": 1, "rejects": 0}


def test_second_record_of_a_segment_id_is_refused_and_the_first_kept(store):
    assert store.record(record(_sid(2), sha="cd" * 32))
    assert store.record(record(_sid(2), sha="ef" * 32)) is False
    assert store.lookup(_sid(2)).audio_sha256 == "cd" * 32
    assert store.counts()["segments"] == 1


def test_retention_drops_old_audio_and_rejects_only(store):
    store.record(record(_sid(3), received_at=10.0))
    store.record(record(_sid(4), received_at=1000.0))
    store.record(record(_sid(5), received_at=10.0, audio=None))
    store.record_reject(RejectRecord(received_at=10.0, topic="gate/n1/segments", code="wire_audio", reason="x",
                                     nbytes=3))
    store.record_reject(RejectRecord(received_at=1000.0, topic="gate/n1/segments", code="wire_audio", reason="y",
                                     nbytes=3, segment_id=_sid(9)))
    assert store.prune(audio_before=500.0, rejects_before=500.0) == (1, 1)
    assert store.counts() == {"segments": 3, "accepted": 3, "with_audio": 1, "rejects": 1}
    assert store.lookup(_sid(3)) is not None  # the verdict outlives its audio


def test_hostile_reject_fields_are_bounded(store):
    store.record_reject(RejectRecord(received_at=1.0, topic="t" * 10_000, code="c" * 500, reason="r" * 100_000,
                                     nbytes=1))
    (topic, code, reason), = store.query("SELECT topic, code, reason FROM rejects")
    assert len(topic) == 256 and len(code) == 64 and len(reason) == 1024


# ---------------------------------------------------------------------------------------------
# SQLite specifics


def _writer(path: str, start: int, n: int) -> None:
    s = SQLiteStore(path)
    for i in range(start, start + n):
        s.record(record(_sid(i), audio=None))
    s.close()


def test_sqlite_is_wal_and_shared_by_processes(tmp_path):
    path = str(tmp_path / "shared.db")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 1000, 50)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = SQLiteStore(path)
    try:
        assert s.query("PRAGMA journal_mode") == [("wal",)]
        assert s.counts()["segments"] == 100
    finally:
        s.close()


def test_sqlite_refuses_another_schema_version(tmp_path):
    path = tmp_path / "old.db"
    SQLiteStore(path).close()
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError) as e:
        SQLiteStore(path)
    assert e.value.code == "store_schema"


def test_unusable_urls_and_paths_fail_clearly(tmp_path):
    with pytest.raises(StoreError) as e:
        open_store("mysql://x")
    assert e.value.code == "store_url"
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError) as e:
        SQLiteStore(tmp_path / "dir.db")
    assert e.value.code == "store_open"


def test_postgres_unreachable_fails_clearly():
    pytest.importorskip("psycopg")
    from gate.transport.broker import free_port

    t = time.monotonic()
    with pytest.raises(StoreError) as e:
        open_store(f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2")
    assert e.value.code == "store_open" and time.monotonic() - t < 15


def test_postgres_store_reconnects_after_a_server_restart(pg_server):
    store = open_store(pg_server.url)
    try:
        store.record(record(_sid(77)))
        pg_server.restart()
        # The first statement finds the connection broken (the worker retries it); the next reconnects.
        for _ in range(3):
            try:
                assert store.lookup(_sid(77)) is not None
                break
            except StoreError as exc:
                assert exc.code == "store_write"
        else:
            pytest.fail("store never reconnected")
    finally:
        store.close()
