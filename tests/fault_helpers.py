"""Shared by the fault, fuzz and load tests: inputs that force segments, the processes under test, and
the counts the verdicts are judged by (rows per segment id in the cloud's SQLite store).

Processes are real (``gate-node run``, ``gate-cloud serve``) and every wait is bounded, so a fault
that hangs a component fails the test instead of the suite.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from cloud_helpers import ENV, fake_models

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SR = 16_000
STANDIN = TESTS / "data" / "kws_standin.tflite"


# ---------------------------------------------------------------------------------------------
# Inputs


def burst_wav(path: Path, *, seconds: float, every_s: float = 2.0, first_s: float = 0.8,
              burst_s: float = 0.5, seed: int = 0) -> Path:
    """A quiet room with a loud noise burst every ``every_s``: the loudness stand-in KWS fires on each."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * SR)) * 10.0  # about -70 dBFS
    t = first_s
    while t + burst_s < seconds - 0.5:
        a = int(t * SR)
        x[a:a + int(burst_s * SR)] += rng.standard_normal(int(burst_s * SR)) * 4000.0
        t += every_s
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(x, -32768, 32767).astype(np.int16), SR, subtype="PCM_16")
    return path


def quiet_wav(path: Path, *, seconds: float) -> Path:
    """A quiet room and nothing else: a node restarted on it only delivers what its spool holds."""
    return burst_wav(path, seconds=seconds, first_s=seconds)


def node_config(path: Path, *, spool_dir: Path, node_id: str = "node1", spool_max_mb: float = 64.0,
                flush_timeout_s: float = 20.0, heartbeat_s: float = 1.0,
                reconnect_s: tuple[float, float] = (0.1, 0.5)) -> Path:
    """A thresholds file for a node under test: stand-in KWS, short segments, fast reconnects."""
    path.write_text(
        f"kws:\n  model_path: {STANDIN}\n"
        # Short segments, so a few seconds of audio make several of them.
        "segmenter:\n  preroll_s: 0.2\n  keyword_s: 0.5\n  command_window_s: 0.5\n"
        f"mqtt:\n  node_id: {node_id}\n  spool_dir: {spool_dir}\n  spool_max_mb: {spool_max_mb}\n"
        f"  reconnect_min_s: {reconnect_s[0]}\n  reconnect_max_s: {reconnect_s[1]}\n"
        f"node:\n  flush_timeout_s: {flush_timeout_s}\n  heartbeat_s: {heartbeat_s}\n")
    return path


def spool_ids(spool_dir: Path) -> list[str]:
    """Segment ids waiting in a node's spool, oldest first (the spool's on-disk format, gate/transport/spool.py)."""
    from gate.transport.spool import _parse

    out = []
    for p in sorted(spool_dir.glob("*.seg")):
        try:
            parsed = _parse(p.read_bytes())
        except FileNotFoundError:  # acknowledged meanwhile
            continue
        if parsed is not None:
            out.append(parsed[0])
    return out


# ---------------------------------------------------------------------------------------------
# Processes


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class NodeProcess:
    """``gate-node --config CFG run --input WAV --broker URL`` with its stderr kept."""

    def __init__(self, cfg: Path, wav: Path, broker_port: int, log: Path, *, realtime: bool = True) -> None:
        argv = [sys.executable, "-m", "gate.cli", "--config", str(cfg), "--log-level", "INFO", "run",
                "--input", str(wav), "--broker", f"mqtt://127.0.0.1:{broker_port}"]
        if not realtime:
            argv.append("--no-realtime")
        self.log_path = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL, stdout=f, stderr=f)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def segment_ids(self) -> list[str]:
        """Ids the node logged as made; gate/cascade.py spools a segment before the node logs it."""
        return [ln.split("segment ", 1)[1].split(":", 1)[0] for ln in self.log().splitlines()
                if " gate.node: segment " in ln]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"gate-node did not exit within {timeout} s:\n{self.log()[-3000:]}") from None


def store_count(db: Path, sql: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(con.execute(sql).fetchone()[0])
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# Cloud models for fault tests: deterministic, and optionally slow (``--models-factory``)


def fast_models(cfg=None):
    return fake_models(cfg)


class _Slow:
    def __init__(self, inner, seconds: float) -> None:
        self._inner, self._s = inner, seconds
        self.name, self.version = inner.name, inner.version

    def score(self, samples, sample_rate, *, fired_at_s):
        time.sleep(self._s)
        return self._inner.score(samples, sample_rate, fired_at_s=fired_at_s)


def slow_models(cfg=None):
    """A verifier that takes 50 ms of wall time per segment: a consumer slower than the producer."""
    from cloud.service.models import CloudModels

    m = fast_models(cfg)
    return CloudModels(verifier=_Slow(m.verifier, 0.05), commands=m.commands)
