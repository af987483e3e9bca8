"""Drift and chip-to-chip sweep of the crossbar wake decision on the evaluation scenes.

    .venv/bin/python bench/crossbar_sweep.py --cache-dir out/cache/crossbar --out crossbar_sweep.json

The evaluation scenes (office babble, noisy kitchen, quiet home; training TTS engines, the recipes'
own seeds, 30 min each) are rendered into the cache if missing. For each read time after
programming (1 h, 1 day, 1 month, 1 year), with and without global drift compensation, and for
10 simulated chips (seeds 0-9), the shipped network runs on the front end's levels and is scored:

* tick AUC: keyword-like ticks against the rest (threshold-free);
* wake words passed: the gate (card threshold, debounce ``MIN_OPEN_S``) is open where the spotter
  fires, in a run that opened early enough for the pre-roll to hold the word's start;
* gate duty: share of ticks the gate is open.

The floating-point network (no devices) and the comparator gate are the references. Not part of
``make bench`` (it needs the renders and takes minutes); ``--update-card`` writes the summary into
the model's evaluation record (.eval.json beside it).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gate_core import cards  # noqa: E402
from sensors.analog.config import CrossbarConfig  # noqa: E402
from sensors.analog.crossbar_decision import DEFAULT_MODEL, CrossbarNet, delay_rows  # noqa: E402
from sensors.analog.train_crossbar import (  # noqa: E402
    EVAL_SCENES,
    gate_of,
    passed_wake_words,
    render_scene,
    scene_dir,
    scene_levels,
    scores_on,
    tick_labels,
)

TIMES_S = {"1 hour": 3600.0, "1 day": 86400.0, "1 month": 30 * 86400.0, "1 year": 365 * 86400.0}
CHIPS = range(10)
TICK_S = 0.01


def auc(score: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Area under the ROC curve of the scored ticks (weight > 0), by ranks."""
    keep = w > 0
    s, t = score[keep], y[keep] > 0
    ranks = np.empty(s.size)
    ranks[np.argsort(s, kind="stable")] = np.arange(1, s.size + 1)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def score_run(scores: list[np.ndarray], scenes: list, threshold: float) -> dict:
    ok = tot = open_ticks = ticks = 0
    aucs = []
    for sc, (rel, labels, _) in zip(scores, scenes, strict=True):
        g = gate_of(sc >= threshold, TICK_S)
        a, b = passed_wake_words(g, labels, TICK_S)
        ok, tot = ok + a, tot + b
        open_ticks, ticks = open_ticks + int(g.sum()), ticks + g.size
        y, w = tick_labels(labels, rel.shape[0], TICK_S)
        aucs.append(auc(sc, y, w))
    return {"auc": round(float(np.mean(aucs)), 4), "passed": ok, "wake_words": tot,
            "pass_rate": round(ok / max(tot, 1), 4), "duty": round(open_ticks / max(ticks, 1), 4)}


def spread(rows: list[dict]) -> dict:
    out = {}
    for key in ("auc", "pass_rate", "duty"):
        v = np.array([r[key] for r in rows])
        out[key] = {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4),
                    "max": round(float(v.max()), 4)}
    return out


def sweep(cache: Path, model: Path = DEFAULT_MODEL) -> dict:
    net = CrossbarNet.load(model)
    scenes = []
    for recipe, seed in EVAL_SCENES:
        d = render_scene(recipe, seed, scene_dir(cache, "eval", recipe, seed))
        scenes.append(scene_levels(d, board_seed=0, cache=cache))
    th = net.threshold
    comparator = {"passed": 0, "wake_words": 0, "open_ticks": 0, "ticks": 0}
    for _, labels, gate in scenes:
        a, b = passed_wake_words(gate, labels, TICK_S)
        comparator["passed"] += a
        comparator["wake_words"] += b
        comparator["open_ticks"] += int(gate.sum())
        comparator["ticks"] += gate.size
    result: dict = {
        "model": str(model.name), "threshold": th, "scenes": [f"{r} seed {s}" for r, s in EVAL_SCENES],
        "comparator_gate": {"pass_rate": round(comparator["passed"] / comparator["wake_words"], 4),
                            "duty": round(comparator["open_ticks"] / comparator["ticks"], 4)},
        "float_network": score_run([net.forward_float(delay_rows(net, rel, TICK_S)) for rel, _, _ in scenes],
                                   scenes, th),
        "drift": {},
    }
    t0 = time.monotonic()
    for name, t in TIMES_S.items():
        for comp in (True, False):
            cfg = CrossbarConfig(drift_s=t, drift_compensation=comp)
            rows = [score_run([scores_on(net, rel, TICK_S, seed=chip, cfg=cfg) for rel, _, _ in scenes], scenes, th)
                    for chip in CHIPS]
            key = f"{name}, {'compensated' if comp else 'uncompensated'}"
            result["drift"][key] = {"chips": len(rows), **spread(rows)}
            print(f"{key:32s} auc {result['drift'][key]['auc']['mean']:.4f} "
                  f"pass {result['drift'][key]['pass_rate']['mean']:.3f} "
                  f"duty {result['drift'][key]['duty']['mean']:.3f}", file=sys.stderr, flush=True)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    ap.add_argument("--update-card", action="store_true", help="store the summary in the model's .eval.json")
    args = ap.parse_args(argv)
    result = sweep(args.cache_dir, args.model)
    text = json.dumps(result, indent=2) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    else:
        print(text)
    if args.update_card:
        record = cards.read_record(args.model)
        record.setdefault("measured", {})["drift_and_chips"] = result
        cards.write_model_card(args.model, {**cards.read_runtime(args.model), **record})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
