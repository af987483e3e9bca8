"""A private cloud worker for one replay: `gate-cloud serve` as a subprocess against the replay's broker.

A subprocess rather than a thread: the service meters its own energy from its process CPU time,
which in-process would include the whole node simulation. Its SQLite store, state and summary
live in a temporary directory that goes with the replay.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0  # model loading on a loaded 2-core machine; normally 2-5 s
STOP_TIMEOUT_S = 30.0


class CloudUnavailable(Exception):
    """The worker could not be started; the replay goes on without verdicts."""


class CloudWorker:
    """``with CloudWorker(url) as w:`` a running, subscribed worker; ``w.summary`` after the block."""

    def __init__(self, broker_url: str, *, topic_prefix: str = "gate") -> None:
        self.broker_url = broker_url
        self.topic_prefix = topic_prefix
        self.summary: dict | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> CloudWorker:
        self._tmp = tempfile.TemporaryDirectory(prefix="gate-replay-cloud-")
        d = Path(self._tmp.name)
        argv = [sys.executable, "-m", "cloud.cli", "--log-level", "WARNING", "serve",
                "--broker", self.broker_url, "--topic-prefix", self.topic_prefix,
                "--db", f"sqlite:///{d / 'cloud.sqlite3'}", "--metrics-port", "0", "--workers", "1",
                "--client-id-prefix", f"gate-replay-{os.getpid()}", "--state-dir", str(d / "state"),
                "--summary-out", str(d / "summary.json")]
        (d / "state").mkdir()
        self._stderr = (d / "stderr.log").open("wb")
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=self._stderr)
            self._wait_ready(d / "state")
        except BaseException:
            self._cleanup()
            raise
        return self

    def _wait_ready(self, state: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise CloudUnavailable(f"gate-cloud serve exited with {self._proc.returncode}: {self._tail()}")
            for f in state.glob("worker-*.json"):
                try:
                    if json.loads(f.read_text()).get("state") == "ready":
                        return
                except (OSError, ValueError):
                    pass  # being replaced: read it on the next poll
            time.sleep(0.1)
        raise CloudUnavailable(f"gate-cloud serve did not subscribe within {READY_TIMEOUT_S:.0f} s")

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __exit__(self, *exc) -> None:
        try:
            if self.alive:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log.warning("cloud worker ignored SIGTERM; killing it")
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            p = Path(self._tmp.name) / "summary.json"
            if p.is_file():
                self.summary = json.loads(p.read_text())
        finally:
            self._cleanup()

    def _tail(self) -> str:
        try:
            self._stderr.flush()
            lines = (Path(self._tmp.name) / "stderr.log").read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else "no error output"
        except OSError:
            return "no error output"

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._stderr.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def measured_energy(summary: dict | None) -> dict | None:
    """The service's own meter from its summary: process CPU x W per busy core x PUE."""
    if not summary:
        return None
    e = summary.get("energy", {})
    return {"cpu_s": e.get("cpu_s"), "joules": e.get("joules"), "model_cpu_s": e.get("model_cpu_s"),
            "audio_s": e.get("audio_s"), "segments": e.get("segments"), "j_per_audio_s": e.get("j_per_audio_s"),
            "received": summary.get("received"), "accepted": summary.get("accepted"),
            "rejected": summary.get("rejected"), "malformed": summary.get("malformed")}
