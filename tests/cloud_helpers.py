"""The cloud service under test: segments to send it, deterministic stand-in models, and
``gate-cloud serve`` as a real subprocess on a real broker, with its state files and store.

One wrapper serves the service, fault and fuzz tests; the ``mosquitto`` and PostgreSQL fixtures it
runs against are in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cloud.service.models import CloudModels, RecognizedCommand, VerifierResult
from gate_core.vocabulary import COMMANDS
from gate_core.wire import SegmentHeader, encode_segment, new_id, pcm_sha256

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS="1")
ENV.pop("JOURNAL_STREAM", None)
CLOUD_MODELS = [ROOT / "cloud" / "models" / "verifier.tflite", ROOT / "cloud" / "models" / "commands.tflite"]


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


# ---------------------------------------------------------------------------------------------
# Segments and stand-in models


def make_segment(*, node: str = "n1", seconds: float = 1.0, codec: str = "flac", seed: int = 0, seq: int = 0,
                 sent_unix: float | None = None, samples: np.ndarray | None = None,
                 detect_s: float | None = None, segment_id: str | None = None) -> tuple[SegmentHeader, bytes]:
    if samples is None:
        rng = np.random.default_rng(seed)
        samples = (rng.standard_normal(int(16_000 * seconds)) * 800).astype(np.int16)
    dur = samples.size / 16_000
    header = SegmentHeader(node_id=node, boot_id=new_id(), segment_id=segment_id or new_id(), seq=seq,
                           t_start_s=0.0, t_end_s=dur, t_detect_s=dur / 2 if detect_s is None else detect_s,
                           scores={"kws": 0.9}, sample_rate=16_000, codec=codec, n_samples=int(samples.size),
                           audio_sha256=pcm_sha256(samples), sent_unix=sent_unix)
    return header, encode_segment(header, samples)


class FakeVerifier:
    """Deterministic in the audio: the same segment always gets the same score."""

    name, version = "verifier", "fake-1"

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def score(self, samples, sample_rate, *, fired_at_s):
        self.calls += 1
        if self.fail:
            raise FloatingPointError("boom")
        h = hashlib.sha256(samples.tobytes()).digest()
        p = h[0] / 255.0
        return VerifierResult(p >= 0.5, p)


class FakeCommands:
    name, version = "commands", "fake-1"

    def recognize(self, samples, sample_rate, *, start_s):
        h = hashlib.sha256(samples.tobytes()).digest()
        return RecognizedCommand(COMMANDS[h[1] % len(COMMANDS)].name, 0.8)


def fake_models(cfg=None) -> CloudModels:
    """A ``--models-factory`` target: ``cloud_helpers:fake_models``."""
    return CloudModels(verifier=FakeVerifier(), commands=FakeCommands())


def require_cloud_models() -> None:
    """The trained cloud models are committed: a test that needs them fails, naming them, if they are gone."""
    missing = [str(p.relative_to(ROOT)) for p in CLOUD_MODELS if not p.is_file()]
    assert not missing, f"committed cloud models missing: {', '.join(missing)}"


# ---------------------------------------------------------------------------------------------
# The service's files


def worker_states(state_dir: Path) -> list[dict]:
    """The state files `gate-cloud serve` workers keep in ``state_dir`` (one being replaced is skipped)."""
    out = []
    for p in state_dir.glob("worker-*-*.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            pass  # being replaced
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"  # a killed child is a zombie until reaped
    except OSError:
        return False


def store_rows(db: Path) -> Counter:
    """Rows per segment id in the cloud's SQLite store, read-only (the workers may still be writing)."""
    if not db.exists():
        return Counter()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return Counter(r[0] for r in con.execute("SELECT segment_id FROM segments"))
    except sqlite3.OperationalError:  # the schema is not there yet
        return Counter()
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# gate-cloud serve


class CloudService:
    """``gate-cloud serve`` as a subprocess on a real broker (its own process group, so teardown ends
    the supervisor and every worker it started), with its state files, summary and store."""

    def __init__(self, workdir: Path, broker_port: int, *, workers: int = 1, prefix: str = "test",
                 models_factory: str | None = None, config: str | None = None, db: Path | None = None,
                 db_url: str | None = None, extra: Sequence[str] = (), log_level: str = "WARNING",
                 ready_timeout: float = 90.0) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.state = workdir / "state"
        self.state.mkdir(exist_ok=True)
        self.db = db or workdir / "cloud.db"
        self.db_url = db_url or f"sqlite:///{self.db}"
        self.summary_path = workdir / "summary.json"
        self.log_path = workdir / "serve.log"
        self.workers = workers
        argv = [sys.executable, "-m", "cloud.cli", "--log-level", log_level, "serve",
                "--broker", f"mqtt://127.0.0.1:{broker_port}", "--workers", str(workers),
                "--db", self.db_url, "--metrics-port", "0", "--client-id-prefix", prefix,
                "--state-dir", str(self.state), "--summary-out", str(self.summary_path)]
        if models_factory:
            argv += ["--models-factory", models_factory]
        else:
            require_cloud_models()
        if config:
            cfg = workdir / "cloud.yaml"
            cfg.write_text(config)
            argv += ["--config", str(cfg)]
        argv += list(extra)
        with open(self.log_path, "ab") as f:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.kill()  # never leave a supervisor restarting workers behind a failed test
            raise

    def states(self) -> list[dict]:
        return worker_states(self.state)

    def ready(self) -> set[int]:
        return {s["index"] for s in self.states() if s["state"] == "ready" and alive(s["pid"])}

    def wait_ready(self, timeout: float) -> None:
        if not wait_until(lambda: len(self.ready()) == self.workers or self.proc.poll() is not None, timeout, 0.1) \
                or self.proc.poll() is not None:
            raise AssertionError(f"gate-cloud serve not ready:\n{self.log()}")

    def pid_of(self, index: int) -> int:
        live = [s["pid"] for s in self.states() if s["index"] == index and alive(s["pid"])]
        assert live, f"worker {index} is not running"
        return live[-1]

    def live_summaries(self) -> list[dict]:
        """Each live worker's /summary.json (counters are per process)."""
        out = []
        for s in self.states():
            if s.get("metrics_url") and alive(s["pid"]):
                try:
                    with urllib.request.urlopen(s["metrics_url"] + "/summary.json", timeout=5) as r:
                        out.append(json.loads(r.read()))
                except OSError:
                    pass
        return out

    def stop(self, timeout: float = 60.0) -> tuple[int, dict]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"gate-cloud serve ignored SIGTERM:\n{self.log()}") from None
        return rc, json.loads(self.summary_path.read_text())

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        for s in self.states():
            if alive(s["pid"]):
                try:
                    os.kill(s["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def rows(self, sql: str = "SELECT segment_id, worker FROM segments") -> list[tuple]:
        from cloud.store import open_store

        store = open_store(self.db_url)
        try:
            return store.query(sql)
        finally:
            store.close()

    def rows_per_segment(self) -> Counter:
        return store_rows(self.db)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]
