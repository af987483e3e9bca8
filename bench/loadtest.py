"""Fleet load test: N simulated nodes against one mosquitto and `gate-cloud serve --workers 2` on loopback.

Each simulated node is the node's real transport (gate.transport.mqtt.MqttTransport with its own
spool, QoS 1, in-flight window, persistent session, verdict subscription); only the cascade is
skipped: the nodes publish real segments cut once from the bundled demo scenario by the node's
own cascade, each re-headered with the node's id, a fresh segment id and the send time. Running
100 cascades would measure the 2-core test machine, not the fleet path.

Judged by the books: segments made, acknowledged by the broker, stored in the cloud's SQLite (rows
per segment id) and answered on each node's verdict topic; latency is the node's publish call to
the node's receipt of the verdict.

    .venv/bin/python -m bench.loadtest --nodes 100 --segments-per-node 5 --out out/loadtest.json
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("loadtest")


# ---------------------------------------------------------------------------------------------
# Segments


def demo_segments(scenario: Path) -> list[bytes]:
    """Segments the node's cascade cuts from ``scenario`` (the shipped KWS), as framed payloads."""
    from gate.config import GateSettings
    from gate.replay import load_kws, replay_file
    from sensors.scenario import scenario_inputs

    settings = GateSettings()
    kws, why = load_kws(settings)
    if kws is None:
        raise SystemExit(f"loadtest: the node's KWS is not available: {why}")
    path, _ = scenario_inputs(scenario)
    out: list[bytes] = []

    class Capture:
        def publish_segment(self, payload: bytes, *, segment_id: str) -> None:
            out.append(payload)

    replay_file(path, settings=settings, kws=kws, publisher=Capture())
    if not out:
        raise SystemExit(f"loadtest: {scenario} produced no segment")
    return out


# ---------------------------------------------------------------------------------------------
# Fleet


@dataclass
class SimNode:
    node_id: str
    transport: object
    sent: dict[str, float] = field(default_factory=dict)  # segment id -> publish time (unix)
    verdicts: Counter = field(default_factory=Counter)
    latency: dict[str, float] = field(default_factory=dict)  # first verdict only


def start_fleet(n: int, host: str, port: int, spool_root: Path, window: int) -> list[SimNode]:
    from gate.transport.config import BrokerLink, Delivery, NodeIdentity
    from gate.transport.mqtt import MqttTransport
    from gate.transport.spool import Spool

    nodes: list[SimNode] = []
    lock = threading.Lock()
    for i in range(n):
        node_id = f"load{i:04d}"
        sim = SimNode(node_id, None)

        def on_verdict(v, sim=sim) -> None:
            now = time.time()
            with lock:
                sim.verdicts[v.segment_id] += 1
                if v.segment_id in sim.sent and v.segment_id not in sim.latency:
                    sim.latency[v.segment_id] = now - sim.sent[v.segment_id]

        # fsync off: the spool's durability is the fault tests' subject; here it would only measure the disk.
        sim.transport = MqttTransport(BrokerLink(host, port, reconnect_min_s=0.2, reconnect_max_s=2.0),
                                      NodeIdentity(node_id),
                                      Spool(spool_root / node_id, max_bytes=64 << 20, fsync=False),
                                      delivery=Delivery(window=window), on_verdict=on_verdict)
        sim.transport.start()
        nodes.append(sim)
    deadline = time.monotonic() + 60
    for sim in nodes:
        if not sim.transport.wait_ready(max(0.1, deadline - time.monotonic())):
            raise SystemExit(f"loadtest: node {sim.node_id} could not subscribe within 60 s")
    return nodes


def publish_schedule(nodes: list[SimNode], templates: list[bytes], *, per_node: int, publish_s: float,
                     deadline: float, seed: int) -> int:
    """Each node sends ``per_node`` segments evenly over ``publish_s`` from a random phase; returns how many."""
    from gate_core.wire import new_id, rewrite_header

    rng = np.random.default_rng(seed)
    interval = publish_s / per_node
    t0 = time.monotonic()
    heap = [(t0 + rng.uniform(0, interval), i, 0) for i in range(len(nodes))]
    heapq.heapify(heap)
    boot = {sim.node_id: new_id() for sim in nodes}
    made = 0
    while heap and time.monotonic() < deadline:
        due, i, k = heapq.heappop(heap)
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sim = nodes[i]
        sid = new_id()
        now = time.time()
        payload = rewrite_header(templates[(i + k) % len(templates)], node_id=sim.node_id,
                                 boot_id=boot[sim.node_id], segment_id=sid, seq=k, sent_unix=now)
        sim.sent[sid] = now
        sim.transport.publish_segment(payload, segment_id=sid)
        made += 1
        if k + 1 < per_node:
            heapq.heappush(heap, (due + interval, i, k + 1))
    return made


# ---------------------------------------------------------------------------------------------
# Cloud


def start_cloud(workdir: Path, port: int, *, workers: int, models_factory: str | None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "cloud.cli", "--log-level", "WARNING", "serve",
            "--broker", f"mqtt://127.0.0.1:{port}", "--workers", str(workers), "--db",
            f"sqlite:///{workdir / 'cloud.db'}", "--metrics-port", "0", "--client-id-prefix", "loadtest",
            "--state-dir", str(workdir / "state"), "--summary-out", str(workdir / "summary.json")]
    if models_factory:
        argv += ["--models-factory", models_factory]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logf = open(workdir / "serve.log", "ab")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = 0
        for p in (workdir / "state").glob("worker-*-*.json"):
            try:
                ready += json.loads(p.read_text())["state"] == "ready"
            except (OSError, ValueError, KeyError):
                pass
        if ready >= workers:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("loadtest: gate-cloud serve did not become ready:\n"
                     + (workdir / "serve.log").read_text(errors="replace")[-3000:])


def stop_cloud(proc: subprocess.Popen, workdir: Path) -> dict:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    try:
        return json.loads((workdir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def stored_rows(db: Path) -> Counter:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return Counter(r[0] for r in con.execute("SELECT segment_id FROM segments"))
    except sqlite3.OperationalError:
        return Counter()
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# Run


def percentiles(x: list[float]) -> dict[str, float | None]:
    if not x:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(x)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(a.max())}


def run(args: argparse.Namespace) -> dict:
    from gate.transport.broker import EmbeddedBroker

    t_start = time.monotonic()
    deadline = t_start + args.duration_s
    templates = demo_segments(args.scenario)
    with tempfile.TemporaryDirectory(prefix="gate-loadtest-") as tmp, \
            EmbeddedBroker(kind="mosquitto") as broker:
        work = Path(tmp)
        (work / "state").mkdir()
        cloud = start_cloud(work, broker.port, workers=args.workers, models_factory=args.models_factory)
        nodes: list[SimNode] = []
        try:
            nodes = start_fleet(args.nodes, broker.host, broker.port, work / "spools", args.window)
            t_pub = time.monotonic()
            made = publish_schedule(nodes, templates, per_node=args.segments_per_node, publish_s=args.publish_s,
                                    deadline=deadline, seed=args.seed)
            t_pub_end = time.monotonic()
            want = {sid for sim in nodes for sid in sim.sent}
            db = work / "cloud.db"

            def answered() -> int:
                return sum(len(sim.latency) for sim in nodes)

            while answered() < made and time.monotonic() < deadline:
                time.sleep(0.2)
            t_drained = time.monotonic()
            # A late verdict duplicate would show up shortly after the last one.
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            delivered = sum(sim.transport.stats().delivered for sim in nodes)
            pending = sum(sim.transport.stats().pending for sim in nodes)
            rows = stored_rows(db)
        finally:
            for sim in nodes:
                sim.transport.close(timeout=1.0)
            summary = stop_cloud(cloud, work)
    latencies = [v for sim in nodes for v in sim.latency.values()]
    verdict_counts = Counter()
    for sim in nodes:
        verdict_counts.update(sim.verdicts)
    answered_ids = {sid for sim in nodes for sid in sim.latency}
    busy_s = t_drained - t_pub
    result = {
        "nodes": args.nodes, "workers": args.workers, "segments_per_node": args.segments_per_node,
        "publish_s": args.publish_s, "duration_bound_s": args.duration_s,
        "templates": len(templates), "mean_segment_bytes": int(np.mean([len(t) for t in templates])),
        "made": made, "broker_acked": delivered, "node_spool_pending": pending,
        "stored": len(set(rows) & want), "stored_extra": len(set(rows) - want),
        "stored_duplicates": sum(1 for v in rows.values() if v > 1),
        "verdicts_received": len(answered_ids), "verdict_duplicates": sum(n - 1 for n in verdict_counts.values()
                                                                         if n > 1),
        "lost_before_store": len(want - set(rows)), "lost_before_verdict": len(want - answered_ids),
        "offered_rate_per_s": round(made / max(t_pub_end - t_pub, 1e-9), 2),
        "throughput_per_s": round(len(answered_ids) / max(busy_s, 1e-9), 2),
        "publish_to_verdict_s": percentiles(latencies),
        "cloud": {k: summary.get(k) for k in ("received", "accepted", "rejected", "malformed", "dedupe_hits",
                                              "errors")},
        "cloud_per_worker": {w.get("worker"): w.get("received") for w in summary.get("workers", [])},
        "cloud_latency_s": [w.get("latency_s") for w in summary.get("workers", [])],
        "wall_s": round(time.monotonic() - t_start, 1),
        "timed_out": t_drained >= deadline,
    }
    return result


def table(r: dict) -> str:
    lat = r["publish_to_verdict_s"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f} ms"

    rows = [
        ("nodes x segments", f"{r['nodes']} x {r['segments_per_node']} over {r['publish_s']:g} s, "
                             f"{r['workers']} workers"),
        ("made / broker-acked", f"{r['made']} / {r['broker_acked']}"),
        ("stored / verdicts", f"{r['stored']} / {r['verdicts_received']}"),
        ("lost (store, verdict)", f"{r['lost_before_store']}, {r['lost_before_verdict']}"),
        ("duplicates (rows, verdicts)", f"{r['stored_duplicates']}, {r['verdict_duplicates']}"),
        ("offered / throughput", f"{r['offered_rate_per_s']} / {r['throughput_per_s']} segments/s"),
        ("publish->verdict p50/p95/p99/max", f"{ms(lat['p50'])} / {ms(lat['p95'])} / {ms(lat['p99'])} / "
                                             f"{ms(lat['max'])}"),
        ("cloud received / dedupe / errors", f"{r['cloud']['received']} / {r['cloud']['dedupe_hits']} / "
                                             f"{r['cloud']['errors']}"),
        ("per worker", ", ".join(f"{k}: {v}" for k, v in r["cloud_per_worker"].items())),
        ("wall time", f"{r['wall_s']} s{' (TIMED OUT)' if r['timed_out'] else ''}"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--segments-per-node", type=int, default=5)
    p.add_argument("--publish-s", type=float, default=30.0, help="each node spreads its segments over this long")
    p.add_argument("--duration-s", type=float, default=300.0, help="hard bound on the whole run, s")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--window", type=int, default=16, help="in-flight segments per node")
    p.add_argument("--scenario", type=Path, default=ROOT / "datasets" / "demo")
    p.add_argument("--models-factory", help="module:callable for the cloud (default: the shipped models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    result = run(args)
    sys.stdout.write(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = not result["timed_out"] and result["lost_before_store"] == 0 and result["lost_before_verdict"] == 0 \
        and result["stored_duplicates"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
