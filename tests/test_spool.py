import errno
import logging
import os
import shutil
import subprocess

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


def _disk_holding(spool: Spool, n: int, *, err: int = errno.ENOSPC):
    """A writer for ``spool`` on a disk with room for ``n`` entries: past that, a partial temporary
    file is written and the write fails with ``err``, as a real full disk does."""
    real = spool._write

    def write(tmp, path, blob):
        if len(spool._entries) >= n:  # called under the spool lock
            tmp.write_bytes(blob[: len(blob) // 2])
            raise OSError(err, os.strerror(err))
        real(tmp, path, blob)

    return write


def test_a_full_disk_drops_the_oldest_like_the_bound_and_leaves_no_temporary_file(tmp_path, monkeypatch, caplog):
    spool = Spool(tmp_path, max_bytes=1 << 20)  # the bound is far away: the disk fills first
    monkeypatch.setattr(spool, "_write", _disk_holding(spool, 3))
    with caplog.at_level(logging.WARNING, logger="gate.transport.spool"):
        for i in range(6):
            spool.put(b"d" * 100, key=f"s{i}")
    assert keys(spool) == ["s3", "s4", "s5"]
    assert spool.stats().dropped == 3 and spool.stats().failed == 0
    full = [r.getMessage() for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 3 and "3 dropped so far" in full[-1]
    assert not list(tmp_path.glob(".*.tmp")) and len(list(tmp_path.glob("*.seg"))) == 3


def test_a_disk_with_no_room_at_all_or_a_write_error_raises_a_spool_error(tmp_path, monkeypatch):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.put(b"a" * 10, key="a")
    spool.put(b"b" * 10, key="b")
    monkeypatch.setattr(spool, "_write", _disk_holding(spool, 0))
    with pytest.raises(SpoolError) as err:
        spool.put(b"c" * 10, key="c")
    # Everything droppable went first; then the loss is counted and reported, not an OSError.
    assert err.value.code == "spool_write" and isinstance(err.value.__cause__, OSError)
    assert len(spool) == 0 and spool.stats().dropped == 2 and spool.stats().failed == 1
    assert not list(tmp_path.glob(".*.tmp"))

    other = Spool(tmp_path / "eio", max_bytes=1 << 20)
    other.put(b"a" * 10, key="a")
    monkeypatch.setattr(other, "_write", _disk_holding(other, 0, err=errno.EIO))
    with pytest.raises(SpoolError) as err:
        other.put(b"c" * 10, key="c")
    assert err.value.code == "spool_write"
    assert keys(other) == ["a"] and other.stats().dropped == 0  # not a full disk: nothing is sacrificed
    assert not list((tmp_path / "eio").glob(".*.tmp"))
    monkeypatch.undo()
    assert other.put(b"d" * 10, key="d").key == "d"  # the spool still works once the disk does


def _tmpfs(path, size: str) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk(tmp_path):
    disk = tmp_path / "small"
    if not _tmpfs(disk, "64k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        spool = Spool(disk / "spool", max_bytes=1 << 20)
        for i in range(8):
            spool.put(bytes([i]) * 12_000, key=f"s{i}")
        st = spool.stats()
        assert 1 <= st.pending < 8 and st.dropped == 8 - st.pending and keys(spool)[-1] == "s7"
        assert not list((disk / "spool").glob(".*.tmp"))
        again = Spool(disk / "spool", max_bytes=1 << 20)
        assert keys(again) == keys(spool)  # what survived is intact
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
