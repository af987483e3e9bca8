"""One worker process: broker client -> handler -> verdict published -> acknowledgement.

The order is what makes a crash lossless: commit, publish the verdict and wait for its PUBACK,
then acknowledge the segment. A crash before the commit leaves the segment unacknowledged (the
broker redelivers it to this client id); a crash after it turns the redelivery into a dedupe hit
whose stored verdict is published again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from cloud.energy_meter import EnergyMeter
from cloud.metrics import MetricsServer, ServiceMetrics
from cloud.service.broker_client import BrokerClient, Delivery
from cloud.service.handler import Outcome, SegmentHandler
from cloud.service.models import CloudModels, load_models
from cloud.store import Store, StoreError, open_store
from gate_core.cloud_config import CloudConfig

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 60.0
STATE_EVERY_S = 5.0
RETRY_MAX_S = 10.0


class Worker:
    def __init__(self, cfg: CloudConfig, *, index: int, models: CloudModels, store: Store | None = None,
                 state_dir: str | os.PathLike | None = None, retire: bool = False) -> None:
        self.cfg = cfg
        self.index = index
        self.client_id = cfg.client_id(index)
        # Per process, so a killed worker's last report survives its replacement.
        self.state_path = Path(state_dir) / f"worker-{index}-{os.getpid()}.json" if state_dir else None
        self.metrics = ServiceMetrics(worker=self.client_id)
        self.energy = EnergyMeter(cfg.server)
        self.metrics.bind_energy(self.energy.process)
        self.store = store if store is not None else open_store(cfg.db_url)
        self.handler = SegmentHandler(cfg=cfg, store=self.store, models=models, metrics=self.metrics,
                                      energy=self.energy, worker=self.client_id)
        self.broker = BrokerClient(cfg, client_id=self.client_id, metrics=self.metrics, retire=retire)
        self.http: MetricsServer | None = None
        self.state = "starting"
        self.started_unix = time.time()

    def run(self, stop: threading.Event) -> int:
        self.http = MetricsServer(host=self.cfg.metrics_host, port=self.cfg.metrics_port_of(self.index),
                                  metrics=self.metrics, summary=self.summary,
                                  healthy=lambda: self.broker.connected).start()
        self.broker.start()
        self._write_state()
        log.info("worker %s: metrics on %s, subscribing to %s", self.client_id, self.http.url, self.broker.filter)
        next_state = next_housekeeping = time.monotonic()
        try:
            while not stop.is_set():
                if self.state == "starting" and self.broker.subscribed.is_set():
                    self.state = "ready"
                    next_state = 0.0
                d = self.broker.get(timeout=0.2)
                if d is not None:
                    self._process(d, stop)
                now = time.monotonic()
                if now >= next_housekeeping:
                    self._housekeeping()
                    next_housekeeping = now + HOUSEKEEPING_S
                if now >= next_state:
                    self._write_state()
                    next_state = now + STATE_EVERY_S
            self.state = "stopping"
            self._drain(stop)
        finally:
            self.broker.close()
            self.http.close()
            self.store.close()
            self.state = "stopped"
            self._write_state()
        return 0

    def retire(self, stop: threading.Event, *, idle_s: float = 1.0, timeout_s: float = 60.0) -> int:
        """Empty and end this index's broker session (a worker that no longer exists after scaling down).

        mosquitto keeps routing a share of the group's segments to an offline member's session, so
        a session nobody resumes would strand them: take it over, leave the group, answer whatever
        it held, and end it. Returns the number of messages handled.
        """
        self.broker.start()
        handled, empty = 0, False
        deadline = time.monotonic() + timeout_s
        try:
            if not self.broker.unsubscribed.wait(min(timeout_s, 15.0)):
                log.warning("could not retire %s: the broker did not answer", self.client_id)
                return 0
            quiet_since = time.monotonic()
            while not stop.is_set() and time.monotonic() < deadline:
                d = self.broker.get(timeout=0.1)
                if d is None:
                    if time.monotonic() - quiet_since >= idle_s:
                        empty = self.broker.pending() == 0
                        break
                    continue
                self._process(d, stop)
                handled += 1
                quiet_since = time.monotonic()
        finally:
            # Ended only once empty: a session still holding segments stays for the next attempt.
            self.broker.close(end_session=empty)
        log.info("retired %s: %d queued segments handled", self.client_id, handled)
        return handled

    # -- one message ----------------------------------------------------------------------------

    def _process(self, d: Delivery, stop: threading.Event) -> None:
        self.metrics.on_received()
        backoff = 0.5
        while True:
            try:
                outcome = self.handler.handle(d.topic, d.payload, d.received_unix)
            except Exception:
                # The handler turns every expected failure into an outcome, so this is a bug. Acknowledge:
                # an unacknowledged message would hold one of the few receive slots for good.
                self.metrics.on_error("handler")
                log.exception("handler failed on a message from %.128r; dropped", d.topic)
                self.broker.ack(d)
                return
            if outcome.kind != "retry":
                break
            # The store is down: hold this segment (the broker holds the rest) until it is back.
            if stop.wait(backoff):
                return
            backoff = min(backoff * 2, RETRY_MAX_S)
        self._finish(d, outcome)

    def _finish(self, d: Delivery, outcome: Outcome) -> None:
        if outcome.reply is not None and outcome.reply_topic is not None:
            if not self.broker.publish(outcome.reply_topic, outcome.reply, timeout=self.cfg.verdict_timeout_s):
                self.metrics.on_error("publish")
                log.warning("verdict to %s not confirmed; segment left to redelivery", outcome.reply_topic)
                return
        if outcome.kind == "verdict" and outcome.sent_unix is not None:
            latency = time.time() - outcome.sent_unix
            if 0.0 <= latency < 3600.0:  # a node with a wrong clock must not poison the histogram
                self.metrics.on_latency(latency)
        if outcome.ack and not self.broker.ack(d):
            log.info("message from an earlier connection not acknowledged; the broker redelivers it")

    def _drain(self, stop: threading.Event) -> None:
        """After SIGTERM: finish what was delivered before it, within the grace period. Whatever is left
        (including anything the store refuses now: ``stop`` is set, so nothing is retried) stays
        unacknowledged in the broker session for this client id."""
        deadline = time.monotonic() + self.cfg.shutdown_grace_s
        for _ in range(self.broker.pending()):
            if time.monotonic() >= deadline:
                log.warning("shutdown grace over; %d delivered segments left to redelivery", self.broker.pending())
                break
            d = self.broker.get(timeout=0)
            if d is None:
                break
            self._process(d, stop)

    def _housekeeping(self) -> None:
        now = time.time()
        audio_before = now - self.cfg.audio_retention_h * 3600.0
        try:
            n_audio, n_rejects = self.store.prune(audio_before=audio_before,
                                                  rejects_before=now - self.cfg.rejects_retention_h * 3600.0)
        except StoreError as exc:
            self.metrics.on_error("store")
            log.warning("retention pass failed: %s", exc)
            return
        if n_audio or n_rejects:
            log.info("retention: dropped audio of %d segments and %d reject records", n_audio, n_rejects)

    # -- reporting ------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "worker": self.client_id,
            "index": self.index,
            "pid": os.getpid(),
            "state": self.state,
            "broker": str(self.broker.url),
            "subscription": self.broker.filter,
            "connected": self.broker.connected,
            "metrics_url": self.http.url if self.http else None,
            "started_unix": self.started_unix,
            "uptime_s": time.time() - self.started_unix,
            **self.metrics.summary(),
            "energy": self.energy.summary(),
        }

    def _write_state(self) -> None:
        if self.state_path is None:
            return
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.state_path)


def run_worker(cfg: CloudConfig, *, index: int = 0, state_dir: str | os.PathLike | None = None,
               models: CloudModels | None = None) -> tuple[int, dict[str, Any]]:
    """Run one worker until SIGTERM/SIGINT; returns (exit code, final summary)."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker = Worker(cfg, index=index, models=models or load_models(cfg), state_dir=state_dir)
        code = worker.run(stop)
        return code, worker.summary()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
