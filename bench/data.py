"""Throughput of ``gate-data synth``: clips per second for a small run, and the projected time for
10,000 clips. Standalone: ``python bench/data.py [N]``; from code: ``run() -> dict``.

The machine is shared, so the load average at start is reported beside the figures.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensors.synth import confusables, tts  # noqa: E402
from sensors.synth.corpus import SynthConfig, synth  # noqa: E402


def run(n: int = 1000, *, seed: int = 0, workers: int = 2) -> dict:
    # Voice probing and confusable phonemisation are per-run fixed costs (a few seconds) that a
    # long run amortises; they are done before the clock starts. Pool start-up stays inside, so
    # the 10k projection (linear in n) is conservative.
    es = tts.discover(None)
    confusables.generate("hey jarvis", 40)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gate-bench-") as d:
        t0 = time.perf_counter()
        cfg = SynthConfig(phrase="hey jarvis", n=n, seed=seed, workers=workers)
        summary = synth(cfg, Path(d) / "corpus", engines=es)
        elapsed = time.perf_counter() - t0
    rate = n / elapsed
    return {
        "clips": n, "workers": workers, "seconds": round(elapsed, 2), "clips_per_s": round(rate, 1),
        "renders": summary["renders"], "projected_10k_s": round(10_000 / rate, 1),
        "engines": {e: len(v) for e, v in summary["engines"].items()}, "loadavg_1min_at_start": round(load, 2),
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1000), indent=2))
