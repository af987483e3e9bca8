"""Train the crossbar wake classifier and write its network (.npz), card (.json) and evaluation record (.eval.json).

    python -m sensors.analog.train_crossbar --out gate/models/crossbar_gate.npz --cache-dir out/cache/crossbar

1. Scenes: the three evaluation recipes (office babble, noisy kitchen, quiet home) rendered with the
   training TTS engines only (espeak-ng, pico, RHVoice) at seeds no evaluation uses, cached; the
   noisy kitchen at four more seeds, for more TV speech and music among the negatives.
2. Inputs: the analog front end (default settings, one board seed per scene) gives each tick's
   envelope level above its adaptive floor; the crossbar's feature path (RC, DAC scaling, delay
   line) turns that into the network's input rows, exactly as the streaming decision does.
3. Labels: a tick is keyword-like from ``POS_FROM_S`` after a wake word starts until ``POS_TO_S``
   after it ends (the decision may come late in the word: the analog store's pre-roll covers its
   start); ticks around that window are not scored; confusable phrases are down-weighted negatives,
   and negatives while a TV or music plays weigh ``AMBIENT_WEIGHT`` times more (TV speech is what
   the network fires on in the kitchen).
4. Hardware-aware training (numpy, Adam): every step perturbs the weights with the errors a PCM
   chip makes (additive programming noise scaled to each layer's largest weight, a per-device
   multiplicative spread like that of uncompensated drift exponents) and quantises the inputs as
   the DAC does.
5. Threshold: the simulated chip (1 h after programming, drift compensated, several seeds) runs on
   the training scenes; the card's threshold is the highest at which the debounced gate passes
   ``--recall`` of the training wake words.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from gate_core import cards
from gate_core.metrics import wake_windows
from sensors.analog.config import AnalogConfig, CrossbarConfig
from sensors.analog.crossbar_decision import CrossbarDecision, CrossbarNet, delay_rows
from sensors.analog.frontend import AnalogFrontEnd
from sensors.analog.logic import DebouncedGate, ticks_for

log = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parents[2] / "datasets" / "recipes"
ENGINES = ["espeak", "pico", "rhvoice"]  # the training engines; no other speaker is ever rendered here
TRAIN_SCENES = (("office_babble", 7101), ("noisy_kitchen", 7102), ("quiet_home", 7103),
                ("office_babble", 7201), ("noisy_kitchen", 7202), ("quiet_home", 7203),
                ("noisy_kitchen", 7302), ("noisy_kitchen", 7402), ("noisy_kitchen", 7502), ("noisy_kitchen", 7602))
EVAL_SCENES = (("office_babble", 303), ("noisy_kitchen", 202), ("quiet_home", 101))
SCENE_S = 1800.0
TAPS = tuple(range(0, 81, 5))          # 17 taps over 0.8 s
SMOOTH_MS = 25.0
FULL_SCALE_DB = 40.0
POS_FROM_S, POS_TO_S = 0.45, 0.25      # keyword-like ticks: [start + from, end + to]
IGNORE_BEFORE_S, IGNORE_AFTER_S = 0.3, 0.6
CONFUSABLE_WEIGHT = 0.3
AMBIENT_KINDS, AMBIENT_WEIGHT = ("tv", "music"), 10.0  # negatives while these ambient sounds play
NEG_STRIDE = 3                         # keep every third negative tick (neighbours are nearly equal)
PASS_OPEN_BY_S = 1.0                   # a wake word passes if the gate opens by start + this (the pre-roll)
PASS_OPEN_AT_END_S = 0.1               # ... and is open at end + this (where the spotter fires)
MIN_OPEN_S = 0.1                       # debounce the card recommends (analog.min_open_s): the output flickers
ANALOG_PREROLL_S = 1.0                 # pre-roll the card recommends (segmenter.analog_preroll_s)


def scene_dir(cache: Path, kind: str, recipe: str, seed: int) -> Path:
    return cache / f"{kind}_{recipe}_{seed}"


def render_scene(recipe_name: str, seed: int, out: Path, duration_s: float = SCENE_S) -> Path:
    """Render one scene with the training engines (cached: an existing complete render is kept)."""
    from sensors.scenario import load_recipe, render

    if (out / "labels.csv").is_file() and (out / "scenario.json").is_file():
        return out
    recipe = load_recipe(RECIPES / f"{recipe_name}.yaml")
    tts = recipe.tts.model_copy(update={"engines": ENGINES})
    recipe = recipe.model_copy(update={"seed": seed, "duration_s": duration_s, "tts": tts})
    out.parent.mkdir(parents=True, exist_ok=True)
    render(recipe, out, force=True)
    return out


def scene_levels(directory: Path, board_seed: int, cache: Path | None = None) -> tuple[np.ndarray, list, np.ndarray]:
    """(levels above floor per tick (n, channels) float32, labels, the comparator gate per tick) of a scene."""
    from sensors.scenario import scenario_inputs
    from sensors.wavfile import AudioFileSource

    audio, labels = scenario_inputs(directory)
    cached = None if cache is None else cache / f"levels_{directory.name}_board{board_seed}.npz"
    if cached is not None and cached.is_file():
        with np.load(cached) as z:
            return z["rel"], labels, z["comparator"]
    fe = AnalogFrontEnd(config=AnalogConfig(nonideal={"seed": board_seed}))
    rows, gates = [], []
    for block in AudioFileSource(audio, read_block=1 << 18).blocks():
        b = fe.process(block)
        rows.append((b.envelopes_db - b.floor_db).astype(np.float32))
        gates.append(b.open)
    rel, comparator = np.concatenate(rows), np.concatenate(gates)
    if cached is not None:
        np.savez(cached, rel=rel, comparator=comparator)
    return rel, labels, comparator


def tick_labels(labels: list, n_ticks: int, tick_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(target 0/1, weight) per tick from a scene's labels."""
    t = (np.arange(n_ticks) + 1) * tick_s
    y = np.zeros(n_ticks, np.float32)
    w = np.ones(n_ticks, np.float32)
    for lab in labels:
        if getattr(lab, "kind", "") in AMBIENT_KINDS:
            w[(t >= lab.start_s) & (t <= lab.end_s)] = AMBIENT_WEIGHT
    for lab in labels:
        if lab.label == "confusable":
            w[(t >= lab.start_s) & (t <= lab.end_s + POS_TO_S)] = CONFUSABLE_WEIGHT
    for win in wake_windows(labels):
        w[(t >= win.start_s - IGNORE_BEFORE_S) & (t <= win.end_s + IGNORE_AFTER_S)] = 0.0
        pos = (t >= win.start_s + POS_FROM_S) & (t <= win.end_s + POS_TO_S)
        y[pos] = 1.0
        w[pos] = 1.0
    return y, w


def feature_spec(n_channels: int, tick_ms: float) -> CrossbarNet:
    """The feature path with no layers yet (for computing training rows)."""
    return CrossbarNet(taps=TAPS, smooth_ms=SMOOTH_MS, full_scale_db=FULL_SCALE_DB, tick_ms=tick_ms,
                       n_channels=n_channels, threshold=0.0, layers=())


def build_dataset(scenes: list[tuple[np.ndarray, list]], spec: CrossbarNet, tick_s: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, ws = [], [], []
    for rel, labels, _ in scenes:
        y, w = tick_labels(labels, rel.shape[0], tick_s)
        keep = (y > 0) | ((w > 0) & (np.arange(y.size) % NEG_STRIDE == rng.integers(NEG_STRIDE)))
        x = delay_rows(spec, rel, tick_s)[keep].astype(np.float32)
        xs.append(x)
        ys.append(y[keep])
        ws.append(w[keep])
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)


def _hw_noise(w: np.ndarray, rng: np.random.Generator, add_sd: float, mul_sd: float) -> np.ndarray:
    scale = float(np.abs(w).max()) or 1.0
    return w * (1.0 + mul_sd * rng.standard_normal(w.shape)) + add_sd * scale * rng.standard_normal(w.shape)


def train_network(x: np.ndarray, y: np.ndarray, wt: np.ndarray, *, hidden: int, epochs: int, seed: int,
                  add_sd: float = 0.04, mul_sd: float = 0.1, dac_bits: int = 8, batch: int = 1024,
                  lr: float = 3e-3, l2: float = 1e-4) -> list[list[np.ndarray]]:
    """Two-layer MLP (ReLU hidden, logit out), weighted BCE, PCM-like weight noise on every step."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    pos = float((wt * y).sum())
    neg = float((wt * (1 - y)).sum())
    # Balance the classes: positives are a few percent of the ticks.
    cls_w = np.where(y > 0, 0.5 / max(pos, 1.0), 0.5 / max(neg, 1.0)).astype(np.float64) * n
    sample_w = wt * cls_w
    params = [rng.standard_normal((d, hidden)) * np.sqrt(2.0 / d), np.zeros(hidden),
              rng.standard_normal((hidden, 1)) * np.sqrt(1.0 / hidden), np.zeros(1)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    q = float(2 ** (dac_bits - 1) - 1)
    for epoch in range(epochs):
        order = rng.permutation(n)
        rate = lr * (0.5 * (1 + np.cos(np.pi * epoch / epochs)))
        total = 0.0
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            xb = np.round(x[idx].astype(np.float64) * q) / q
            yb, sw = y[idx].astype(np.float64), sample_w[idx]
            w1 = _hw_noise(params[0], rng, add_sd, mul_sd)
            w2 = _hw_noise(params[2], rng, add_sd, mul_sd)
            h_pre = xb @ w1 + params[1]
            h = np.maximum(h_pre, 0.0)
            z = (h @ w2)[:, 0] + params[3][0]
            p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
            total += float(np.sum(sw * -(yb * np.log(p + 1e-9) + (1 - yb) * np.log(1 - p + 1e-9))))
            g_z = (sw * (p - yb) / idx.size)[:, None]
            g_w2 = h.T @ g_z
            g_b2 = g_z.sum(axis=0)
            g_h = (g_z @ w2.T) * (h_pre > 0)
            g_w1 = xb.T @ g_h
            g_b1 = g_h.sum(axis=0)
            grads = [g_w1 + l2 * params[0], g_b1, g_w2 + l2 * params[2], g_b2]
            step += 1
            for k, g in enumerate(grads):
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g * g
                mh = m[k] / (1 - 0.9 ** step)
                vh = v[k] / (1 - 0.999 ** step)
                params[k] -= rate * mh / (np.sqrt(vh) + 1e-8)
        log.info("epoch %d: loss %.4f", epoch + 1, total / n)
    return [[params[0], params[1]], [params[2], params[3]]]


def adc_ranges(x: np.ndarray, layers: list[list[np.ndarray]], pct: float = 99.9) -> list[float]:
    """Each layer's column-ADC full scale: a high percentile of |pre-activation| on the training rows."""
    out, h = [], x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        pre = h @ w + b
        out.append(float(np.percentile(np.abs(pre), pct)) * 1.25)
        h = np.maximum(pre, 0.0) if i < len(layers) - 1 else pre
    return out


def gate_of(decision: np.ndarray, tick_s: float, min_open_s: float = MIN_OPEN_S) -> np.ndarray:
    gate = DebouncedGate(min_open_ticks=ticks_for(min_open_s, tick_s),
                         hangover_ticks=ticks_for(AnalogConfig().hangover_s, tick_s))
    return gate(decision, 0)


def passed_wake_words(gate: np.ndarray, labels: list, tick_s: float) -> tuple[int, int]:
    """(passed, total): the gate is open at end + PASS_OPEN_AT_END_S in a run opened by start + PASS_OPEN_BY_S."""
    n = gate.size
    starts = np.maximum.accumulate(np.where(gate & ~np.concatenate([[False], gate[:-1]]), np.arange(n), -1))
    ok = total = 0
    for win in wake_windows(labels):
        i = int(round((win.end_s + PASS_OPEN_AT_END_S) / tick_s)) - 1
        total += 1
        if 0 <= i < n and gate[i] and (starts[i] + 1) * tick_s <= win.start_s + PASS_OPEN_BY_S:
            ok += 1
    return ok, total


def scores_on(net: CrossbarNet, rel: np.ndarray, tick_s: float, *, seed: int,
              cfg: CrossbarConfig | None = None) -> np.ndarray:
    dec = CrossbarDecision(net, cfg or CrossbarConfig(), seed=seed, tick_s=tick_s)
    return np.concatenate([dec(rel[i:i + 4096])[1] for i in range(0, rel.shape[0], 4096)])


def comparator_recall(scenes: list[tuple[np.ndarray, list, np.ndarray]], tick_s: float) -> float:
    """Share of the scenes' wake words the comparator gate passes (same criterion as the crossbar's)."""
    ok = tot = 0
    for _, labels, gate in scenes:
        a, b = passed_wake_words(gate, labels, tick_s)
        ok, tot = ok + a, tot + b
    return ok / max(tot, 1)


def pick_threshold(net: CrossbarNet, scenes: list[tuple[np.ndarray, list, np.ndarray]], tick_s: float, *,
                   recall: float, chip_seeds: range) -> tuple[float, dict]:
    """Highest threshold at which the gate passes ``recall`` of the wake words over all chips and scenes."""
    runs = [(scores_on(net, rel, tick_s, seed=s), labels) for s in chip_seeds for rel, labels, _ in scenes]
    grid = np.linspace(-6.0, 6.0, 121)
    best = float(grid[0])
    table = {}
    for th in grid:
        ok = tot = 0
        open_ticks = all_ticks = 0
        for score, labels in runs:
            g = gate_of(score >= th, tick_s)
            a, b = passed_wake_words(g, labels, tick_s)
            ok, tot = ok + a, tot + b
            open_ticks, all_ticks = open_ticks + int(g.sum()), all_ticks + g.size
        table[round(float(th), 2)] = {"recall": ok / max(tot, 1), "duty": open_ticks / max(all_ticks, 1)}
        if ok / max(tot, 1) >= recall:
            best = float(th)
    return best, table[round(best, 2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="network file to write (.npz); the card goes next to it")
    ap.add_argument("--cache-dir", type=Path, required=True, help="scene renders and front-end levels (not the repo)")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--recall", type=float, default=None,
                    help="training wake words the gate must pass (default: as many as the comparator gate passes)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    cfg = AnalogConfig()
    tick_s = cfg.tick_ms / 1000.0
    scenes = []
    for k, (recipe, seed) in enumerate(TRAIN_SCENES):
        d = render_scene(recipe, seed, scene_dir(args.cache_dir, "train", recipe, seed))
        scenes.append(scene_levels(d, board_seed=100 + k, cache=args.cache_dir))
        log.info("scene %s seed %d: %d ticks", recipe, seed, scenes[-1][0].shape[0])
    spec = feature_spec(cfg.channel_count, cfg.tick_ms)
    x, y, w = build_dataset(scenes, spec, tick_s, np.random.default_rng(args.seed))
    log.info("training rows: %d (%d keyword-like)", y.size, int(y.sum()))
    layers = train_network(x, y, w, hidden=args.hidden, epochs=args.epochs, seed=args.seed)
    ranges = adc_ranges(x, layers)
    net = CrossbarNet(taps=spec.taps, smooth_ms=spec.smooth_ms, full_scale_db=spec.full_scale_db,
                      tick_ms=spec.tick_ms, n_channels=spec.n_channels, threshold=0.0,
                      layers=tuple((lw, lb, r) for (lw, lb), r in zip(layers, ranges, strict=True)))
    target = comparator_recall(scenes, tick_s) if args.recall is None else args.recall
    threshold, at = pick_threshold(net, scenes, tick_s, recall=target, chip_seeds=range(3))
    meta = {"train_scenes": [f"{r} seed {s}, {SCENE_S:g} s" for r, s in TRAIN_SCENES], "engines": ENGINES,
            "hidden": args.hidden, "epochs": args.epochs, "seed": args.seed, "recall_target": round(target, 4),
            "recommended": {"analog.min_open_s": MIN_OPEN_S, "segmenter.analog_preroll_s": ANALOG_PREROLL_S},
            "train_recall": round(at["recall"], 4), "train_duty": round(at["duty"], 4)}
    net = CrossbarNet(taps=net.taps, smooth_ms=net.smooth_ms, full_scale_db=net.full_scale_db, tick_ms=net.tick_ms,
                      n_channels=net.n_channels, threshold=threshold, layers=net.layers, meta=meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    net.save(args.out)
    card = {"model": args.out.name, "format": "gate.crossbar/1", "task": "keyword-like or not, per 10 ms tick, "
            "on the analog front end's envelopes above floor, before any audio is digitised",
            "inputs": {"channels": net.n_channels, "taps_ticks": list(net.taps), "smooth_ms": net.smooth_ms,
                       "full_scale_db": net.full_scale_db},
            "layers": [list(lw.shape) for lw, _, _ in net.layers], "macs_per_tick": net.macs_per_tick,
            "threshold": threshold, "training": {**meta, "rows": int(y.size), "keyword_like_rows": int(y.sum()),
                                                 "labels": {"positive_s": [POS_FROM_S, POS_TO_S],
                                                            "confusable_weight": CONFUSABLE_WEIGHT,
                                                            "ambient_weight": {k: AMBIENT_WEIGHT
                                                                               for k in AMBIENT_KINDS}},
                                                 "hardware_noise": {"additive_sd_of_max": 0.04,
                                                                    "multiplicative_sd": 0.1, "dac_bits": 8},
                                                 "wall_s": round(time.monotonic() - t0, 1)},
            "measured": {}}
    # Keep figures measured on evaluation scenes by bench/crossbar_sweep.py; the card is split into
    # the runtime card (.json) and the evaluation record (.eval.json), see gate_core/cards.py.
    card["measured"] = cards.read_record(args.out).get("measured", {})
    cards.write_model_card(args.out, card)
    log.info("threshold %.2f: training recall %.3f, duty %.3f; wrote %s (%.0f s)", threshold, at["recall"],
             at["duty"], args.out, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
