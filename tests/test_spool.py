import logging

import pytest

from gate.transport.config import MqttConfig
from gate.transport.spool import QUARANTINE, Spool, SpoolError


def keys(spool: Spool) -> list[str]:
    return [e.key for e in spool.pending()]


def test_fifo_and_ack_removes_the_file(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    entries = [spool.put(bytes([i]) * 100, key=f"s{i}") for i in range(5)]
    assert keys(spool) == ["s0", "s1", "s2", "s3", "s4"]
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    assert spool.read(entries[2]) == bytes([2]) * 100
    assert spool.ack(entries[0].seq) and not entries[0].path.exists()
    assert not spool.ack(entries[0].seq)
    assert keys(spool) == ["s1", "s2", "s3", "s4"]
    assert spool.stats().pending_bytes == 400
    assert spool.pending(limit=2) == entries[1:3]


def test_survives_a_restart_in_order(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    for i in range(4):
        spool.put(b"x" * (i + 1), key=f"s{i}")
    spool.ack(spool.pending()[0].seq)
    (tmp_path / ".00000000000000000099.tmp").write_bytes(b"half a write")
    again = Spool(tmp_path, max_bytes=10_000)
    assert keys(again) == ["s1", "s2", "s3"]
    assert again.stats().pending_bytes == 2 + 3 + 4
    assert not list(tmp_path.glob("*.tmp"))
    new = again.put(b"y", key="s4")
    assert new.seq > again.pending()[-2].seq  # numbering continues after the survivors
    assert keys(again)[-1] == "s4"


def test_bound_drops_the_oldest_with_a_counted_warning(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=1000)
    with caplog.at_level(logging.WARNING, logger="gate.transport.spool"):
        for i in range(12):
            spool.put(b"z" * 100, key=f"s{i}")
    assert keys(spool) == [f"s{i}" for i in range(2, 12)]
    assert spool.stats().dropped == 2 and spool.stats().pending_bytes == 1000
    assert sum("dropped oldest segment" in r.getMessage() for r in caplog.records) == 2
    assert len(list(tmp_path.glob("*.seg"))) == 10
    with pytest.raises(SpoolError) as err:
        spool.put(b"z" * 1001, key="huge")
    assert err.value.code == "spool_too_large"


def test_corrupt_files_are_quarantined_not_fatal(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=10_000)
    a = spool.put(b"a" * 50, key="a")
    b = spool.put(b"b" * 50, key="b")
    c = spool.put(b"c" * 50, key="c")
    raw = bytearray(b.path.read_bytes())
    raw[-1] ^= 0xFF
    b.path.write_bytes(bytes(raw))
    (tmp_path / "garbage.seg").write_bytes(b"??")
    (tmp_path / "00000000000000000007.seg").write_bytes(b"GSP1")
    with caplog.at_level(logging.WARNING):
        again = Spool(tmp_path, max_bytes=10_000)
    assert keys(again) == ["a", "c"]
    assert again.stats().quarantined == 3
    assert sorted(p.name for p in (tmp_path / QUARANTINE).iterdir()) == sorted(
        [b.path.name, "garbage.seg", "00000000000000000007.seg"])
    # Corruption after the scan is caught on read.
    c.path.write_bytes(c.path.read_bytes()[:-3])
    entries = again.pending()
    assert again.read(entries[0]) == b"a" * 50
    assert again.read(entries[1]) is None
    assert keys(again) == ["a"] and again.stats().quarantined == 4
    assert a.key == "a"


def test_a_vanished_file_reads_as_none(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    e = spool.put(b"q", key="q")
    e.path.unlink()
    assert spool.read(e) is None and len(spool) == 0


def test_from_config(tmp_path):
    cfg = MqttConfig(spool_dir=str(tmp_path / "sp"), spool_max_mb=0.5)
    spool = Spool.from_config(cfg)
    assert spool.max_bytes == 512 * 1024 and spool.directory.is_dir()
