"""The training run's evaluation: the tiny models' detector threshold tuned on dev scenes (training
voices), then scored on held-out-voice scenes, alone and behind each cloud verifier, with the command
recogniser reading what follows each verified detection.

The helpers below are what a node and the cloud do with a scene, and what `gate-cloud federate`
(cloud.federated.fleet) and `make compare` (cloud.compare) use as well: ``posteriors`` (the node's KWS
fed a second at a time), ``detect`` (its detector), ``segment`` (what it forwards), ``verified`` and
``verdicts`` (the cloud verifier's answer), ``pick_threshold`` and ``build_eval_scenes``.
Detections are scored with gate_core.metrics, each set of them matched to the wake phrases once
(``Matched``).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cloud.train import data, scenes
from cloud.train.recipe import Recipe
from gate.kws.config import KwsConfig
from gate.kws.stage import KeywordSpotter
from gate.segmenter import SegmenterConfig
from gate_core import metrics
from gate_core.detector import Detector

SR = 16_000
CURVE = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)
# Threshold candidates on the dev scenes: steps of 0.01 up to 0.99 (a sigmoid-output int8 model tops out
# at 255/256), then finer steps near 1 for a logit-output model, which still ranks windows there.
THRESHOLDS = np.round(np.arange(0.30, 0.995, 0.01), 3)
LOGIT_THRESHOLDS = np.concatenate([THRESHOLDS, [0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995, 0.99999]])


def reevaluate(recipe: Recipe, out: Path, *, cache_dir: Path | None = None,
               scene_minutes: float | None = None) -> dict:
    """Score the tiny models of a finished run on freshly built scenes (no training): its card with the
    new evaluation, for the caller to write. A directory without a run's card.json scores the shipped
    node models."""
    if (out / "card.json").is_file():
        card = json.loads((out / "card.json").read_text())
    else:
        out.mkdir(parents=True, exist_ok=True)
        card = {"phrase": recipe.phrase, "recipe": recipe.model_dump(mode="json"), "models": shipped_tiny(recipe)}
    cache = cache_dir or out
    eval_items = data.eval_plan(recipe)
    train_items = data.train_plan(recipe)[0]  # the dev scenes speak with training voices
    train_r = data.synthesised(recipe, cache, "train", train_items)
    eval_r = data.synthesised(recipe, cache, "eval", eval_items)
    tiny = {n: m for n, m in card["models"].items() if n.startswith("tiny_")}
    card["evaluation"] = evaluate_scenes(recipe, out, tiny, eval_r, train_r, scene_minutes=scene_minutes)
    card["recipe"]["evaluation"] = recipe.evaluation.model_dump(mode="json")
    return card


def shipped_tiny(recipe: Recipe) -> dict[str, dict]:
    """The shipped node models of the recipe's feature kinds, as the evaluation takes them."""
    from gate.kws.interpreter import read_evaluation
    from gate.kws.stage import default_model_path, read_card

    found = {}
    for kind in recipe.feature_kinds:
        path = default_model_path(kind)
        if path.is_file():
            found[f"tiny_{kind}"] = {**read_card(path), **read_evaluation(path), "feature_kind": kind,
                                     "shipped_path": str(path)}
    return found


def verifiers(out: Path, threshold: float) -> dict:
    """v1 and v2 as the evaluation runs them: this run's, else the shipped ones (v2 only where it exists)."""
    from cloud.verifier import DEFAULT_VERIFIER_V2, EmbeddingVerifier, Verifier

    own = out / "verifier.tflite"
    found = {"verifier": Verifier(threshold=threshold, **({"model_path": own} if own.is_file() else {}))}
    own2 = out / "verifier_v2.tflite"
    path2 = own2 if own2.is_file() else DEFAULT_VERIFIER_V2
    if path2.is_file():
        found["verifier_v2"] = EmbeddingVerifier(model_path=path2, threshold=threshold)
    return found


def build_eval_scenes(recipe: Recipe, eval_r: list, minutes: float) -> list[scenes.Scene]:
    """The held-out-voice scenes, one of each of the recipe's evaluation scene kinds."""
    ev = recipe.evaluation
    return [data.make_scene(recipe, k, eval_r, minutes, "scene")
            for k in tqdm(ev.scenes, desc="eval scenes", leave=False)]


class Matched:
    """One scene's detections matched to its wake phrases once (gate_core.metrics.span_assign): the
    score, the hits per voice, the false accepts by source and the hit phrases all come from that match."""

    def __init__(self, times: list[float], scene: scenes.Scene) -> None:
        self.times, self.scene = list(times), scene
        self.assigned = metrics.span_assign(self.times, scene.keywords)

    def score(self) -> metrics.Score:
        a, s = self.assigned, self.scene
        return metrics.Score(keywords=len(s.keywords), hits=int(np.sum(a >= 0)),
                             false_accepts=int(np.sum(a == metrics.FALSE_ACCEPT)),
                             duplicates=int(np.sum(a == metrics.DUPLICATE)),
                             non_wake_hours=metrics.non_wake_seconds(metrics.span_windows(s.keywords),
                                                                     s.hours * 3600.0) / 3600.0)

    def hits(self) -> list[tuple[float, int]]:
        """(fire time, index of the wake phrase it hit), in the order the detections were given."""
        return [(t, int(j)) for t, j in zip(self.times, self.assigned, strict=True) if j >= 0]

    def by_voice(self) -> dict:
        """metrics.by_voice: wake phrases and hits per speaking voice."""
        voices = self.scene.keyword_voices
        if len(voices) != len(self.scene.keywords):
            raise ValueError(f"{len(voices)} voices for {len(self.scene.keywords)} wake phrases")
        hit = {j for _, j in self.hits()}
        out: dict[str, tuple[int, int]] = {}
        for j, v in enumerate(voices):
            k, h = out.get(v, (0, 0))
            out[v] = (k + 1, h + int(j in hit))
        return dict(sorted(out.items()))

    def false_accept_sources(self) -> dict[str, int]:
        """metrics.false_accept_sources: false accepts counted by what was playing when each fired."""
        out: dict[str, int] = {}
        for t, j in zip(self.times, self.assigned, strict=True):
            if j == metrics.FALSE_ACCEPT:
                kind = self.scene.what_at(t)
                out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items()))


def evaluate_scenes(recipe: Recipe, out: Path, tiny_cards: dict, eval_r, train_r, *,
                    scene_minutes: float | None = None) -> dict:
    """Detector threshold chosen on dev scenes (training voices), then scored on held-out-voice scenes."""
    from cloud.commands import CommandRecognizer

    ev = recipe.evaluation
    minutes = scene_minutes or ev.minutes
    # Dev scenes (threshold tuning) speak with training voices: the held-out voices stay unseen until scoring.
    def last(kind: str, n: int) -> list:
        return [r for r in train_r if r.kind.startswith(kind)][-n:]

    dev_r = last("positive", 200) + last("speech", 400) + last("command", 100) + last("confusable", 100)
    dev = [data.make_scene(recipe, k, dev_r, max(min(5.0, minutes), minutes / 3), "dev")
           for k in tqdm(ev.scenes, desc="dev scenes", leave=False)]
    tests = build_eval_scenes(recipe, eval_r, minutes)
    checks = verifiers(out, ev.verifier_threshold)
    # Each check's verdict on a fire depends only on the scene and the time: asked once, whichever tiny model,
    # threshold or table needs it.
    dev_passes = {v: verdicts(m, dev) for v, m in checks.items()}
    test_passes = {v: verdicts(m, tests) for v, m in checks.items()}
    own = out / "commands.tflite"
    recogniser = CommandRecognizer(**({"model_path": own} if own.is_file() else {}))
    result: dict = {"scene_minutes": minutes, "scenes": ev.scenes,
                    "note": "scenes built by cloud/train/scenes.py from held-out voices (eval_voices)"}
    for name in tiny_cards:
        kind = tiny_cards[name]["feature_kind"]
        base = KwsConfig(model_path=tiny_cards[name].get("shipped_path") or str(out / f"{name}.tflite"),
                         feature_kind=kind)
        dev_scores = [posteriors(base, s) for s in dev]
        logit = KeywordSpotter.from_config(base).logits
        thr = pick_threshold(base, dev, dev_scores, ev.dev_fa_per_hour, checks["verifier"] if ev.tune_for == "cascade"
                             else None, ev.dev_uploads_per_hour, logit=logit, passes=dev_passes["verifier"])
        cfg = base.model_copy(update={"threshold": thr})
        per_scene, all_scored = {}, []
        hows = ["tiny"] + [f"tiny+{v}" for v in checks]
        matched: dict[str, list[Matched]] = {h: [] for h in hows}
        cpu = 0.0
        for i, s in enumerate(tests):
            t0 = time.process_time()
            scored = posteriors(cfg, s)
            cpu += time.process_time() - t0
            all_scored.append(scored)
            times = detect(cfg, scored)
            here = {"tiny": Matched(times, s),
                    **{f"tiny+{v}": Matched([t for t in times if ok(i, t)], s) for v, ok in test_passes.items()}}
            per_scene[s.name] = {how: m.score().as_dict() for how, m in here.items()}
            for how, m in here.items():
                matched[how].append(m)
        result[name] = {"threshold": thr, "tuned_for": ev.tune_for, "scenes": per_scene,
                        **{how: metrics.combine(m.score() for m in ms).as_dict() for how, ms in matched.items()},
                        # Where the misses and false accepts are, at the tuned threshold: per held-out voice, and
                        # by what was playing when a false accept fired.
                        "misses_by_voice": {h: metrics.voice_table(metrics.merge_breakdowns([m.by_voice() for m in ms]))
                                            for h, ms in matched.items()},
                        "false_accepts_by_source": {h: metrics.merge_breakdowns([m.false_accept_sources() for m in ms])
                                                    for h, ms in matched.items()},
                        "commands_after_detection": command_accuracy(recogniser, matched["tiny+verifier"]),
                        "kws_cpu_s_per_audio_hour_ungated": round(cpu / sum(s.hours for s in tests), 1),
                        "curve": _curve(base, tests, all_scored, test_passes),
                        "cascade_tuned": _cascade_tuned(base, dev, dev_scores, tests, all_scored, checks, dev_passes,
                                                        test_passes, ev, logit)}
    return result


def _cascade_tuned(base: KwsConfig, dev: list, dev_scores: list, tests: list, scored: list, checks: dict,
                   dev_passes: dict, test_passes: dict, ev, logit: bool) -> dict:
    """With a check behind it (the cloud's verifier, or the node's second stage on v2) the node can fire
    lower and let the check decide: per check, the node threshold tuned on the dev scenes for the cascade
    (the lowest whose checked false accepts stay within dev_fa_per_hour and whose uploads, or second-stage
    checks, within dev_uploads_per_hour), and what that gives on the held-out scenes."""
    out = {}
    hours = sum(s.hours for s in tests)
    for name, check in checks.items():
        thr = pick_threshold(base, dev, dev_scores, ev.dev_fa_per_hour, check, ev.dev_uploads_per_hour, logit=logit,
                             passes=dev_passes[name])
        c = base.model_copy(update={"threshold": thr})
        passes = test_passes[name]
        node, kept = [], []
        for i, (s, sc) in enumerate(zip(tests, scored, strict=True)):
            times = detect(c, sc)
            node.append(Matched(times, s).score())
            kept.append(Matched([t for t in times if passes(i, t)], s).score())
        a, b = metrics.combine(node), metrics.combine(kept)
        out[name] = {"threshold": thr, "node": a.as_dict(), "checked": b.as_dict(),
                     "candidates_per_hour": round((a.hits + a.false_accepts) / hours, 2)}
    return out


def _curve(cfg: KwsConfig, tests: list, scored: list, passes: dict) -> list[dict]:
    """Miss rate and FA/h of the tiny model alone and behind each verifier (``passes``: its verdicts on the
    ``tests``, as ``verdicts`` gives them), across detector thresholds (``verified_*`` is v1,
    ``verified_v2_*`` the embedding verifier)."""
    out = []
    for thr in CURVE:
        c = cfg.model_copy(update={"threshold": thr})
        tiny, voices = [], []
        ver: dict[str, list] = {name: [] for name in passes}
        for i, (s, sc) in enumerate(zip(tests, scored, strict=True)):
            times = detect(c, sc)
            m = Matched(times, s)
            tiny.append(m.score())
            for name, ok in passes.items():
                ver[name].append(Matched([t for t in times if ok(i, t)], s).score())
            voices.append(m.by_voice())
        a = metrics.combine(tiny)
        by_voice = {v: m["miss_rate"] for v, m in metrics.voice_table(metrics.merge_breakdowns(voices)).items()}
        point = {"threshold": thr, "miss_rate": round(a.miss_rate, 4), "fa_per_hour": round(a.fa_per_hour, 3)}
        for name, scores in ver.items():
            b = metrics.combine(scores)
            tag = "verified" if name == "verifier" else f"verified_{name.removeprefix('verifier_')}"
            point[f"{tag}_miss_rate"], point[f"{tag}_fa_per_hour"] = round(b.miss_rate, 4), round(b.fa_per_hour, 3)
        out.append({**point, "miss_rate_by_voice": by_voice})
    return out


def verdicts(verifier, scenes_: list):
    """``verified`` for (scene index, fire time), each asked once however many thresholds fire there."""
    @functools.cache
    def passes(i: int, t: float) -> bool:
        return verified(verifier, scenes_[i].audio, t)

    return passes


def command_accuracy(recogniser, matched: list[Matched]) -> dict:
    """What the cloud makes of the command said after each detected wake phrase (``matched``: the
    detections on each scene): the segment as the node sends it (pre-roll and phrase before the fire,
    the command window after), read from the fire time."""
    after = SegmenterConfig().command_window_s
    unrecognised = 0
    by_scene: dict[str, dict[str, int]] = {}
    for m in matched:
        s = m.scene
        here = by_scene.setdefault(s.name, {"detected_phrases": 0, "correct": 0})
        for t, j in m.hits():
            got = recogniser.recognise(*segment(audio=s.audio, t=t, after_s=after)).name
            here["detected_phrases"] += 1
            here["correct"] += got == s.keyword_commands[j]
            unrecognised += got is None
    n = sum(v["detected_phrases"] for v in by_scene.values())
    correct = sum(v["correct"] for v in by_scene.values())
    return {"detected_phrases": n, "correct": correct, "accuracy": round(correct / n, 4) if n else None,
            "unrecognised": unrecognised, "wrong": n - correct - unrecognised, "scenes": by_scene,
            "read_offsets_s": recogniser.read_offsets_s,
            "note": "verified detections; the command recogniser reads from the fire time at each read offset "
                    "and the most confident read naming a command wins"}


def segment(*, audio: np.ndarray, t: float, after_s: float) -> tuple[np.ndarray, float]:
    """A forwarded segment as the cloud gets it: the segmenter's pre-roll and phrase before the fire at
    ``t``, ``after_s`` after it; with the fire's time into the segment."""
    a = max(0, int((t - SegmenterConfig().before_detection_s) * SR))
    return audio[a:int((t + after_s) * SR)], t - a / SR


def verified(verifier, audio: np.ndarray, t: float) -> bool:
    """What the cloud does with a forwarded segment: pre-roll and phrase, 0.5 s after the fire."""
    return verifier.verify(*segment(audio=audio, t=t, after_s=0.5))[0]


def posteriors(cfg: KwsConfig, scene: scenes.Scene) -> list:
    """The node's KWS over a scene, fed a second at a time as a node would: its scores (time, posterior)."""
    kws = KeywordSpotter.from_config(cfg, keep_scores=True)
    step = SR  # one second per call, as a node would feed it
    for i in range(0, scene.audio.size, step):
        kws.process(scene.audio[i:i + step])
    return kws.scores


def detect(cfg: KwsConfig, scored: list) -> list[float]:
    """The node's detector (``cfg``'s threshold, smoothing and refractory period) over ``posteriors``: fire times."""
    d = Detector(threshold=cfg.threshold, smoothing_s=cfg.smoothing_s, min_consecutive=cfg.min_consecutive,
                 refractory_s=cfg.refractory_s, period_s=cfg.stride_frames * 0.01)
    return [det.t_s for det in d.run(np.array([s.posterior for s in scored]), np.array([s.t_s for s in scored]))]


def pick_threshold(cfg: KwsConfig, dev: list, dev_scores: list, fa_per_hour: float, verifier=None,
                   uploads_per_hour: float = float("inf"), *, logit: bool = False, passes=None) -> float:
    """Lowest threshold whose false accepts on the dev scenes stay within ``fa_per_hour``. With a
    ``verifier`` (tuning for the cascade) only the false accepts it passes count, and the node's own
    (what it uploads for the cloud to reject) must stay within ``uploads_per_hour``."""
    hours = sum(s.hours for s in dev)  # uploads are a rate over all audio; false accepts over non-wake time
    fa_hours = sum(metrics.non_wake_seconds(metrics.span_windows(s.keywords), s.hours * 3600.0) for s in dev) / 3600.0
    # ``passes``: the verifier's verdicts on ``dev`` already being collected (``verdicts``), to share them.
    passes = (passes or verdicts(verifier, dev)) if verifier is not None else None
    candidates = LOGIT_THRESHOLDS if logit else THRESHOLDS
    for thr in candidates:
        c = cfg.model_copy(update={"threshold": float(thr)})
        node_fa = cascade_fa = 0
        for i, (s, sc) in enumerate(zip(dev, dev_scores, strict=True)):
            times = detect(c, sc)
            wrong = metrics.false_accept_times(times, s.keywords)
            node_fa += len(wrong)
            cascade_fa += sum(passes(i, t) for t in wrong) if passes is not None else 0
        if passes is None and node_fa <= fa_per_hour * fa_hours:
            return float(thr)
        if passes is not None and cascade_fa <= fa_per_hour * fa_hours and node_fa <= uploads_per_hour * hours:
            return float(thr)
    return float(candidates[-1])
