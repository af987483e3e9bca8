"""`make compare`: our cascade vs openWakeWord's and microWakeWord's "hey jarvis" on the same scenes, one run.

Engines: ours (int8 tiny alone, with the cloud verifier, and behind the analog gate), openWakeWord
0.5.1 (its wheel's ONNX models, nothing downloaded) and pymicro-wakeword (its bundled model). Each
reports miss rate, false accepts per hour and CPU seconds per audio hour (process CPU time, one
thread). A missing competitor package is reported as skipped, not fatal.

    python -m cloud.compare --recipe datasets/recipes/hey_jarvis.yaml --minutes 60 --out compare.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cloud.train import metrics
from cloud.train.pipeline import verified
from cloud.train.scenes import Scene
from gate.kws.config import KwsConfig
from gate.kws.detector import Detector
from gate.kws.featurize import MEL_KINDS
from gate.kws.stage import KeywordSpotter, default_model_path, read_card, tuned_threshold

SR = 16_000
# MCU pricing for the two input paths (ENERGY.md): about 0.38 nJ per MAC on a Cortex-M33 (MLPerf Tiny
# KWS, derived), and the 16 kHz PDM/ADC path at about 1.9 mW while awake (nRF53 PDM, derived). The
# analog-envelope input needs no ADC at all: the front end's envelopes are already there.
NJ_PER_MAC = 0.38
ADC_MW = 1.9
REFRACTORY_S = 1.5  # applied to every engine alike, so one utterance is one detection everywhere
PREROLL_S = 1.0     # audio the node keeps while the gate is closed: one tiny-model window

log = logging.getLogger("gate.compare")


def _timed(fn: Callable[[], list[float]]) -> tuple[list[float], float]:
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def ours(scene: Scene, cfg: KwsConfig) -> list[float]:
    kws = KeywordSpotter.from_config(cfg)
    times: list[float] = []
    for i in range(0, scene.audio.size, SR):
        times += [d.t_s for d in kws.process(scene.audio[i:i + SR])]
    return times


def _gate_intervals(scene: Scene) -> list[tuple[float, float]]:
    from sensors.analog import AnalogConfig, AnalogFrontEnd, open_intervals

    fe = AnalogFrontEnd(config=AnalogConfig())
    events = []
    for i in range(0, scene.audio.size, 1 << 16):
        events += fe.process(scene.audio[i:i + (1 << 16)]).events
    return open_intervals(events, scene.audio.size / SR)


def runs_with_preroll(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The stretches the KWS runs: each open interval with its pre-roll in front. A gate that reopens
    within the pre-roll of its last close continues the run, as a node's segmenter does, instead of
    restarting the KWS on audio it has already heard (which would re-detect the same phrase)."""
    runs: list[tuple[float, float]] = []
    for a, b in intervals:
        start = max(0.0, a - PREROLL_S)
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(b, runs[-1][1]))
        else:
            runs.append((start, b))
    return runs


def ours_gated(scene: Scene, cfg: KwsConfig, intervals: list[tuple[float, float]]) -> tuple[list[float], float, int]:
    """KWS only while the simulated analog gate is open (plus pre-roll). Returns times, KWS CPU s, inferences."""
    kws = KeywordSpotter.from_config(cfg)
    times: list[float] = []
    t0 = time.process_time()
    for start, b in runs_with_preroll(intervals):
        kws.reset(start)
        seg = scene.audio[int(start * SR):int(b * SR)]
        for i in range(0, seg.size, SR):
            times += [d.t_s for d in kws.process(seg[i:i + SR])]
    return times, time.process_time() - t0, kws.inferences


def node_energy_mj_per_hour(kind: str, inferences: int, awake_s: float, hours: float) -> dict:
    """KWS compute plus (for log-mel) the ADC path while awake, per audio hour, on the MCU profile above."""
    macs = read_card(default_model_path(kind)).get("macs", 0)
    compute = inferences * macs * NJ_PER_MAC * 1e-6
    adc = ADC_MW * awake_s if kind in MEL_KINDS else 0.0  # mel features need the 16 kHz ADC
    return {"kws_compute_mj_per_h": round(compute / hours, 2), "adc_mj_per_h": round(adc / hours, 2),
            "total_mj_per_h": round((compute + adc) / hours, 2)}


def with_verifier(scene: Scene, times: list[float], verifier) -> list[float]:
    return [t for t in times if verified(verifier, scene.audio, t)]


def openwakeword_engine() -> Callable[[Scene], list[float]]:
    import openwakeword
    from openwakeword.model import Model

    res = Path(openwakeword.__file__).parent / "resources" / "models"
    model = Model(wakeword_models=[str(res / "hey_jarvis_v0.1.onnx")], inference_framework="onnx",
                  melspec_model_path=str(res / "melspectrogram.onnx"),
                  embedding_model_path=str(res / "embedding_model.onnx"))
    chunk = 1280  # 80 ms: openWakeWord's native step

    def run(scene: Scene) -> list[float]:
        model.reset()
        det = Detector(threshold=0.5, smoothing_s=0.0, min_consecutive=1, refractory_s=REFRACTORY_S,
                       period_s=chunk / SR)
        out = []
        for i in range(0, scene.audio.size - chunk + 1, chunk):
            score = next(iter(model.predict(scene.audio[i:i + chunk]).values()))
            d = det.update(float(score), (i + chunk) / SR)
            if d is not None:
                out.append(d.t_s)
        return out

    return run


def microwakeword_engine() -> Callable[[Scene], list[float]]:
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

    mww = MicroWakeWord.from_builtin(Model.HEY_JARVIS)
    feats = MicroWakeWordFeatures()

    def run(scene: Scene) -> list[float]:
        mww.reset()
        feats.reset()
        out: list[float] = []
        last = -1e9
        n_feat = 0
        step = 160 * 10
        for i in range(0, scene.audio.size, step):
            for f in feats.process_streaming(scene.audio[i:i + step].tobytes()):
                n_feat += 1
                if mww.process_streaming(f):
                    t = n_feat * 0.01 + 0.02  # 10 ms features over 30 ms windows
                    if t - last >= REFRACTORY_S:
                        out.append(t)
                        last = t
        return out

    return run


def compare(scenes: list[Scene], *, with_competitors: bool = True) -> dict:
    from cloud.verifier import Verifier

    cfg = KwsConfig(feature_kind="logmel")
    verifier = Verifier()
    hours = sum(s.hours for s in scenes)
    rows: dict[str, dict] = {}

    def add(name: str, per_scene: list[tuple[list[float], float]], extra: dict | None = None) -> None:
        score = metrics.combine([metrics.score(t, s.keywords, s.hours)
                                 for (t, _), s in zip(per_scene, scenes, strict=True)])
        cpu = sum(c for _, c in per_scene)
        rows[name] = {**score.as_dict(), "cpu_s_per_audio_hour": round(cpu / hours, 2), **(extra or {})}

    runs = [_timed(lambda s=s: ours(s, cfg)) for s in scenes]
    add("gate tiny int8", runs)
    # CPU here is the node's: the verifier runs in the cloud, on forwarded segments only.
    add("gate tiny int8 + cloud verifier",
        [(with_verifier(s, t, verifier), c) for (t, c), s in zip(runs, scenes, strict=True)])
    from sensors.analog import duty_cycle

    intervals = [_gate_intervals(s) for s in scenes]
    awake_s = sum(sum(b - a for a, b in runs_with_preroll(iv)) for iv in intervals)
    duty = sum(duty_cycle(iv, s.audio.size / SR) * s.hours for s, iv in zip(scenes, intervals, strict=True)) / hours
    for kind in ("logmel", "analog_envelopes"):
        if not default_model_path(kind).is_file():
            continue
        kcfg = KwsConfig(feature_kind=kind)
        gated = [ours_gated(s, kcfg, iv) for s, iv in zip(scenes, intervals, strict=True)]
        energy = node_energy_mj_per_hour(kind, sum(g[2] for g in gated), awake_s, hours)
        add(f"gate analog gate -> tiny int8 ({kind})", [(g[0], g[1]) for g in gated],
            {"analog_gate_duty_cycle": round(duty, 4), "node_energy_mcu": energy})
        add(f"gate analog gate -> tiny int8 ({kind}) -> verifier",
            [(with_verifier(s, g[0], verifier), g[1]) for g, s in zip(gated, scenes, strict=True)],
            {"analog_gate_duty_cycle": round(duty, 4), "node_energy_mcu": energy})
    if default_model_path("analog_envelopes").is_file():
        add("gate tiny int8 (analog_envelopes, ungated)",
            [_timed(lambda s=s: ours(s, KwsConfig(feature_kind="analog_envelopes"))) for s in scenes])
    if with_competitors:
        for name, factory in (("openWakeWord 0.5.1 hey_jarvis_v0.1 (onnx)", openwakeword_engine),
                              ("microWakeWord hey_jarvis (pymicro-wakeword)", microwakeword_engine)):
            try:
                engine = factory()
            except Exception as exc:  # noqa: BLE001 - a competitor that cannot load is reported, not fatal
                rows[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
                continue
            add(name, [_timed(lambda s=s, e=engine: e(s)) for s in scenes])
    return {"scenes": {s.name: {"hours": round(s.hours, 3), "keywords": len(s.keywords)} for s in scenes},
            "threshold": tuned_threshold(default_model_path("logmel")), "refractory_s": REFRACTORY_S, "engines": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloud.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=Path("datasets/recipes/hey_jarvis.yaml"))
    ap.add_argument("--minutes", type=float, default=None, help="scene length (default: the recipe's)")
    ap.add_argument("--out", type=Path, default=Path("compare.json"))
    ap.add_argument("--ours-only", action="store_true", help="skip openWakeWord and microWakeWord")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="a `gate-cloud train` cache of synthesised speech (skips re-synthesis)")
    args = ap.parse_args(argv)
    logging.basicConfig(level="WARNING", stream=sys.stderr)

    from cloud.train.corpus import synthesise
    from cloud.train.pipeline import build_eval_scenes, cached_renders, eval_plan
    from cloud.train.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    items = eval_plan(recipe)

    def make():
        return synthesise(items, workers=recipe.corpus.workers, desc="synth eval")

    renders = cached_renders(args.cache_dir, "eval", items, make) if args.cache_dir else make()
    scenes = build_eval_scenes(recipe, renders, args.minutes or recipe.evaluation.minutes)
    report = compare(scenes, with_competitors=not args.ours_only)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(n) for n in report["engines"])
    print(f"{'engine':{width}s}  miss%   FA/h  CPU s/audio h")
    for name, r in report["engines"].items():
        if "skipped" in r:
            print(f"{name:{width}s}  skipped: {r['skipped']}")
        else:
            miss, fa, cpu = 100 * r["miss_rate"], r["fa_per_hour"], r["cpu_s_per_audio_hour"]
            print(f"{name:{width}s}  {miss:5.1f}  {fa:5.2f}  {cpu:8.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
