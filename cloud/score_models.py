"""Score candidate tiny models side by side on the held-out and cross-engine scenes, alone and behind v1.

    python -m cloud.score_models --minutes 20 --cache-dir out/cache/train --out score.json \\
        shipped=gate/models/kws_logmel.tflite run=RUN/tiny_logmel.tflite

For the quick comparisons in docs/experiments.md: the held-out scenes of the training pipeline's evaluation
and the cross-engine set (cloud/crossengine.py), ``--minutes`` per scene kind, built from the speech cache.
Each model's log-mel posteriors are swept over gate_core.metrics.default_thresholds() with the node's
detector, scored with the one detection metric, alone and with each detection checked by the shipped
verifier v1 (or ``--verifier``). Reported, never used to choose anything: thresholds come from dev scenes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from cloud import crossengine
from cloud.compare import at_fa
from cloud.train import data, evaluate
from cloud.train.recipe import load_recipe
from gate.kws.config import KwsConfig
from gate_core import metrics
from gate_core.audio import float_to_int16
from sensors.synth import augment

FIXED = (0.1, 0.3, 0.5, 0.9, 0.99)
WITHIN = (0.5, 1.0, 2.0, 5.0)


def sweep(cfg: KwsConfig, scenes: list, ok) -> list[dict]:
    """Miss rate and FA/h at every threshold, alone and behind the check ``ok(scene index, t)``."""
    scored = [evaluate.posteriors(cfg, s) for s in scenes]

    def score(times: list[list[float]]) -> metrics.Score:
        return metrics.combine(metrics.span_score(t, s.keywords, s.hours) for t, s in zip(times, scenes, strict=True))

    rows = []
    for th in sorted(set(metrics.default_thresholds()) | set(FIXED)):
        c = cfg.model_copy(update={"threshold": th})
        times = [evaluate.detect(c, sc) for sc in scored]
        alone, checked = score(times), score([[x for x in t if ok(i, x)] for i, t in enumerate(times)])
        rows.append({"threshold": th, "miss": round(alone.miss_rate, 4), "fa_per_hour": round(alone.fa_per_hour, 2),
                     "verified_miss": round(checked.miss_rate, 4),
                     "verified_fa_per_hour": round(checked.fa_per_hour, 2)})
    return rows


def fewest_misses_within(rows: list[dict], fa_per_hour: float, *, verified: bool) -> float | None:
    """The fewest misses among the thresholds within ``fa_per_hour`` (cloud.compare.at_fa's rule)."""
    m, f = ("verified_miss", "verified_fa_per_hour") if verified else ("miss", "fa_per_hour")
    best = at_fa([{"threshold": r["threshold"], "miss_rate": r[m], "fa_per_hour": r[f]} for r in rows],
                 (fa_per_hour,))[f"{fa_per_hour:g}"]
    return None if best is None else best["miss_rate"]


def through(scene, kind: str, seed: int):
    """``scene`` heard through channel ``kind`` (sensors.synth.augment.channel), the same filter every run."""
    x = augment.channel(scene.audio.astype(np.float32) / 32768.0, np.random.default_rng(seed), kind)
    return dataclasses.replace(scene, name=f"{scene.name}_{kind}", audio=float_to_int16(x))


def _model(arg: str) -> tuple[str, Path]:
    name, sep, path = arg.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{arg!r}: expected NAME=MODEL.tflite naming an existing file")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloud.score_models", description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=_model, metavar="NAME=MODEL.tflite")
    ap.add_argument("--recipe", type=Path, default=Path("datasets/recipes/hey_jarvis.yaml"))
    ap.add_argument("--minutes", type=float, default=20.0, help="per scene kind (default 20)")
    ap.add_argument("--cache-dir", type=Path, default=Path("out/cache/train"))
    ap.add_argument("--verifier", type=Path, default=None, help="verifier v1 model (default: the shipped one)")
    ap.add_argument("--channel", action="append", default=[], choices=augment.CHANNELS,
                    help="also score the held-out scenes heard through this channel (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from cloud.verifier import Verifier

    r = load_recipe(args.recipe)
    items = data.eval_plan(r)
    renders = data.synthesised(r, args.cache_dir, "eval", items)
    sets = {"held_out": evaluate.build_eval_scenes(r, renders, args.minutes),
            "cross_engine": crossengine.build_scenes(r.phrase, seed=r.seed, minutes=args.minutes,
                                                     cache_dir=args.cache_dir, workers=r.corpus.workers)}
    for kind in args.channel:  # training engines' held-out voices through another microphone or line
        sets[f"held_out_{kind}"] = [through(s, kind, r.seed) for s in sets["held_out"]]
    v1 = Verifier(threshold=r.evaluation.verifier_threshold,
                  **({"model_path": str(args.verifier)} if args.verifier else {}))
    report: dict = {"minutes": args.minutes, "models": {n: str(p) for n, p in args.models}, "sets": {}}
    for set_name, scenes in sets.items():
        ok = evaluate.verdicts(v1, scenes)
        for name, path in args.models:
            rows = sweep(KwsConfig(model_path=str(path), feature_kind="logmel"), scenes, ok)
            within = {f"{n:g}": {"alone": fewest_misses_within(rows, n, verified=False),
                                 "verified": fewest_misses_within(rows, n, verified=True)} for n in WITHIN}
            report["sets"].setdefault(set_name, {})[name] = {"fewest_misses_within_fa_per_hour": within,
                                                             "curve": rows}
            fixed = [x for x in rows if x["threshold"] in FIXED]
            print(set_name, name, " ".join(f"{x['threshold']}: {100 * x['miss']:.1f}%/{x['fa_per_hour']:.1f} "
                                           f"v {100 * x['verified_miss']:.1f}%/{x['verified_fa_per_hour']:.1f}"
                                           for x in fixed), flush=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
