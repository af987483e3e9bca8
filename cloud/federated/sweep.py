"""Choose the fleet's training settings on a fleet that is not the reported one.

    python -m cloud.federated.sweep --seed 7 --nodes 6 --out out/federated-sweep \\
        --settings '[{"rounds": 3}, {"rounds": 3, "positive_share": 0.25}]'

collects the fleet of ``--seed`` once (as ``gate-cloud federate`` does: cloud.federated.fleet.collect_fleet),
then for each setting runs the rounds in this process: every node's ``flower.local_round`` from the global
head, and the example-weighted mean of their updates added to it, which is what the Flower strategy does
(without the Ray runtime, so a setting costs the training alone). Each candidate is requantized and
scored on the nodes' held-out scenes and the dev scenes at each threshold the release gate may choose
(``Sizes.threshold_steps``), with the one the dev scenes choose marked. Writes ``sweep.json``.

A setting's keys: ``rounds``, ``epochs``, ``lr``, ``mu``, ``positive_share``, ``hard_negative_repeat``,
``layers`` (``pw+fc`` or ``fc``);
what it leaves out takes the defaults of ``gate-cloud federate``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cloud.federated import flower
from cloud.federated.fleet import (
    Sizes,
    candidate_thresholds,
    collect_fleet,
    dev_scenes,
    dev_threshold,
    node_renders,
    node_specs,
    scene_scores,
)
from gate.fedhead import LAYERS, read_head

KEYS = {"rounds", "epochs", "lr", "mu", "positive_share", "hard_negative_repeat", "layers"}


def run_rounds(fleet: Path, base_model: Path, nodes: int, *, rounds: int, epochs: int, lr: float, mu: float,
               positive_share: float, hard_negative_repeat: int, layers: str, seed: int) -> dict:
    """The Flower rounds in process: the final global head."""
    head, _ = read_head(base_model)
    g = {k: v.astype(np.float32) for k, v in head.items()}
    for _ in range(rounds):
        updates, examples = [], []
        for i in range(nodes):
            u, stats = flower.local_round(flower.node_dir(fleet, i), base_model, g, epochs=epochs, lr=lr, mu=mu,
                                          trainable=layers, seed=seed * 1000 + i, positive_share=positive_share,
                                          hard_negative_repeat=hard_negative_repeat)
            updates.append(u)
            examples.append(stats["examples"])
        w = np.asarray(examples, np.float64) / sum(examples)
        for k in LAYERS[layers]:
            g[k] = (g[k] + sum(wi * u[k] for wi, u in zip(w, updates, strict=True))).astype(np.float32)
    return g


def _score(cfg, heldout: list, dev: list, steps: tuple[float, ...], base: dict | None = None,
           dev_p: list | None = None) -> dict:
    """Held-out and dev figures at every threshold the release gate may choose (fleet.candidate_thresholds).
    ``dev_p``: the model's posteriors over ``dev`` when already computed."""
    from cloud.train.evaluate import detect, posteriors
    from gate_core import metrics

    held_p = [posteriors(cfg, s) for s in heldout]
    dev_p = [posteriors(cfg, s) for s in dev] if dev_p is None else dev_p
    out = {}
    for th in candidate_thresholds(cfg.threshold, steps):
        c = cfg.model_copy(update={"threshold": th})
        rows = [metrics.span_score(detect(c, sc), s.keywords, s.hours) for sc, s in zip(held_p, heldout, strict=True)]
        d = metrics.combine(metrics.span_score(detect(c, sc), s.keywords, s.hours)
                            for sc, s in zip(dev_p, dev, strict=True))
        miss = [r.keywords - r.hits for r in rows]
        fa = [r.false_accepts for r in rows]
        row = {"misses": sum(miss), "false_accepts": sum(fa), "dev_misses": d.keywords - d.hits,
               "dev_false_accepts": d.false_accepts, "per_node_misses": miss, "per_node_false_accepts": fa}
        if base is not None:
            row["nodes_worse"] = [i for i in range(len(rows)) if miss[i] > base["per_node_misses"][i]
                                  or fa[i] > base["per_node_false_accepts"][i]]
        out[str(th)] = row
    return out


def sweep(recipe, out: Path, *, seed: int, nodes: int, settings: list[dict], sizes: Sizes | None = None,
          cache_dir: Path | None = None, mu: float = 0.01, layers: str = "pw+fc", rounds: int = 3) -> dict:
    """Collect the fleet of ``seed`` once, then train and score each of ``settings``; writes ``sweep.json``."""
    from cloud.federated.quantize import with_head
    from cloud.train.evaluate import posteriors
    from gate.kws.config import KwsConfig
    from gate.kws.stage import default_model_path, tuned_threshold
    from gate_core import metrics

    sizes = sizes or Sizes()
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_dir or out / "cache"
    base_model = Path(default_model_path("logmel"))
    threshold = tuned_threshold(base_model)
    base_cfg = KwsConfig(model_path=str(base_model), feature_kind="logmel", threshold=threshold)
    specs = node_specs(nodes, list(recipe.corpus.eval_voices), seed)
    per = node_renders(recipe, specs, sizes, cache, recipe.corpus.workers, seed)
    fleet = out / "fleet"
    _, heldout = collect_fleet(recipe, fleet, specs, per, sizes, base_cfg, seed)
    dev = dev_scenes(recipe, sizes, cache, recipe.corpus.workers, seed)
    base = _score(base_cfg, heldout, dev, (1.0,))[str(round(threshold, 6))]
    base_dev = metrics.combine(scene_scores(base_cfg, s)[0] for s in dev)
    report: dict = {"seed": seed, "nodes": nodes, "threshold": threshold, "label_threshold": sizes.label_threshold,
                    "base": base, "settings": []}
    for st in settings:
        t0 = time.time()
        full = {"rounds": rounds, "epochs": sizes.epochs, "lr": sizes.lr, "mu": mu,
                "positive_share": sizes.positive_share, "hard_negative_repeat": sizes.hard_negative_repeat,
                "layers": layers, **st}
        head = run_rounds(fleet, base_model, nodes, seed=seed, **full)
        cand = out / "candidate.tflite"
        cand.write_bytes(with_head(base_model.read_bytes(), head))
        cfg = base_cfg.model_copy(update={"model_path": str(cand)})
        dev_p = [posteriors(cfg, s) for s in dev]  # once, for the choice and the figures
        chosen, _ = dev_threshold(cfg, dev, base_dev, sizes.threshold_steps, dev_p)
        report["settings"].append({"setting": full, "dev_threshold": chosen,
                                   "at": _score(cfg, heldout, dev, sizes.threshold_steps, base, dev_p),
                                   "seconds": round(time.time() - t0, 1)})
        flower.write_json(out / "sweep.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    from cloud.train.recipe import load_recipe
    from gate_core.cliutil import number

    p = argparse.ArgumentParser(prog="python -m cloud.federated.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, required=True, help="the fleet's seed (not the reported fleet's)")
    p.add_argument("--nodes", type=number(lo=2, hi=200, integer=True), default=6)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", required=True, help="JSON list of settings")
    p.add_argument("--label-threshold", type=number(lo=0, hi=1), default=None,
                   help="the collection's label candidates (default: gate-cloud federate's)")
    p.add_argument("--recipe", type=Path, default=Path("datasets/recipes/hey_jarvis.yaml"))
    p.add_argument("--cache-dir", type=Path, default=Path("out/cache/federated"))
    a = p.parse_args(argv)
    try:
        settings = json.loads(a.settings)
        if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
            raise ValueError("not a list of objects")
        for s in settings:
            if set(s) - KEYS:
                raise ValueError(f"unknown key(s) {sorted(set(s) - KEYS)} (known: {sorted(KEYS)})")
            if s.get("layers", "pw+fc") not in LAYERS:
                raise ValueError(f"layers: {s['layers']!r} is not one of {sorted(LAYERS)}")
            for k in sorted(KEYS & set(s) - {"layers"}):
                v = s[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0 or \
                        (k != "mu" and v == 0) or (k == "positive_share" and v >= 1) or \
                        (k in ("rounds", "epochs", "hard_negative_repeat") and not isinstance(v, int)):
                    raise ValueError(f"{k}: {v!r} is out of range")
    except ValueError as exc:
        print(f"--settings: {exc}", file=sys.stderr)
        return 2
    sizes = Sizes() if a.label_threshold is None else replace(Sizes(), label_threshold=a.label_threshold)
    rep = sweep(load_recipe(a.recipe), a.out, seed=a.seed, nodes=a.nodes, settings=settings, sizes=sizes,
                cache_dir=a.cache_dir)
    print(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
