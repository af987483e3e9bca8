"""Service metrics: Prometheus exposition and a JSON summary from one set of counters.

Each worker owns a private registry (no global state, so tests and several workers in one
interpreter never collide) and serves ``/metrics``, ``/summary.json`` and ``/healthz`` on its own
port. Latency percentiles in the summary are exact over the most recent ``window`` segments; the
Prometheus histogram is for aggregation across workers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MODEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServiceMetrics:
    def __init__(self, *, worker: str, window: int = 10_000) -> None:
        self.worker = worker
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("gate_cloud_messages_received", "Messages taken from the broker", registry=r)
        self.accepted = Counter("gate_cloud_segments_accepted", "Segments the verifier accepted", registry=r)
        self.rejected = Counter("gate_cloud_segments_rejected", "Segments the verifier rejected", registry=r)
        self.malformed = Counter("gate_cloud_messages_malformed", "Messages refused before the models, by code",
                                 ["code"], registry=r)
        self.dedupe_hits = Counter("gate_cloud_dedupe_hits", "Redelivered segments answered from the store",
                                   registry=r)
        self.errors = Counter("gate_cloud_errors", "Internal failures (the message stays unacknowledged)",
                              ["stage"], registry=r)
        self.audio_s = Counter("gate_cloud_audio_seconds", "Audio seconds run through the models", registry=r)
        self.latency = Histogram("gate_cloud_latency_seconds", "Node publish (sent_unix) to verdict published",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.model_time = Histogram("gate_cloud_model_seconds", "Model inference time per segment (thread CPU)",
                                    ["model"], buckets=MODEL_BUCKETS, registry=r)
        self.connected = Gauge("gate_cloud_broker_connected", "1 while connected to the broker", registry=r)
        self.reconnects = Counter("gate_cloud_broker_connects", "Broker connections made", registry=r)
        self.energy_j = Gauge("gate_cloud_energy_joules", "Process energy so far (CPU s x W/core x PUE)",
                              registry=r)
        self.cpu_s = Gauge("gate_cloud_cpu_seconds", "Process CPU time so far", registry=r)
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self._model_s: deque[float] = deque(maxlen=window)
        self._counts = {"received": 0, "accepted": 0, "rejected": 0, "malformed": 0, "dedupe_hits": 0, "errors": 0}
        self._malformed_by_code: dict[str, int] = {}

    # Updates keep the JSON counters beside the Prometheus ones, so the summary never has to parse
    # the exposition format.

    def _inc(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def on_received(self) -> None:
        self.received.inc()
        self._inc("received")

    def on_verdict(self, accepted: bool) -> None:
        (self.accepted if accepted else self.rejected).inc()
        self._inc("accepted" if accepted else "rejected")

    def on_malformed(self, code: str) -> None:
        self.malformed.labels(code=code).inc()
        with self._lock:
            self._counts["malformed"] += 1
            self._malformed_by_code[code] = self._malformed_by_code.get(code, 0) + 1

    def on_dedupe(self) -> None:
        self.dedupe_hits.inc()
        self._inc("dedupe_hits")

    def on_error(self, stage: str) -> None:
        self.errors.labels(stage=stage).inc()
        self._inc("errors")

    def on_models(self, timings: dict[str, float], audio_s: float) -> None:
        for name, s in timings.items():
            self.model_time.labels(model=name).observe(s)
        self.audio_s.inc(audio_s)
        with self._lock:
            self._model_s.append(sum(timings.values()))

    def on_latency(self, seconds: float) -> None:
        self.latency.observe(seconds)
        with self._lock:
            self._latencies.append(seconds)

    def bind_energy(self, process_reading: Callable[[], Any]) -> None:
        self.energy_j.set_function(lambda: process_reading().joules)
        self.cpu_s.set_function(lambda: process_reading().cpu_s)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
            by_code = dict(sorted(self._malformed_by_code.items()))
            lat = np.asarray(self._latencies, dtype=float)
            mod = np.asarray(self._model_s, dtype=float)
        return {**counts, "malformed_by_code": by_code, "latency_s": _percentiles(lat),
                "model_s": _percentiles(mod)}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _percentiles(x: np.ndarray) -> dict[str, float | int | None]:
    if x.size == 0:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    p50, p95 = np.percentile(x, [50, 95])
    return {"n": int(x.size), "p50": float(p50), "p95": float(p95), "max": float(x.max())}


class MetricsServer:
    """``/metrics`` (Prometheus), ``/summary.json`` and ``/healthz`` on ``host:port`` (0 = a free port)."""

    def __init__(self, *, host: str, port: int, metrics: ServiceMetrics,
                 summary: Callable[[], dict[str, Any]], healthy: Callable[[], bool]) -> None:
        handler = _handler(metrics, summary, healthy)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: ServiceMetrics, summary: Callable[[], dict[str, Any]], healthy: Callable[[], bool]):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics.exposition())
            elif path == "/summary.json":
                self._send(200, "application/json", json.dumps(summary(), indent=2).encode())
            elif path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"broker disconnected\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            log.debug("metrics http: " + fmt, *args)

    return Handler
