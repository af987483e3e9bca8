"""`make compare`: our cascade vs openWakeWord's and microWakeWord's "hey jarvis" on the same scenes, one run.

Two evaluation sets: the held-out scenes (voices of the training engines that no model trained on) and
the cross-engine set (cloud/crossengine.py: flite speakers, the asterisk prompts and music-on-hold, which
no model or setting was chosen on). Engines: ours (int8 tiny alone, with the cloud verifier, and behind
the analog gate), openWakeWord 0.5.1 (its wheel's ONNX models, nothing downloaded) and pymicro-wakeword
(its bundled model). A missing competitor package is reported as skipped, not fatal.

Every engine's raw score per step is recorded once; the same detector (smoothing, consecutive hits,
refractory period) then runs over it at the engine's default threshold and at every threshold of a sweep,
so engines are compared both as shipped and at equal false accepts per hour. CPU is process CPU seconds
per audio hour of the scoring pass (one thread).

    python -m cloud.compare --recipe datasets/recipes/hey_jarvis.yaml --out compare.json --html compare.html

Another row is one function registered with ``@engine("name")``: it gets the set's ``Context`` and
returns a ``Run`` (the per-scene score traces, the detector, CPU seconds and optionally a later stage
that keeps or drops each fire).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from cloud.train.scenes import Scene
from gate.kws.config import KwsConfig
from gate.kws.featurize import MEL_KINDS
from gate.kws.interpreter import read_evaluation
from gate.kws.stage import KeywordSpotter, default_model_path, tuned_threshold
from gate_core import metrics
from gate_core.detector import Detector
from gate_core.errors import GateError

SR = 16_000
# MCU pricing for the two input paths (ENERGY.md): about 0.38 nJ per MAC on a Cortex-M33 (MLPerf Tiny
# KWS, derived), and the 16 kHz PDM/ADC path at about 1.9 mW while awake (nRF53 PDM, derived). The
# analog-envelope input needs no ADC at all: the front end's envelopes are already there.
NJ_PER_MAC = 0.38
ADC_MW = 1.9
REFRACTORY_S = 1.5  # applied to every engine alike, so one utterance is one detection everywhere
PREROLL_S = 1.0     # audio the node keeps while the gate is closed: one tiny-model window
# Thresholds of the sweep: every engine's default is added. Rows with a verifier behind the node sweep a
# coarser grid from 0.3 up, because the verifier hears every distinct fire time once.
SWEEP = tuple(np.round(np.concatenate([np.arange(0.02, 0.985, 0.02), [0.99, 0.995, 0.998, 0.999, 0.9995,
                                                                      0.9999]]), 4).tolist())
VERIFIED_SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)
FA_TARGETS = (0.5, 1.0, 2.0, 5.0, 10.0)  # false accepts per hour at which misses are compared

log = logging.getLogger("gate.compare")

Segment = tuple[np.ndarray, np.ndarray]  # (audio times s, raw scores) of one uninterrupted scoring run
Trace = list[Segment]                    # one scene: the detector restarts at each segment


class Skip(Exception):
    """An engine that cannot run here (package or model missing): its row says why."""


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """How an engine's scores become detections, in inference steps (as ``Detector`` counts them)."""

    threshold: float        # the engine's default
    window: int = 1         # moving-average length
    min_consecutive: int = 1
    refractory_steps: int = 0

    @classmethod
    def of(cls, d: Detector) -> DetectorSpec:
        return cls(d.threshold, d.window, d.min_consecutive, d.refractory_steps)

    @classmethod
    def plain(cls, threshold: float, period_s: float) -> DetectorSpec:
        """Fire on a score at or above ``threshold``, then stay quiet for the refractory period."""
        return cls.of(Detector(threshold=threshold, smoothing_s=0.0, min_consecutive=1,
                               refractory_s=REFRACTORY_S, period_s=period_s))


def smoothed(scores: np.ndarray, window: int) -> np.ndarray:
    """The detector's moving average, with its arithmetic: the last ``window`` scores (fewer at the start)
    summed oldest first, divided by how many there are."""
    x = np.asarray(scores, np.float64)
    acc = np.zeros(x.size)
    for lag in range(min(window, x.size) - 1, -1, -1):
        acc[lag:] += x[:x.size - lag]
    return acc / np.minimum(np.arange(1, x.size + 1), window)


def fire_steps(smooth: np.ndarray, threshold: float, min_consecutive: int, refractory_steps: int) -> list[int]:
    """The steps at which ``Detector`` fires over ``smooth`` (already smoothed), without stepping through
    every score: a fire is the first step, at least ``min_consecutive`` steps after the detector listens
    again, that ends that many consecutive hits; the refractory period then skips that many steps."""
    hit = smooth >= threshold
    idx = np.arange(smooth.size)
    run = idx - np.maximum.accumulate(np.where(hit, -1, idx))  # consecutive hits ending at each step
    cand = np.flatnonzero(run >= min_consecutive)
    out: list[int] = []
    listen = 0
    while True:
        j = int(np.searchsorted(cand, listen + min_consecutive - 1))
        if j == cand.size:
            return out
        out.append(int(cand[j]))
        listen = int(cand[j]) + 1 + refractory_steps


def detect(trace: Trace, spec: DetectorSpec, threshold: float | None = None, *,
           smooth: Sequence[np.ndarray] | None = None) -> list[float]:
    """Fire times over a scene's recorded scores, as ``Detector`` (restarted per segment) would give;
    ``smooth`` is each segment's ``smoothed`` scores when already computed."""
    thr = spec.threshold if threshold is None else float(threshold)
    if smooth is None:
        smooth = [smoothed(scores, spec.window) for _, scores in trace]
    out: list[float] = []
    for (times, _), s in zip(trace, smooth, strict=True):
        out += [float(times[i]) for i in fire_steps(s, thr, spec.min_consecutive, spec.refractory_steps)]
    return out


@dataclass
class Run:
    """One engine over one evaluation set."""

    traces: list[Trace]                # per scene
    detector: DetectorSpec
    cpu_s: float                       # the node's scoring CPU (a cloud stage's is not counted)
    keep: Callable[[int, float], bool] | None = None  # a later stage: does the fire at (scene, t) stand?
    thresholds: Sequence[float] = SWEEP
    extra: dict = field(default_factory=dict)
    _smooth: list[list[np.ndarray]] | None = field(default=None, repr=False)

    def times(self, threshold: float | None = None) -> list[list[float]]:
        """Fire times per scene at ``threshold`` (default: the detector's), after the later stage if any."""
        if self._smooth is None:
            self._smooth = [[smoothed(sc, self.detector.window) for _, sc in tr] for tr in self.traces]
        out = [detect(tr, self.detector, threshold, smooth=sm)
               for tr, sm in zip(self.traces, self._smooth, strict=True)]
        if self.keep is not None:
            out = [[t for t in ts if self.keep(i, t)] for i, ts in enumerate(out)]
        return out


@dataclass
class Context:
    """One evaluation set and what its rows share (computed once, on first use)."""

    name: str
    scenes: list[Scene]
    verifier_factory: Callable[[], object]
    memo: dict = field(default_factory=dict)

    def once(self, key: str, make: Callable[[], object]):
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    @property
    def hours(self) -> float:
        return sum(s.hours for s in self.scenes)

    def verified(self) -> Callable[[int, float], bool]:
        """The cloud verifier's verdict on the fire at (scene index, t), each asked once."""
        from cloud.train.evaluate import verdicts

        return self.once("verdicts", lambda: verdicts(self.once("verifier", self.verifier_factory), self.scenes))


    def verified_v2(self) -> Callable[[int, float], bool]:
        """Verifier v2's verdict (the speech-embedding head, also the node's second stage), each asked once."""
        from cloud.train.evaluate import verdicts
        from cloud.verifier import EmbeddingVerifier

        return self.once("verdicts_v2", lambda: verdicts(self.once("verifier_v2", EmbeddingVerifier), self.scenes))


EngineFn = Callable[[Context], Run]
ENGINES: dict[str, EngineFn] = {}
COMPETITORS: set[str] = set()


def engine(name: str, *, competitor: bool = False) -> Callable[[EngineFn], EngineFn]:
    """Register a row; rows are reported in registration order."""
    def register(fn: EngineFn) -> EngineFn:
        ENGINES[name] = fn
        if competitor:
            COMPETITORS.add(name)
        return fn
    return register


# --- ours -------------------------------------------------------------------------------------------

def _spotter(kind: str) -> KeywordSpotter:
    if not default_model_path(kind).is_file():
        raise Skip(f"no shipped model {default_model_path(kind)}")
    return KeywordSpotter.from_config(KwsConfig(feature_kind=kind), keep_scores=True)


def _scores(kws: KeywordSpotter) -> Segment:
    return (np.array([s.t_s for s in kws.scores]), np.array([s.posterior for s in kws.scores]))


def _ungated(ctx: Context, kind: str) -> Run:
    def make() -> Run:
        kws = _spotter(kind)
        traces = []
        t0 = time.process_time()
        for s in ctx.scenes:
            kws.reset()
            for i in range(0, s.audio.size, SR):  # one second per call, as a node feeds it
                kws.process(s.audio[i:i + SR])
            traces.append([_scores(kws)])
        return Run(traces, DetectorSpec.of(kws.detector), time.process_time() - t0)
    return ctx.once(f"ungated {kind}", make)


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


def node_energy_mj_per_hour(kind: str, inferences: int, awake_s: float, hours: float) -> dict:
    """KWS compute plus (for log-mel) the ADC path while awake, per audio hour, on the MCU profile above."""
    macs = read_evaluation(default_model_path(kind)).get("macs", 0)
    compute = inferences * macs * NJ_PER_MAC * 1e-6
    adc = ADC_MW * awake_s if kind in MEL_KINDS else 0.0  # mel features need the 16 kHz ADC
    return {"kws_compute_mj_per_h": round(compute / hours, 2), "adc_mj_per_h": round(adc / hours, 2),
            "total_mj_per_h": round((compute + adc) / hours, 2)}


def _gated(ctx: Context, kind: str) -> Run:
    """The KWS only while the simulated analog gate is open (plus pre-roll), restarted at each run."""
    def make() -> Run:
        from sensors.analog import duty_cycle

        kws = _spotter(kind)
        intervals = ctx.once("gate intervals", lambda: [_gate_intervals(s) for s in ctx.scenes])
        traces: list[Trace] = []
        t0 = time.process_time()
        for s, iv in zip(ctx.scenes, intervals, strict=True):
            trace: Trace = []
            for start, b in runs_with_preroll(iv):
                kws.reset(start)
                seg = s.audio[int(start * SR):int(b * SR)]
                for i in range(0, seg.size, SR):
                    kws.process(seg[i:i + SR])
                trace.append(_scores(kws))
            traces.append(trace)
        cpu = time.process_time() - t0
        awake_s = sum(sum(b - a for a, b in runs_with_preroll(iv)) for iv in intervals)
        duty = sum(duty_cycle(iv, s.audio.size / SR) * s.hours
                   for s, iv in zip(ctx.scenes, intervals, strict=True)) / ctx.hours
        extra = {"analog_gate_duty_cycle": round(duty, 4),
                 "node_energy_mcu": node_energy_mj_per_hour(kind, kws.inferences, awake_s, ctx.hours)}
        return Run(traces, DetectorSpec.of(kws.detector), cpu, extra=extra)
    return ctx.once(f"gated {kind}", make)


def _verified(run: Run, ctx: Context) -> Run:
    # CPU stays the node's: the verifier runs in the cloud, on forwarded segments only.
    return dataclasses.replace(run, keep=ctx.verified(), thresholds=VERIFIED_SWEEP)


engine("gate tiny int8")(partial(_ungated, kind="logmel"))
engine("gate tiny int8 + cloud verifier")(lambda ctx: _verified(_ungated(ctx, "logmel"), ctx))
for _kind in ("logmel", "analog_envelopes"):
    engine(f"gate analog gate -> tiny int8 ({_kind})")(partial(_gated, kind=_kind))
    engine(f"gate analog gate -> tiny int8 ({_kind}) -> verifier")(
        lambda ctx, k=_kind: _verified(_gated(ctx, k), ctx))
engine("gate tiny int8 (analog_envelopes, ungated)")(partial(_ungated, kind="analog_envelopes"))


def _verified_v2(run: Run, ctx: Context) -> Run:
    return dataclasses.replace(run, keep=ctx.verified_v2(), thresholds=VERIFIED_SWEEP)


# The speech-embedding head: in the cloud (verifier v2), and on a Pi-class node as its second stage, which
# checks each candidate of the gated tiny model before upload (the same verdicts; it runs on the node).
engine("gate tiny int8 + cloud verifier v2")(lambda ctx: _verified_v2(_ungated(ctx, "logmel"), ctx))
engine("gate analog gate -> tiny int8 (logmel) -> node second stage")(
    lambda ctx: _verified_v2(_gated(ctx, "logmel"), ctx))


# --- competitors ------------------------------------------------------------------------------------

def _load(factory: Callable[[], object]) -> object:
    try:
        return factory()
    except Exception as exc:  # noqa: BLE001 - a competitor that cannot load is reported, not fatal
        raise Skip(f"{type(exc).__name__}: {exc}") from exc


def _openwakeword_model():
    import openwakeword
    from openwakeword.model import Model

    res = Path(openwakeword.__file__).parent / "resources" / "models"
    return Model(wakeword_models=[str(res / "hey_jarvis_v0.1.onnx")], inference_framework="onnx",
                 melspec_model_path=str(res / "melspectrogram.onnx"),
                 embedding_model_path=str(res / "embedding_model.onnx"))


@engine("openWakeWord 0.5.1 hey_jarvis_v0.1 (onnx)", competitor=True)
def openwakeword_run(ctx: Context) -> Run:
    """Its score every 80 ms (its native step); its default threshold is 0.5."""
    model = _load(_openwakeword_model)
    chunk = 1280
    traces = []
    t0 = time.process_time()
    for s in ctx.scenes:
        model.reset()
        times, scores = [], []
        for i in range(0, s.audio.size - chunk + 1, chunk):
            scores.append(float(next(iter(model.predict(s.audio[i:i + chunk]).values()))))
            times.append((i + chunk) / SR)
        traces.append([(np.array(times), np.array(scores))])
    return Run(traces, DetectorSpec.plain(0.5, chunk / SR), time.process_time() - t0)


def _microwakeword():
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

    return MicroWakeWord.from_builtin(Model.HEY_JARVIS), MicroWakeWordFeatures()


@engine("microWakeWord hey_jarvis (pymicro-wakeword)", competitor=True)
def microwakeword_run(ctx: Context) -> Run:
    """Its sliding-window probability at each inference (every ``stride`` 10 ms features); it fires above
    its probability_cutoff (0.97), which the sweep's at-or-above gives too: a mean of its 8-bit outputs
    never equals 0.97."""
    mww, feats = _load(_microwakeword)
    traces = []
    t0 = time.process_time()
    for s in ctx.scenes:
        mww.reset()
        feats.reset()
        times, scores = [], []
        n_feat = 0
        step = 160 * 10
        for i in range(0, s.audio.size, step):
            for f in feats.process_streaming(s.audio[i:i + step].tobytes()):
                n_feat += 1
                p = mww.process_streaming_prob(f)
                if p is not None and n_feat % mww.stride == 0:  # the model ran on this feature
                    times.append(n_feat * 0.01 + 0.02)  # 10 ms features over 30 ms windows
                    scores.append(float(p))
        traces.append([(np.array(times), np.array(scores))])
    spec = DetectorSpec.plain(float(mww.probability_cutoff), mww.stride * 0.01)
    return Run(traces, spec, time.process_time() - t0)


# --- scoring ----------------------------------------------------------------------------------------

def _score(ctx: Context, times: list[list[float]]) -> metrics.Score:
    return metrics.combine([metrics.span_score(t, s.keywords, s.hours) for t, s in zip(times, ctx.scenes, strict=True)])


def curve(run: Run, ctx: Context) -> list[dict]:
    """Miss rate and FA/h at every threshold of the run's sweep and at its default."""
    out = []
    for thr in sorted({*run.thresholds, run.detector.threshold}):
        sc = _score(ctx, run.times(thr))
        out.append({"threshold": thr, "miss_rate": round(sc.miss_rate, 4), "fa_per_hour": round(sc.fa_per_hour, 3),
                    "hits": sc.hits, "false_accepts": sc.false_accepts})
    return out


def at_fa(points: Sequence[dict], targets: Sequence[float] = FA_TARGETS) -> dict[str, dict | None]:
    """For each FA/h target, the sweep point with the fewest misses among those within it (fewer false
    accepts on a tie); None when no threshold gets that low."""
    out: dict[str, dict | None] = {}
    for f in targets:
        ok = [p for p in points if p["fa_per_hour"] <= f + 1e-9]
        best = min(ok, key=lambda p: (p["miss_rate"], p["fa_per_hour"])) if ok else None
        out[f"{f:g}"] = None if best is None else {k: best[k] for k in ("threshold", "miss_rate", "fa_per_hour")}
    return out


def _breakdown(ctx: Context, times: list[list[float]]) -> dict:
    if all(len(s.keyword_snr_db) == len(s.keywords) for s in ctx.scenes):
        from cloud.crossengine import breakdown

        return breakdown(ctx.scenes, times)
    return {"by_voice": metrics.voice_table(metrics.merge_breakdowns(
        [metrics.by_voice(t, s.keywords, s.keyword_voices) for t, s in zip(times, ctx.scenes, strict=True)]))}


def row(run: Run, ctx: Context) -> dict:
    times = run.times()
    points = curve(run, ctx)
    return {"default": {"threshold": run.detector.threshold, **_score(ctx, times).as_dict()},
            "cpu_s_per_audio_hour": round(run.cpu_s / ctx.hours, 2), **run.extra,
            "at_fa_per_hour": at_fa(points), **_breakdown(ctx, times), "curve": points}


def compare(sets: dict[str, list[Scene]], *, with_competitors: bool = True,
            engines: dict[str, EngineFn] | None = None) -> dict:
    """Every engine on every evaluation set: its row per set."""
    engines = ENGINES if engines is None else engines
    verifier: list = []

    def get_verifier():
        if not verifier:  # loaded once, for the first row that needs it
            from cloud.verifier import Verifier

            verifier.append(Verifier())
        return verifier[0]

    rows: dict[str, dict] = {name: {} for name in engines}
    info = {}
    for set_name, scenes in sets.items():
        ctx = Context(set_name, scenes, get_verifier)
        info[set_name] = {"hours": round(ctx.hours, 3), "keywords": sum(len(s.keywords) for s in scenes),
                          "scenes": {s.name: {"hours": round(s.hours, 3), "keywords": len(s.keywords)}
                                     for s in scenes}}
        for name, fn in engines.items():
            if name in COMPETITORS and not with_competitors:
                rows[name][set_name] = {"skipped": "--ours-only"}
                continue
            log.info("%s: %s", set_name, name)
            try:
                rows[name][set_name] = row(fn(ctx), ctx)
            except Skip as exc:
                rows[name][set_name] = {"skipped": str(exc)}
    return {"sets": info, "fa_targets": list(FA_TARGETS), "refractory_s": REFRACTORY_S,
            "threshold": tuned_threshold(default_model_path("logmel")), "engines": rows}


# --- output -----------------------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table(report: dict, set_name: str) -> list[str]:
    """The text table of one set: default point, CPU, and misses at each FA/h target."""
    names = list(report["engines"])
    width = max(len(n) for n in names)
    targets = [f"{f:g}" for f in report["fa_targets"]]
    head = f"{'engine':{width}s}  thr     miss%   FA/h  CPU s/h  " + "  ".join(f"@{t:>4s}FA/h" for t in targets)
    lines = [f"{set_name}: {report['sets'][set_name]['hours']} h, {report['sets'][set_name]['keywords']} wake phrases",
             head]
    for name in names:
        r = report["engines"][name].get(set_name, {})
        if "skipped" in r:
            lines.append(f"{name:{width}s}  skipped: {r['skipped']}")
            continue
        d = r["default"]
        at = "  ".join(f"{_pct(p['miss_rate'] if p else None):>10s}" for p in r["at_fa_per_hour"].values())
        lines.append(f"{name:{width}s}  {d['threshold']:<6.4g}  {100 * d['miss_rate']:5.1f}  {d['fa_per_hour']:5.2f}"
                     f"  {r['cpu_s_per_audio_hour']:7.1f}  {at}")
    return lines


def det_plot(report: dict, set_name: str) -> str:
    """Miss rate against FA/h, one line per engine (the fewest misses its sweep reaches within each FA/h),
    the default threshold marked."""
    from gate.html_report import _plt, _png

    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, per_set in report["engines"].items():
        r = per_set.get(set_name, {})
        if "curve" not in r:
            continue
        pts = sorted(r["curve"], key=lambda p: (p["fa_per_hour"], p["miss_rate"]))
        front = np.minimum.accumulate([p["miss_rate"] for p in pts])
        line, = ax.plot([max(p["fa_per_hour"], 0.01) for p in pts], 100 * front, "-", drawstyle="steps-post",
                        label=name)
        d = r["default"]
        ax.plot([max(d["fa_per_hour"], 0.01)], [100 * d["miss_rate"]], "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("false accepts per hour (0 drawn at 0.01)")
    ax.set_ylabel("miss rate, %")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    s = report["sets"][set_name]
    ax.set_title(f"{set_name}: {s['hours']} h, {s['keywords']} wake phrases (dots: default thresholds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def _html_table(rows: list[list[str]], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def render_html(report: dict) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>gate: engine comparison</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}</style>",
             "<h1>Engine comparison</h1>",
             f"<p>Refractory period {report['refractory_s']} s for every engine. Misses at a false-accept target "
             "are the best sweep point within it.</p>"]
    targets = [f"{f:g}" for f in report["fa_targets"]]
    for set_name in report["sets"]:
        rows = []
        for name, per_set in report["engines"].items():
            r = per_set.get(set_name, {})
            if "skipped" in r:
                rows.append([name, "skipped: " + r["skipped"]] + [""] * (3 + len(targets)))
                continue
            d = r["default"]
            rows.append([name, f"{d['threshold']:g}", _pct(d["miss_rate"]), f"{d['fa_per_hour']:.2f}",
                         f"{r['cpu_s_per_audio_hour']:.1f}"]
                        + [_pct(p["miss_rate"] if p else None) for p in r["at_fa_per_hour"].values()])
        parts += [f"<h2>{html.escape(set_name)}</h2>",
                  _html_table(rows, ["engine", "default threshold", "miss", "FA/h", "CPU s/audio h"]
                              + [f"miss at ≤{t} FA/h" for t in targets]),
                  f"<img alt='DET curves, {html.escape(set_name)}' src='data:image/png;base64,"
                  f"{det_plot(report, set_name)}'>"]
        for key, title in (("by_voice", "miss rate per voice"), ("by_snr", "miss rate per SNR band")):
            cols = sorted({c for per_set in report["engines"].values() for c in per_set.get(set_name, {}).get(key, {})})
            if not cols:
                continue
            brows = []
            for name, per_set in report["engines"].items():
                b = per_set.get(set_name, {}).get(key)
                if b:
                    brows.append([name] + [f"{_pct(b[c]['miss_rate'])} of {b[c]['keywords']}" if c in b else "-"
                                           for c in cols])
            parts += [f"<h3>{html.escape(set_name)}: {title}, default thresholds</h3>",
                      _html_table(brows, ["engine"] + cols)]
    return "\n".join(parts) + "\n"


def _positive(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {s!r}: expected a number of minutes") from None
    if not 0 < v <= 600:
        raise argparse.ArgumentTypeError(f"got {s}: expected minutes in (0, 600]")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloud.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=Path("datasets/recipes/hey_jarvis.yaml"))
    ap.add_argument("--minutes", type=_positive, default=None,
                    help="held-out scene length, per scene (default: the recipe's)")
    ap.add_argument("--cross-minutes", type=_positive, default=60.0,
                    help="cross-engine scene length, per scene kind (default 60: 3 h in all)")
    ap.add_argument("--out", type=Path, default=Path("compare.json"))
    ap.add_argument("--html", type=Path, default=None, help="also write the report with DET plots as HTML")
    ap.add_argument("--ours-only", action="store_true", help="skip openWakeWord and microWakeWord")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="where synthesised speech is kept between runs (a `gate-cloud train` cache works)")
    ap.add_argument("--from-json", type=Path, default=None, metavar="REPORT",
                    help="print the tables and write --html from a saved report; nothing is run")
    args = ap.parse_args(argv)
    logging.basicConfig(level="WARNING", stream=sys.stderr)
    if args.from_json:
        try:
            report = json.loads(args.from_json.read_text(encoding="utf-8"))
            report["sets"], report["engines"], report["fa_targets"]  # noqa: B018 - a report has these
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"cloud.compare: {args.from_json}: not a compare report ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return 2
    else:
        try:
            report = _run(args)
        except GateError as exc:
            print(f"cloud.compare: {exc}", file=sys.stderr)
            return 2
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    for set_name in report["sets"]:
        print("\n".join(table(report, set_name)) + "\n")
    if not args.from_json:
        print(f"wrote {args.out}")
    if args.html:
        from gate_core.cliutil import atomic_write_text

        args.html.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.html, render_html(report))
        print(f"wrote {args.html}")
    return 0


def _run(args: argparse.Namespace) -> dict:
    from cloud import crossengine
    from cloud.train.corpus import synthesise
    from cloud.train.data import cached_renders, eval_plan
    from cloud.train.evaluate import build_eval_scenes
    from cloud.train.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    items = eval_plan(recipe)

    def make():
        return synthesise(items, workers=recipe.corpus.workers, desc="synth eval")

    renders = cached_renders(args.cache_dir, "eval", items, make) if args.cache_dir else make()
    sets = {"held_out": build_eval_scenes(recipe, renders, args.minutes or recipe.evaluation.minutes),
            "cross_engine": crossengine.build_scenes(recipe.phrase, seed=recipe.seed, minutes=args.cross_minutes,
                                                     cache_dir=args.cache_dir, workers=recipe.corpus.workers)}
    report = compare(sets, with_competitors=not args.ours_only)
    report["command"] = {"recipe": str(args.recipe), "minutes": args.minutes or recipe.evaluation.minutes,
                         "cross_minutes": args.cross_minutes}
    return report


if __name__ == "__main__":
    raise SystemExit(main())
