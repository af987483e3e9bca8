"""`--workers N`: N worker processes, each restarted under its own index when it dies.

Restarting under the same index matters: the index is part of the MQTT client id, and only a
client with that id gets back the segments the dead worker had not acknowledged (and the share of
new ones the broker kept queueing for its session).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gate_core.cloud_config import CloudConfig

log = logging.getLogger(__name__)

RESTART_MIN_S, RESTART_MAX_S = 0.5, 30.0
STABLE_S = 30.0  # a worker that ran this long before dying starts again at the shortest delay


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.delay = RESTART_MIN_S
        self.restart_at = 0.0
        self.restarts = 0


def supervise(cfg: CloudConfig, *, state_dir: str | os.PathLike, log_level: str = "WARNING") -> tuple[int, dict]:
    """Run ``cfg.workers`` workers until SIGTERM/SIGINT; returns (exit code, merged summary)."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    children = [_Child(i) for i in range(cfg.workers)]
    argv_base = [sys.executable, "-m", "cloud.cli", "--log-level", log_level, "serve", "--worker-config-stdin",
                 "--state-dir", str(state), "--summary-out", ""]
    config_json = cfg.model_dump_json().encode()
    try:
        while not stop.is_set():
            now = time.monotonic()
            for c in children:
                if c.proc is not None and c.proc.poll() is not None:
                    rc = c.proc.returncode
                    c.delay = RESTART_MIN_S if now - c.started > STABLE_S else min(c.delay * 2, RESTART_MAX_S)
                    c.restart_at = now + c.delay
                    log.error("worker %d (pid %d) exited with %s; restarting in %.1f s",
                              c.index, c.proc.pid, rc, c.delay)
                    c.proc = None
                    c.restarts += 1
                if c.proc is None and now >= c.restart_at:
                    c.proc = _spawn([*argv_base, "--worker-index", str(c.index)], config_json)
                    c.started = now
                    log.info("worker %d started (pid %d)", c.index, c.proc.pid)
            stop.wait(0.2)
        _stop_all(children, grace_s=cfg.shutdown_grace_s + 10.0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    summary = merge_summaries(read_states(state))
    summary["restarts"] = {str(c.index): c.restarts for c in children}
    codes = [c.proc.returncode if c.proc is not None else 0 for c in children]
    return (0 if all(rc == 0 for rc in codes) else 1), summary


def _spawn(argv: list[str], config_json: bytes) -> subprocess.Popen:
    # The validated config goes through stdin: every worker runs exactly this one, and it stays out of `ps`.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, preexec_fn=_die_with_parent)
    try:
        proc.stdin.write(config_json)
        proc.stdin.close()
    except BrokenPipeError:  # the child died at once; the loop restarts it
        pass
    return proc


def _die_with_parent() -> None:
    # Linux: a worker gets SIGTERM (and so drains and exits) if the supervisor is killed outright,
    # instead of living on unsupervised with nobody to restart it under its id.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _stop_all(children: list[_Child], *, grace_s: float) -> None:
    live = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker pid %d ignored SIGTERM for %.0f s; killing it", p.pid, grace_s)
            p.kill()
            p.wait(timeout=10)


def read_states(state: str | os.PathLike) -> list[dict[str, Any]]:
    """Every worker process's last report (worker-<index>-<pid>.json), oldest first."""
    out = []
    for path in sorted(Path(state).glob("worker-*-*.json"), key=lambda p: p.stat().st_mtime):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            log.warning("unreadable worker report %s", path)
    return out


_COUNTS = ("received", "accepted", "rejected", "malformed", "dedupe_hits", "errors")


def merge_summaries(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over workers; percentiles do not add up, so each worker's stay in ``workers``."""
    total: dict[str, Any] = {k: sum(int(w.get(k, 0)) for w in workers) for k in _COUNTS}
    by_code: dict[str, int] = {}
    for w in workers:
        for code, n in w.get("malformed_by_code", {}).items():
            by_code[code] = by_code.get(code, 0) + int(n)
    total["malformed_by_code"] = dict(sorted(by_code.items()))
    energy = {"cpu_s": 0.0, "joules": 0.0, "g_co2e": 0.0, "model_cpu_s": 0.0, "audio_s": 0.0, "segments": 0}
    for w in workers:
        e = w.get("energy", {})
        for k in ("cpu_s", "joules", "g_co2e"):
            energy[k] += float(e.get("process", {}).get(k, 0.0))
        energy["model_cpu_s"] += float(e.get("models", {}).get("cpu_s", 0.0))
        energy["audio_s"] += float(e.get("audio_s", 0.0))
        energy["segments"] += int(e.get("segments", 0))
    energy["j_per_audio_s"] = energy["joules"] / energy["audio_s"] if energy["audio_s"] else None
    energy["j_per_segment"] = energy["joules"] / energy["segments"] if energy["segments"] else None
    total["energy"] = energy
    total["workers"] = workers
    return total
