"""Fault tests: real mosquitto, real `gate-node` and `gate-cloud serve` processes, real signals.

The judge is always the cloud's SQLite store: rows per segment id after the run, compared with
the ids the node made (its log, its report, or its spool on disk). "Exactly once" means every id
the node made has exactly one row and there is no other row.

The cloud runs the deterministic stand-in models (fault_helpers.fast_models): these tests are
about delivery, and the shipped models' cost would only slow them down (bench/loadtest.py runs
the real ones).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cloud_helpers import ENV, CloudService, make_segment, store_rows, wait_until
from fault_helpers import (
    ROOT,
    NodeProcess,
    burst_wav,
    node_config,
    quiet_wav,
    rss_kb,
    spool_ids,
)
from mqtt_helpers import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.slow]

FAST = "fault_helpers:fast_models"
CLOUD_CFG = "cloud:\n  reconnect_min_s: 0.1\n  reconnect_max_s: 1.0\n"


@pytest.fixture
def broker(mosquitto):
    """A real mosquitto on a free loopback port: the shared fixture, under the name these tests use."""
    return mosquitto


@pytest.fixture
def cloud_factory(tmp_path, broker):
    started: list[CloudService] = []

    def make(name: str = "cloud", **kw) -> CloudService:
        kw.setdefault("models_factory", FAST)
        kw.setdefault("config", CLOUD_CFG)
        s = CloudService(tmp_path / name, broker.port, prefix=name, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


def assert_exactly_once(rows, made: set[str], context: str = "") -> None:
    doubled = {k: n for k, n in rows.items() if n != 1}
    assert not doubled, f"stored more than once: {doubled} {context}"
    assert set(rows) == made, (f"lost {sorted(made - set(rows))}, unexpected {sorted(set(rows) - made)} "
                               f"{context}")


# ---------------------------------------------------------------------------------------------


def _replay_through_a_broker_kill(tmp_path, broker, cloud, *, node_reconnect_s: float,
                                  verdict_wait_s: float) -> tuple[dict, set[str]]:
    """`gate-node replay --realtime` of 8 s (4 segments); the broker is SIGKILLed after the 2nd is stored
    and started again 1.5 s later. Returns (report, ids the node made)."""
    wav = burst_wav(tmp_path / "bursts.wav", seconds=8.0, every_s=1.6)
    cfg = node_config(tmp_path / "node.yaml", spool_dir=tmp_path / "unused",
                      reconnect_s=(node_reconnect_s, node_reconnect_s))
    report = tmp_path / "report.json"
    replay = subprocess.Popen(
        [sys.executable, "-m", "gate.cli", "--config", str(cfg), "replay", str(wav), "--realtime", "--quiet",
         "--broker", f"mqtt://127.0.0.1:{broker.port}", "--verdict-wait", str(verdict_wait_s), "--report", str(report)],
        cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: len(store_rows(cloud.db)) >= 2, 30), cloud.log()
        broker.stop(hard=True)  # SIGKILL: no goodbye, no final save
        time.sleep(1.5)  # segments made meanwhile wait in the node's spool
        broker.start()
        out, _ = replay.communicate(timeout=90)
    finally:
        if replay.poll() is None:
            replay.kill()
    assert replay.returncode == 0, out.decode(errors="replace")[-3000:]
    r = json.loads(report.read_text())
    made = {d["segment_id"] for d in r["detections"]}
    assert len(made) == 4
    # The broker acknowledged every segment: the node's spool is empty, whatever the cloud got.
    assert r["radio"]["delivered"] >= 4 and r["radio"]["pending"] == 0
    wait_until(lambda: set(store_rows(cloud.db)) >= made, 3)
    return r, made


def test_broker_killed_mid_replay_every_segment_stored_once(tmp_path, broker, cloud_factory):
    """The cloud reconnects (<= 1 s) before the node (5 s): every segment is stored and answered once."""
    cloud = cloud_factory()
    r, made = _replay_through_a_broker_kill(tmp_path, broker, cloud, node_reconnect_s=5.0, verdict_wait_s=20)
    assert_exactly_once(store_rows(cloud.db), made)
    # Every segment was also answered, across the outage, on the node's persistent session.
    assert all(d["verdict"] is not None and d["verdict"]["rejected_code"] is None for d in r["detections"])
    rc, summary = cloud.stop()
    assert rc == 0 and summary["malformed"] == 0 and summary["errors"] == 0


def test_broker_restart_with_the_node_back_before_the_cloud_loses_nothing(tmp_path, broker, cloud_factory):
    """The node reconnects within 0.1 s, the cloud only after 4 s: what the node sends in between is lost."""
    cloud = cloud_factory(config="cloud:\n  reconnect_min_s: 4.0\n  reconnect_max_s: 4.0\n")
    _, made = _replay_through_a_broker_kill(tmp_path, broker, cloud, node_reconnect_s=0.1, verdict_wait_s=3)
    assert_exactly_once(store_rows(cloud.db), made)


def test_node_killed_with_a_full_spool_delivers_it_once_after_restart(tmp_path, broker, cloud_factory):
    cloud = cloud_factory()
    broker.stop()  # the cloud's session stays in the broker's persistence
    spool = tmp_path / "spool"
    cfg = node_config(tmp_path / "node.yaml", spool_dir=spool)
    first = NodeProcess(cfg, burst_wav(tmp_path / "bursts.wav", seconds=12.0, every_s=1.5), broker.port,
                        tmp_path / "node1.log")
    try:
        assert wait_until(lambda: len(spool_ids(spool)) >= 3, 30), first.log()[-3000:]
    finally:
        first.kill()
    spooled = set(spool_ids(spool))
    logged = set(first.segment_ids())
    assert logged <= spooled, "a segment was logged before it was durably spooled"

    broker.start()
    # Paced, so the input lasts until the transport has connected: close() flushes only a connected transport.
    second = NodeProcess(cfg, quiet_wav(tmp_path / "quiet.wav", seconds=3.0), broker.port,
                         tmp_path / "node2.log")
    assert second.wait(60) == 0, second.log()[-3000:]
    assert second.segment_ids() == [] and spool_ids(spool) == []
    assert wait_until(lambda: set(store_rows(cloud.db)) >= spooled, 30), cloud.log()
    assert_exactly_once(store_rows(cloud.db), spooled)


def test_node_killed_mid_stream_while_connected_nothing_lost_nothing_doubled(tmp_path, broker, cloud_factory):
    cloud = cloud_factory()
    spool = tmp_path / "spool"
    cfg = node_config(tmp_path / "node.yaml", spool_dir=spool)
    first = NodeProcess(cfg, burst_wav(tmp_path / "bursts.wav", seconds=12.0, every_s=1.5), broker.port,
                        tmp_path / "node1.log")
    try:
        assert wait_until(lambda: len(store_rows(cloud.db)) >= 3, 30), first.log()[-3000:]
    finally:
        first.kill()
    made = set(first.segment_ids()) | set(spool_ids(spool))
    second = NodeProcess(cfg, quiet_wav(tmp_path / "quiet.wav", seconds=1.0), broker.port,
                         tmp_path / "node2.log", realtime=False)
    assert second.wait(60) == 0, second.log()[-3000:]
    assert wait_until(lambda: set(store_rows(cloud.db)) >= made, 30), cloud.log()
    assert_exactly_once(store_rows(cloud.db), made)


def test_cloud_worker_killed_the_restarted_worker_takes_over(tmp_path, broker, cloud_factory):
    from gate.transport.config import BrokerLink, NodeIdentity
    from gate.transport.mqtt import MqttTransport
    from gate.transport.spool import Spool

    cloud = cloud_factory(workers=2)
    verdicts: dict[str, int] = {}
    lock = threading.Lock()

    def on_verdict(v) -> None:
        with lock:
            verdicts[v.segment_id] = verdicts.get(v.segment_id, 0) + 1

    t = MqttTransport(BrokerLink(broker.host, broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5),
                      NodeIdentity("n1"), Spool(tmp_path / "spool", max_bytes=64 << 20, fsync=False),
                      on_verdict=on_verdict)
    t.start()
    made = set()
    try:
        assert t.wait_ready(10)
        for i in range(60):
            if i == 20:
                assert wait_until(lambda: len(store_rows(cloud.db)) >= 10, 20), cloud.log()
                os.kill(cloud.pid_of(0), 9)
            h, payload = make_segment(node="n1", seconds=0.5, codec="pcm_s16le", seed=i, seq=i,
                                      sent_unix=time.time())
            t.publish_segment(payload, segment_id=h.segment_id)
            made.add(h.segment_id)
            time.sleep(0.02)
        assert t.flush(20)
        assert wait_until(lambda: set(verdicts) >= made, 60), (len(verdicts), cloud.log())
    finally:
        t.close()
    assert_exactly_once(store_rows(cloud.db), made)
    rc, summary = cloud.stop()
    assert rc == 0 and summary["restarts"]["0"] >= 1


def test_slow_consumer_memory_stays_bounded_and_nothing_is_lost(tmp_path, broker, cloud_factory):
    from gate.transport.config import BrokerLink, Delivery, NodeIdentity
    from gate.transport.mqtt import MqttTransport
    from gate.transport.spool import Spool

    n, window = 120, 8
    cloud = cloud_factory(models_factory="fault_helpers:slow_models",
                          config=CLOUD_CFG + "  receive_maximum: 4\n")
    worker = cloud.pid_of(0)
    got: set[str] = set()
    t = MqttTransport(BrokerLink(broker.host, broker.port), NodeIdentity("n1"),
                      Spool(tmp_path / "spool", max_bytes=64 << 20, fsync=False), delivery=Delivery(window=window),
                      on_verdict=lambda v: got.add(v.segment_id))
    t.start()
    made, inflight, rss = set(), [], [rss_kb(worker)]
    try:
        assert t.wait_ready(10)
        for i in range(n):
            h, payload = make_segment(node="n1", seconds=1.0, codec="pcm_s16le", seed=i, seq=i)
            t.publish_segment(payload, segment_id=h.segment_id)
            made.add(h.segment_id)
            inflight.append(t.stats().inflight)
        # The broker, not the node, absorbs the slow consumer: the spool empties long before the cloud is done.
        assert t.flush(20)
        backlog = n - len(got)
        deadline = time.monotonic() + 60
        while set(got) < made and time.monotonic() < deadline:
            rss.append(rss_kb(worker))
            time.sleep(0.2)
    finally:
        t.close()
    assert max(inflight) <= window
    assert backlog > n // 2, "the consumer was not slow: the test proves nothing"
    assert got == made
    # receive_maximum bounds what the worker holds: 120 x 32 kB would be ~4 MB; allow noise, not the backlog.
    assert max(rss) - rss[0] < 30_000, (rss[0], max(rss))
    assert_exactly_once(store_rows(cloud.db), made)


def test_spool_bound_drops_the_oldest_counts_and_reports_the_losses(tmp_path, broker, cloud_factory):
    cloud = cloud_factory()
    broker.stop()
    spool = tmp_path / "spool"
    # 6 segments of ~23 kB against a 50 kB bound: the last two survive.
    cfg = node_config(tmp_path / "node.yaml", spool_dir=spool, spool_max_mb=0.05, flush_timeout_s=0.5)
    first = NodeProcess(cfg, burst_wav(tmp_path / "bursts.wav", seconds=12.0, every_s=2.0), broker.port,
                        tmp_path / "node1.log", realtime=False)
    assert first.wait(60) == 0, first.log()[-3000:]
    made = first.segment_ids()
    kept = spool_ids(spool)
    assert len(made) == 6 and kept == made[-len(kept):] and 1 <= len(kept) < 6
    disk = sum(p.stat().st_size for p in spool.glob("*.seg"))
    assert disk <= 0.05 * 2**20 + 100 * len(kept)  # the bound counts payloads; headers are ~40 B each
    drops = [ln for ln in first.log().splitlines() if "spool full" in ln]
    assert len(drops) == 6 - len(kept), "every loss is logged, with its count"
    assert f"{6 - len(kept)} dropped so far" in drops[-1]

    broker.start()
    second = NodeProcess(cfg, quiet_wav(tmp_path / "quiet.wav", seconds=1.0), broker.port,
                         tmp_path / "node2.log", realtime=False)
    assert second.wait(60) == 0, second.log()[-3000:]
    assert wait_until(lambda: set(store_rows(cloud.db)) >= set(kept), 30), cloud.log()
    assert_exactly_once(store_rows(cloud.db), set(kept))


def _tmpfs(path: Path, size: str) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_spool_on_a_full_disk_keeps_the_node_running_and_counts_the_losses(tmp_path, broker):
    disk = tmp_path / "small"
    if not _tmpfs(disk, "96k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        broker.stop()
        # The configured bound (64 MB) is far above what the disk holds: the disk fills first.
        cfg = node_config(tmp_path / "node.yaml", spool_dir=disk / "spool", flush_timeout_s=0.5)
        node = NodeProcess(cfg, burst_wav(tmp_path / "bursts.wav", seconds=12.0, every_s=2.0), broker.port,
                           tmp_path / "node.log", realtime=False)
        rc = node.wait(60)
        log = node.log()
        assert rc == 0 and "Traceback" not in log, log[-2000:]
        assert len(node.segment_ids()) == 6
        assert 1 <= len(spool_ids(disk / "spool")) < 6
        assert not list((disk / "spool").glob(".*.tmp")), "a failed write left its temporary file behind"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_spool_bytes_on_disk_never_exceed_the_bound_under_a_burst(tmp_path):
    """No broker at all: 200 segments into a 1 MB spool; disk use and memory stay bounded, losses counted."""
    from gate.transport.spool import Spool

    spool = Spool(tmp_path / "spool", max_bytes=1 << 20, fsync=False)
    payload = np.random.default_rng(0).bytes(30_000)
    peak = 0
    for i in range(200):
        spool.put(payload, key=f"{i:032x}")
        peak = max(peak, sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.seg")))
    st = spool.stats()
    assert st.pending == (1 << 20) // 30_000 and st.dropped == 200 - st.pending
    assert peak <= (1 << 20) + 64 * st.pending
