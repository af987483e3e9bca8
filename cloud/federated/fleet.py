"""`gate-cloud federate`: a simulated fleet learns its own speakers and rooms on Flower.

Each node has its own speakers (one or two of the recipe's ``eval_voices``, which the base model never
trained on, at the node's own speaking rate and pitch), its own room (scene kind) and noise level. It
replays a collection scene through its KWS stage; every fire becomes the segment the node would upload
(pre-roll, phrase, command window) and the cloud verifier's verdict on it labels the windows around the
fire in the node's feature store (gate.fedstore); background windows the model scores low join them.
Then the Flower rounds run (cloud.federated.flower), the server requantizes the head into a new int8
model, scores it against the base model on dev scenes of training voices (which also choose the
candidate's threshold, dev_threshold), and releases it only when it is no worse there. Before/after
figures come from each node's held-out scene (same speakers and room, other utterances): the base model
at its tuned threshold, the candidate at the one the dev scenes chose (and at the base one), with
gate.metrics' detection rule.

Speech: espeak-ng, mbrola through it and pico2wave only (the recipe's engines), cached under
``cache_dir`` (cloud.train.data.cached_renders).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cloud.federated import flower
from cloud.train import corpus, scenes
from cloud.train.data import cached_renders
from cloud.train.evaluate import detect, posteriors, segment, verified
from cloud.train.recipe import Recipe
from cloud.train.seeds import step_rng
from gate.energy import load_profile
from gate.fedstore import AFTER_OFFSETS_S, fire_windows, is_background
from gate.kws.config import KwsConfig
from gate.kws.featurize import Featurizer
from gate.segmenter import SegmenterConfig
from gate_core import metrics
from gate_core.errors import ProfileError

log = logging.getLogger(__name__)
SR = 16_000
ROOMS = ("quiet_home", "noisy_kitchen", "office_babble")


@dataclass(frozen=True)
class Sizes:
    """How much each node says and hears (the defaults fit 20 nodes x 5 rounds in well under an hour)."""

    positives: int = 36
    speech: int = 40
    confusables: int = 12
    commands: int = 10
    collect_minutes: float = 10.0
    heldout_minutes: float = 6.0
    keywords_per_hour: float = 150.0
    confusables_per_hour: float = 30.0
    dev_minutes: float = 4.0
    epochs: int = 12
    lr: float = 2e-3
    # While it collects labels a node also uploads candidates above this posterior (below its detection
    # threshold, so they wake nothing): the verifier's verdicts on them label its near misses and near false
    # accepts, the windows a fine-tune learns most from. More uploads, counted in the report.
    label_threshold: float = 0.8
    # The positives' share of the local loss (a node stores about eight negatives per positive). At a quarter
    # a false accept cost more than a miss; at a half the head gains more margin on its own speakers' wake
    # words, and the threshold the dev scenes choose (threshold_steps) takes back the false accepts.
    positive_share: float = 0.5
    # Each labelled negative (rejected segments, command windows, the cut-short phrase) is seen this many
    # times an epoch, against once for a background window.
    hard_negative_repeat: int = 1
    # The candidate's threshold is picked on the dev scenes among 1 - (1 - t) * f, t the base model's
    # (fleet.dev_threshold); (1.0,) keeps t.
    threshold_steps: tuple[float, ...] = (1.0, 0.7, 0.5)


@dataclass(frozen=True)
class NodeSpec:
    index: int
    voices: tuple[str, ...]
    room: str
    rate: tuple[int, int]
    pitch: tuple[int, int]
    level_jitter_db: float


def core_watts(profile: str = "pi4") -> float:
    """W per busy core of ``profile`` (a shipped profile's name or a YAML path): its ``host.busy_core_w``,
    the figure its CPU-bound stages are derived from. The on-node training joules are priced with it."""
    w = load_profile(profile).host.busy_core_w
    if not w:
        origin = profile if profile.endswith((".yaml", ".yml")) else f"gate/profiles/{profile}.yaml"
        raise ProfileError(f"{origin}: host.busy_core_w: not given (0); on-node training cannot be priced")
    return float(w)


def node_specs(n: int, eval_voices: list[str], seed: int) -> list[NodeSpec]:
    """Non-IID nodes: one or two held-out voices each, own rate/pitch band, room and noise jitter."""
    rng = np.random.default_rng([seed, 17])
    out = []
    for i in range(n):
        k = 1 + int(rng.random() < 0.4)
        first = i % len(eval_voices)
        voices = tuple(eval_voices[(first + j) % len(eval_voices)] for j in range(min(k, len(eval_voices))))
        r0 = int(rng.integers(130, 200))
        p0 = int(rng.integers(25, 70))
        out.append(NodeSpec(i, voices, ROOMS[int(rng.integers(len(ROOMS)))], (r0, r0 + 20), (p0, p0 + 10),
                            float(rng.uniform(0, 6))))
    return out


def _voices_by_id(recipe: Recipe) -> tuple[dict, list, list]:
    es = corpus.engines(recipe.corpus.engines)
    train_v, eval_v = corpus.split_voices(es, recipe.corpus.eval_voices, recipe.corpus.exclude_voices)
    return {v.id: v for v in eval_v}, train_v, list(es.variants)


def node_renders(recipe: Recipe, specs: list[NodeSpec], sizes: Sizes, cache: Path, workers: int,
                 seed: int | None = None) -> list[list]:
    """Every node's utterances (one synthesis, cached): positives, speech, confusables, commands, drawn
    from the fleet's ``seed`` (default the recipe's)."""
    seed = recipe.seed if seed is None else seed
    by_id, _, _ = _voices_by_id(recipe)
    items, owner = [], []
    for s in specs:
        vs = [by_id[v] for v in s.voices if v in by_id]
        if not vs:
            raise ValueError(f"node {s.index}: none of {s.voices} is installed")
        part = corpus.plan(recipe.phrase, voices=vs, variants=[], rng=step_rng(seed, f"fed-node{s.index}"),
                           n_pos=sizes.positives, n_conf=sizes.confusables, n_speech=sizes.speech,
                           n_cmd=sizes.commands, rate=s.rate, pitch=s.pitch)
        items += part
        owner += [s.index] * len(part)
    # Each label carries its node ("positive@3", "command:stop@3") through synthesis and the cache key.
    tagged = [(f"{k}@{o}", u) for (k, u), o in zip(items, owner, strict=True)]
    renders = cached_renders(cache, "fed-nodes", tagged, lambda: corpus.synthesise(
        tagged, workers=workers, desc="synth fleet"))
    per: list[list] = [[] for _ in specs]
    for r in renders:
        label, _, o = r.label.rpartition("@")
        per[int(o)].append(corpus.SpeechRender.of_label(r.text, r.voice_id, label, r.audio))
    return per


def dev_renders(recipe: Recipe, sizes: Sizes, cache: Path, workers: int) -> list:
    """Training voices (as the pipeline's dev scenes): the release gate's scenes."""
    _, train_v, variants = _voices_by_id(recipe)
    items = corpus.plan(recipe.phrase, voices=train_v, variants=variants, rng=step_rng(recipe.seed, "fed-dev"),
                        n_pos=max(30, sizes.positives), n_conf=max(12, sizes.confusables),
                        n_speech=max(60, sizes.speech), n_cmd=max(10, sizes.commands),
                        rate=recipe.corpus.rate_wpm, pitch=recipe.corpus.pitch)
    return cached_renders(cache, "fed-dev", items, lambda: corpus.synthesise(items, workers=workers, desc="synth dev"))


def _halves(rs: list, kinds: tuple[str, ...]) -> tuple[list, list]:
    sel = [r for r in rs if r.kind.startswith(kinds)]
    return sel[: len(sel) // 2] or sel, sel[len(sel) // 2:] or sel


def _scene(room: str, rs: list, minutes: float, sizes: Sizes, rng, jitter: float) -> scenes.Scene:
    return scenes.build(room, minutes=minutes, keywords_per_hour=sizes.keywords_per_hour, rng=rng,
                        positives=[r for r in rs if r.kind == "positive"] or [r for r in rs if "positive" in r.kind],
                        others=[r for r in rs if r.kind == "speech"],
                        commands=[r for r in rs if r.kind == "command"],
                        confusables=[r for r in rs if r.kind == "confusable"],
                        confusables_per_hour=sizes.confusables_per_hour, level_jitter_db=jitter)


def node_scenes(recipe: Recipe, spec: NodeSpec, rs: list, sizes: Sizes,
                seed: int | None = None) -> tuple[scenes.Scene, scenes.Scene]:
    """(collection scene, held-out scene): same speakers and room, different utterances; placed from the
    fleet's ``seed`` (default the recipe's)."""
    seed = recipe.seed if seed is None else seed
    a, b = [], []
    for kinds in (("positive",), ("speech",), ("confusable",), ("command",)):
        x, y = _halves(rs, kinds)
        a += x
        b += y
    rng_c, rng_h = step_rng(seed, f"fed-collect{spec.index}"), step_rng(seed, f"fed-heldout{spec.index}")
    return (_scene(spec.room, a, sizes.collect_minutes, sizes, rng_c, spec.level_jitter_db),
            _scene(spec.room, b, sizes.heldout_minutes, sizes, rng_h, spec.level_jitter_db))


def collect(root: Path, scene: scenes.Scene, cfg: KwsConfig, verifier, *, seed: int,
            label_threshold: float | None = None) -> dict:
    """Replay ``scene`` through the node's KWS; each fire's segment goes to the verifier and its verdict
    labels the windows in the node's store. Returns what was collected."""
    store = flower.open_store(root, cfg.model_path)
    fz = Featurizer(cfg.feature_kind)
    frames = store.frames
    scored = posteriors(cfg, scene)
    detections = detect(cfg, scored)
    lower = label_threshold is not None and label_threshold < (cfg.threshold or 1.0)
    fires = detect(cfg.model_copy(update={"threshold": label_threshold}), scored) if lower else detections
    after = SegmenterConfig().command_window_s
    accepted = segment_bytes = 0
    for j, t in enumerate(fires):
        seg, fire_in = segment(audio=scene.audio, t=t, after_s=after)
        ok = bool(verified(verifier, scene.audio, t))
        store.hold(f"seg{j}", fire_windows(fz, seg, fire_in, frames, accepted=ok), audio_bytes=seg.size * 2)
        store.hold_after(f"seg{j}", fire_windows(fz, seg, fire_in, frames, offsets_s=AFTER_OFFSETS_S))
        store.verdict(f"seg{j}", ok)
        accepted += ok
        segment_bytes += seg.size * 2
    # Background: a share of windows the model scores firmly low, away from any fire (gate.fedstore's rule,
    # which the node follows too).
    rng = np.random.default_rng(seed)
    # Only windows with sound in them (what the node's analog gate would pass): other people's talk, the
    # room's clatter; silence teaches the head nothing.
    x = scene.audio.astype(np.float64)
    c = np.concatenate([[0.0], np.cumsum(x * x)])
    ends = np.arange(SR, x.size + 1, SR // 10)                     # 1 s windows every 0.1 s
    sec_rms = np.sqrt((c[ends] - c[ends - SR]) / SR)                # sec_rms[k]: the second ending at 1 + k/10 s
    loud = np.quantile(sec_rms, 0.5)
    # (The node needs no such proxy: its KWS scores only what its analog gate passed.)
    cand = [s.t_s for s in scored if s.t_s > 1.2 and sec_rms[min(sec_rms.size - 1, int(s.t_s * 10) - 10)] > loud
            and is_background(s.posterior, s.t_s, fires)]
    # About three background windows per labelled one (at least 100), within the store's background share.
    n_bg = min(store.background_cap, len(cand), max(100, 3 * len(store.x)))
    picks = sorted(rng.choice(len(cand), size=n_bg, replace=False)) if n_bg else []
    bg = []
    for i in picks:
        t = cand[i]
        a = int((t - 1.3) * SR)
        f = fz.compute(scene.audio[max(0, a):int(t * SR)])
        if f.shape[0] >= frames:
            bg.append(f[-frames:])
    if bg:
        store.add_background(np.stack(bg))
    return {"detections": len(detections), "fires": len(fires), "accepted": accepted, "rejected": len(fires) - accepted,
            "segment_audio_bytes": segment_bytes, **store.counts}


def score_scene(cfg: KwsConfig, scene: scenes.Scene) -> metrics.Score:
    return scene_scores(cfg, scene)[0]


def scene_scores(cfg: KwsConfig, scene: scenes.Scene, scored: list | None = None) -> tuple[metrics.Score, float]:
    """The detection score at ``cfg``'s threshold, and the mean over wake words of the highest posterior
    inside each one's detection window (how sure the model is of the node's own speakers, threshold aside).
    ``scored``: the model's posteriors over the scene when already computed."""
    scored = posteriors(cfg, scene) if scored is None else scored
    t = np.array([s.t_s for s in scored])
    p = np.array([s.posterior for s in scored])
    peaks = [float(p[(t >= w.lo) & (t <= w.hi)].max(initial=0.0)) for w in metrics.span_windows(scene.keywords)]
    return (metrics.span_score(detect(cfg, scored), scene.keywords, scene.hours),
            float(np.mean(peaks)) if peaks else 0.0)


def candidate_thresholds(t: float, steps: tuple[float, ...]) -> list[float]:
    """The thresholds the release gate may give the candidate: ``1 - (1 - t) * f`` for 1 and each ``f`` in
    ``steps`` (``t`` the base model's threshold, first)."""
    return [round(1 - (1 - float(t)) * f, 6) for f in dict.fromkeys((1.0, *steps))]


def dev_threshold(cfg: KwsConfig, dev: list[scenes.Scene], base: metrics.Score, steps: tuple[float, ...],
                  scored: list | None = None) -> tuple[float, dict[float, metrics.Score]]:
    """The candidate's threshold, chosen on the dev scenes: of ``1 - (1 - t) * f`` for each ``f`` in
    ``steps`` and 1 (``t`` the base model's threshold; f = 1 is t itself), the highest at which the candidate
    misses no more dev wake words than the base model does at ``t``, else ``t``. A fine-tune that pushes
    every posterior up, its own speakers' confusables with them, buys back false accepts with the margin it
    gained. Returns it and the candidate's dev score at every threshold tried. ``scored``: the candidate's
    posteriors over ``dev`` when already computed."""
    t = float(cfg.threshold)
    scored = [posteriors(cfg, s) for s in dev] if scored is None else scored
    tried: dict[float, metrics.Score] = {}
    for th in candidate_thresholds(t, steps):
        c = cfg.model_copy(update={"threshold": th})
        tried[th] = metrics.combine(metrics.span_score(detect(c, sc), s.keywords, s.hours)
                                    for sc, s in zip(scored, dev, strict=True))
    ok = [th for th, sc in tried.items() if sc.keywords - sc.hits <= base.keywords - base.hits]
    return (max(ok) if ok else round(t, 6)), tried


def no_worse(base: metrics.Score, new: metrics.Score) -> bool:
    """The release gate: no more misses and no more false accepts than the base model on the same scenes."""
    return (new.keywords - new.hits) <= (base.keywords - base.hits) and new.false_accepts <= base.false_accepts


def collect_fleet(recipe: Recipe, fleet: Path, specs: list[NodeSpec], per: list[list], sizes: Sizes,
                  base_cfg: KwsConfig, seed: int) -> tuple[list[dict], list[scenes.Scene]]:
    """Every node's store filled from its collection scene (emptied first), and its held-out scene scored
    with the base model. Returns (one row per node, the held-out scenes)."""
    from cloud.verifier import Verifier

    verifier = Verifier(threshold=recipe.evaluation.verifier_threshold)
    rows, heldout = [], []
    for spec, rs in zip(specs, per, strict=True):
        root = flower.node_dir(fleet, spec.index)
        if (root / "store").exists():
            for f in (root / "store").iterdir():
                f.unlink()
        col, held = node_scenes(recipe, spec, rs, sizes, seed)
        got = collect(root, col, base_cfg, verifier, seed=seed + spec.index, label_threshold=sizes.label_threshold)
        heldout.append(held)
        rows.append({"node": spec.index, "voices": list(spec.voices), "room": spec.room,
                     "rate_wpm": list(spec.rate), "pitch": list(spec.pitch),
                     "collected": got, **_scored("before", base_cfg, held)})
    return rows, heldout


def dev_scenes(recipe: Recipe, sizes: Sizes, cache: Path, workers: int, seed: int) -> list[scenes.Scene]:
    """The release gate's scenes: training voices in each room."""
    dev_r = dev_renders(recipe, sizes, cache, workers)
    return [_scene(room, dev_r, sizes.dev_minutes, sizes, step_rng(seed, f"fed-dev{room}"), 0.0) for room in ROOMS]


def federate(recipe: Recipe, out: Path, *, nodes: int, rounds: int, mu: float = 0.01, trainable: str = "pw+fc",
             sizes: Sizes = Sizes(), cache_dir: Path | None = None, base_model: Path | None = None,
             seed: int | None = None, release=None) -> dict:
    """The whole run; writes ``out/federated.json`` (and the released model when it passes) and returns it."""
    from cloud.federated.quantize import with_head
    from gate.kws.stage import default_model_path, tuned_threshold

    t_start = time.time()
    seed = recipe.seed if seed is None else seed
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_dir or out / "cache"
    base_model = Path(base_model or default_model_path("logmel"))
    threshold = tuned_threshold(base_model)
    base_cfg = KwsConfig(model_path=str(base_model), feature_kind="logmel", threshold=threshold)
    workers = recipe.corpus.workers
    specs = node_specs(nodes, list(recipe.corpus.eval_voices), seed)
    per = node_renders(recipe, specs, sizes, cache, workers, seed)
    fleet = out / "fleet"
    report: dict = {"seed": seed, "nodes": nodes, "rounds": rounds, "strategy": "FedProx" if mu > 0 else "FedAvg",
                    "proximal_mu": mu, "trainable": trainable, "threshold": threshold, "base_model": str(base_model),
                    "sizes": asdict(sizes)}
    t0 = time.time()
    report["per_node"], heldout = collect_fleet(recipe, fleet, specs, per, sizes, base_cfg, seed)
    report["collect_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    result = flower.run(fleet_dir=fleet, base_model=base_model, nodes=nodes, rounds=rounds, mu=mu,
                        epochs=sizes.epochs, lr=sizes.lr, trainable=trainable, seed=seed,
                        positive_share=sizes.positive_share, hard_negative_repeat=sizes.hard_negative_repeat)
    report["flower_s"] = round(time.time() - t0, 1)
    new_bytes = with_head(base_model.read_bytes(), result["head"])
    candidate = out / "candidate" / "kws_logmel.tflite"
    candidate.parent.mkdir(parents=True, exist_ok=True)
    candidate.write_bytes(new_bytes)
    # The release gate: dev scenes of training voices, base against candidate; the candidate's threshold is
    # chosen there (its own speakers' held-out scenes play no part in it).
    t0 = time.time()
    dev = dev_scenes(recipe, sizes, cache, workers, seed)
    new_cfg = base_cfg.model_copy(update={"model_path": str(candidate)})
    b = metrics.combine(score_scene(base_cfg, s) for s in dev)
    new_threshold, tried = dev_threshold(new_cfg, dev, b, sizes.threshold_steps)
    new_cfg = new_cfg.model_copy(update={"threshold": new_threshold})
    n = tried[new_threshold]
    passed = no_worse(b, n)
    report["release_gate"] = {"dev_scenes": list(ROOMS), "dev_minutes_each": sizes.dev_minutes,
                              "base": b.as_dict(), "candidate": n.as_dict(), "candidate_threshold": new_threshold,
                              "thresholds_tried": {str(t): s.as_dict() for t, s in tried.items()}, "released": passed}
    report["gate_s"] = round(time.time() - t0, 1)
    report["candidate_threshold"] = new_threshold
    card = json.loads(base_model.with_suffix(".json").read_text())
    card.update({"federated": {"base_sha256": _sha(base_model.read_bytes()), "nodes": nodes, "rounds": rounds,
                               "strategy": report["strategy"], "trainable": trainable},
                 "detector": {"threshold": new_threshold}})
    candidate.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")

    # Per node after, on its own held-out scene, at the candidate's threshold.
    for row, held in zip(report["per_node"], heldout, strict=True):
        row.update(_scored("after", new_cfg, held, also_at=threshold))
    report["rounds_detail"] = _rounds(result["rounds"])
    core_w = core_watts("pi4")
    for row in report["per_node"]:
        mine = [m for r in result["rounds"] for m in r if int(m["partition"]) == row["node"]]
        cpu = sum(float(m["cpu-s"]) for m in mine)
        row["update_bytes_per_round"] = int(mine[0]["update-bytes"]) if mine else 0
        row["train_cpu_s"] = round(cpu, 3)
        row["train_j_pi4"] = round(cpu * core_w, 3)
    report["overall"] = _overall(report["per_node"])
    report["release"] = release_model(out, new_bytes, card, passed, release)
    report["total_s"] = round(time.time() - t_start, 1)
    flower.write_json(out / "federated.json", report)
    return report


def _scored(key: str, cfg: KwsConfig, scene: scenes.Scene, also_at: float | None = None) -> dict:
    """``{key: score}``; with ``also_at`` (another threshold) also ``{key_at_<t>: score}`` from the same
    posteriors."""
    scored = posteriors(cfg, scene)
    at = {key: cfg}
    if also_at is not None and also_at != cfg.threshold:
        at[f"{key}_at_{also_at:g}"] = cfg.model_copy(update={"threshold": also_at})
    out = {}
    for k, c in at.items():
        score, peak = scene_scores(c, scene, scored)
        out[k] = {**score.as_dict(), "keyword_peak_mean": round(peak, 4)}
    return out


def release_model(out: Path, model: bytes, card: dict, passed: bool, release=None) -> dict:
    """Hand a model that passed the gate to the release path: ``release(model_bytes, card)`` when given
    (the signed OTA publisher), else the model and its card are written to ``out/release/``."""
    if not passed:
        return {"released": False, "reason": "worse than the base model on the dev scenes"}
    if release is not None:
        return {"released": True, **(release(model, card) or {})}
    d = out / "release"
    d.mkdir(parents=True, exist_ok=True)
    (d / "kws_logmel.tflite").write_bytes(model)
    (d / "kws_logmel.json").write_text(json.dumps(card, indent=2) + "\n")
    return {"released": True, "path": str(d / "kws_logmel.tflite"), "sha256": _sha(model),
            "note": "written for the release path (gate-cloud release) to sign and publish"}


def _sha(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


def _rounds(rounds: list[list[dict]]) -> list[dict]:
    return [{"round": i + 1, "nodes": len(r), "update_bytes": int(sum(float(m["update-bytes"]) for m in r)),
             "mean_loss_last": round(float(np.mean([float(m["loss-last"]) for m in r])), 4) if r else None}
            for i, r in enumerate(rounds)]


def _overall(rows: list[dict]) -> dict:
    def tot(key: str) -> dict:
        kw = sum(r[key]["keywords"] for r in rows)
        hits = sum(r[key]["hits"] for r in rows)
        fa = sum(r[key]["false_accepts"] for r in rows)
        hours = sum(r[key]["non_wake_hours"] for r in rows)
        return {"keywords": kw, "misses": kw - hits, "miss_rate": round(1 - hits / kw, 4) if kw else 0.0,
                "false_accepts": fa, "fa_per_hour": round(fa / hours, 3) if hours else 0.0}

    before, after = tot("before"), tot("after")
    # The candidate at the base model's threshold too, when the dev scenes chose another.
    also = {k: tot(k) for k in (rows[0] if rows else {}) if k.startswith("after_at_")}
    worse = [r["node"] for r in rows if (r["after"]["keywords"] - r["after"]["hits"]) > (r["before"]["keywords"] -
             r["before"]["hits"]) or r["after"]["false_accepts"] > r["before"]["false_accepts"]]
    audio = sum(r["collected"]["segment_audio_bytes"] for r in rows)
    upd = [r["update_bytes_per_round"] for r in rows]
    return {"before": before, "after": after, **also,
            "miss_reduction": round(1 - after["misses"] / before["misses"], 4) if before["misses"] else None,
            "nodes_worse": worse, "segment_audio_bytes_total": audio,
            "update_bytes_per_node_per_round": int(np.median(upd)) if upd else 0,
            "train_cpu_s_total": round(sum(r["train_cpu_s"] for r in rows), 2),
            "train_j_pi4_total": round(sum(r["train_j_pi4"] for r in rows), 2)}
