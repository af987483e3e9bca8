"""`gate-cloud serve` on loopback: segments per second per worker and node-publish -> verdict latency.

A real mosquitto on a free port and real worker processes running the shipped models. Throughput
is a burst of segments drained by one worker (first publish -> last verdict); latency is measured
at the node (publish -> verdict received) with segments paced well below capacity, so it is the
service's latency and not queueing. The broker runs with ``set_tcp_nodelay true``: without it
mosquitto's Nagle/delayed-ACK interplay adds about 40 ms to every verdict on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gate.segmenter import SegmenterConfig  # noqa: E402

SEGMENT_S = SegmenterConfig().segment_s

BURST = 150
PACED = 60
PACE_HZ = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _audio(tmp: Path) -> tuple[np.ndarray, float]:
    """A spoken wake phrase + command when espeak-ng is there (so the command model runs too), else noise."""
    import soundfile as sf
    from scipy.signal import resample_poly

    n = int(SEGMENT_S * 16_000)  # what a node sends by default: pre-roll, wake phrase, command window
    base = np.zeros(n, np.float32)
    detect_s = 1.2
    if shutil.which("espeak-ng"):
        parts = []
        for text in ("hey jarvis", "turn on the lights"):
            wav = tmp / f"{len(parts)}.wav"
            subprocess.run(["espeak-ng", "-s", "160", "-w", str(wav), text], check=True, timeout=30)
            x, sr = sf.read(wav, dtype="float32")
            parts.append(resample_poly(x, 16_000, sr).astype(np.float32))
        a = 8_000
        base[a:a + parts[0].size] = parts[0][: n - a]
        detect_s = (a + parts[0].size) / 16_000
        b = a + parts[0].size
        base[b:b + parts[1].size] = parts[1][: max(0, n - b)]
    return base, detect_s


class _Node:
    """Publishes segments and times each verdict's arrival (paho, like a node)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        self.c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-node")
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("gate/+/verdict", qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("bench node could not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        sid = json.loads(msg.payload)["segment_id"]
        with self.cond:
            self.arrived.setdefault(sid, time.time())
            self.cond.notify_all()

    def wait(self, ids: list[str], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: all(i in self.arrived for i in ids), timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _segments(n: int, base: np.ndarray, detect_s: float, seed: int) -> list[tuple[str, bytes]]:
    from gate_core.wire import SegmentHeader, new_id, pcm_sha256

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = np.clip(base * 20_000 + rng.standard_normal(base.size) * 200, -32768, 32767).astype(np.int16)
        h = SegmentHeader(node_id=f"bench{i % 8}", boot_id=new_id(), segment_id=new_id(), seq=i, t_start_s=0.0,
                          t_end_s=x.size / 16_000, t_detect_s=detect_s, scores={"kws": 0.9}, sample_rate=16_000,
                          codec="flac", n_samples=int(x.size), audio_sha256=pcm_sha256(x))
        out.append((h, x))
    return out


def _publish(node: _Node, segs, *, pace_hz: float | None) -> tuple[list[str], dict[str, float]]:
    from gate_core.wire import encode_segment

    ids, sent = [], {}
    for h, x in segs:
        t = time.time()
        payload = encode_segment(h.model_copy(update={"sent_unix": t}), x)
        sent[h.segment_id] = t
        node.c.publish(f"gate/{h.node_id}/segments", payload, qos=1).wait_for_publish(10)
        ids.append(h.segment_id)
        if pace_hz:
            time.sleep(max(0.0, 1.0 / pace_hz - (time.time() - t)))
    return ids, sent


def _serve(tmp: Path, port: int, workers: int, name: str) -> tuple[subprocess.Popen, Path]:
    state = tmp / name
    state.mkdir()
    summary = tmp / f"{name}.json"
    argv = [sys.executable, "-m", "cloud.cli", "serve", "--broker", f"mqtt://127.0.0.1:{port}",
            "--workers", str(workers), "--db", f"sqlite:///{tmp}/cloud.db", "--metrics-port", "0",
            # One prefix and database for every run: going from 2 workers to 1 retires index 1's session.
            "--client-id-prefix", "bench", "--state-dir", str(state), "--summary-out", str(summary),
            "--config", str(tmp / "cloud.yaml")]
    factory = os.environ.get("GATE_BENCH_CLOUD_MODELS_FACTORY")  # e.g. a stand-in, to time the transport alone
    if factory:
        argv += ["--models-factory", factory]
    log = open(tmp / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group, so a failed run leaves no worker behind
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = 0
        for p in state.glob("worker-*.json"):
            try:
                ready += json.loads(p.read_text())["state"] == "ready"
            except (OSError, ValueError, KeyError):
                pass
        if ready >= workers:
            return proc, summary
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    raise RuntimeError(f"service did not start:\n{(tmp / f'{name}.log').read_text()[-2000:]}")


def _stop(proc: subprocess.Popen, summary: Path) -> dict:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return json.loads(summary.read_text())


def _throughput(tmp, port, node, base, detect_s, workers: int) -> tuple[float, dict]:
    from gate_core.wire import encode_segment

    proc, summary_path = _serve(tmp, port, workers, f"burst{workers}")
    try:
        # Encoded up front, so the publisher's FLAC encoding does not pace the workers.
        burst = [(h, encode_segment(h, x)) for h, x in _segments(BURST, base, detect_s, seed=workers)]
        t0 = time.time()
        ids = []
        for h, payload in burst:
            node.c.publish(f"gate/{h.node_id}/segments", payload, qos=1).wait_for_publish(10)
            ids.append(h.segment_id)
        if not node.wait(ids, 300):
            raise RuntimeError(f"{sum(i in node.arrived for i in ids)} of {len(ids)} verdicts arrived")
        elapsed = max(node.arrived[i] for i in ids) - t0
    finally:
        summary = _stop(proc, summary_path)
    return len(ids) / elapsed, summary


def run() -> dict:
    mosquitto = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
    if mosquitto is None:
        return {"skipped": "mosquitto is not installed"}
    models = [ROOT / "cloud" / "models" / "verifier.tflite", ROOT / "cloud" / "models" / "commands.tflite"]
    stand_in = os.environ.get("GATE_BENCH_CLOUD_MODELS_FACTORY")
    if not stand_in and not all(p.is_file() for p in models):
        return {"skipped": "cloud models not trained yet (cloud/models/verifier.tflite, commands.tflite)"}
    with tempfile.TemporaryDirectory(prefix="gate-bench-cloud-") as d:
        tmp = Path(d)
        port = _free_port()
        # Every segment accepted, so every segment also runs the command model: the worst case per segment.
        (tmp / "cloud.yaml").write_text("cloud:\n  verifier_threshold: 1.0e-9\n")
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "max_queued_messages 100000\nset_tcp_nodelay true\n")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            node = _Node(port)
            base, detect_s = _audio(tmp)
            try:
                rate1, s1 = _throughput(tmp, port, node, base, detect_s, workers=1)
                rate2, _ = _throughput(tmp, port, node, base, detect_s, workers=2)
                proc, summary_path = _serve(tmp, port, 1, "paced")
                try:
                    ids, sent = _publish(node, _segments(PACED, base, detect_s, seed=9), pace_hz=PACE_HZ)
                    if not node.wait(ids, 60):
                        raise RuntimeError("paced verdicts missing")
                finally:
                    paced = _stop(proc, summary_path)
            finally:
                node.close()
        finally:
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)
    lat = np.array([node.arrived[i] - sent[i] for i in ids]) * 1000.0
    w = s1["workers"][0]
    e = s1["energy"]
    return {
        "models": stand_in or "shipped cloud/models (verifier + commands, TFLite float), both run on every segment",
        "segment_s": SEGMENT_S,
        "segments_per_s_per_worker": round(rate1, 2),
        "segments_per_s_per_worker_target": 25.0,
        "segments_per_s_2_workers": round(rate2, 2),
        "latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "latency_p95_ms": round(float(np.percentile(lat, 95)), 2),
        "latency_p95_ms_max": 250.0,
        "latency_paced_hz": PACE_HZ,
        "model_cpu_ms_p50": round(1000 * (w["model_s"]["p50"] or 0.0), 3),
        "accepted_fraction": round(s1["accepted"] / max(1, s1["accepted"] + s1["rejected"]), 3),
        "cloud_j_per_segment": e["j_per_segment"],
        "cloud_j_per_audio_s": e["j_per_audio_s"],
        "server_power": "3.5 W per busy vCPU x PUE 1.58 (CCF AWS average; Uptime Institute 2023)",
        "paced_worker_latency_p50_ms": round(1000 * (paced["workers"][0]["latency_s"]["p50"] or 0.0), 2),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
