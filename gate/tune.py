"""`gate-node tune`: the analog gate's and the KWS thresholds, chosen on a labelled scenario.

Each analog setting (margin_db x decision k x min_open_s) needs one replay: the gate decides what
the KWS hears. The KWS threshold does not: every posterior is recorded during that replay, and the
detector (and the segmenter's hold) is re-run over the recordings for each threshold.

Energy at a KWS threshold other than the replayed one: the gate, ADC and KWS counts do not change
with it; the encoder, radio and cloud counts scale with the number of segments, at the replay's
own mean per segment (or, if it cut none, a nominal segment: pre-roll + keyword + command window,
PCM-sized, an upper bound). The ADC's hold through a command window is not re-estimated (a few
tens of ms per segment at most on these scenes).

Among the points that meet the false-accept target, the Pareto front of (energy, miss rate) is
kept; the best point is the front's lowest miss rate, the least energy breaking ties.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gate.config import GateSettings
from gate.energy import CLOUD, ENCODER, RADIO, EnergyModel, LedgerSnapshot, StageCounts, wire_bytes
from gate.report_schema import Detection, DetectorInfo, InputEntry, TraceRun
from gate_core.errors import GateError
from gate_core.metrics import DetectorParams, default_thresholds, score, trace_detections, wake_windows
from gate_core.wire import NodeTopics


@dataclass(frozen=True, slots=True)
class AnalogPoint:
    margin_db: float
    k: int
    min_open_s: float

    def apply(self, settings: GateSettings) -> GateSettings:
        s = settings.model_copy(deep=True)
        s.analog.margin_db = self.margin_db
        s.analog.decision.k = self.k
        s.analog.min_open_s = self.min_open_s
        return GateSettings.model_validate(s.model_dump())  # re-validated: k may exceed n_channels


@dataclass(frozen=True, slots=True)
class TuneGrid:
    margins_db: tuple[float, ...]
    ks: tuple[int, ...]
    min_open_s: tuple[float, ...]
    kws_thresholds: tuple[float, ...]

    @classmethod
    def around(cls, settings: GateSettings, *, margins_db: Sequence[float] | None = None,
               ks: Sequence[int] | None = None, min_open_s: Sequence[float] | None = None,
               kws_thresholds: Sequence[float] | None = None) -> TuneGrid:
        """Defaults: 3 margins and 3 k around the current ones (9 replays), 41 KWS thresholds."""
        a = settings.analog
        n = len(a.centres_hz) if a.centres_hz else a.n_channels
        m = a.margin_db
        return cls(
            margins_db=tuple(margins_db or sorted({max(0.0, m - 2.0), m, min(40.0, m + 2.0)})),
            ks=tuple(ks or sorted({max(1, a.decision.k - 1), a.decision.k, min(n, a.decision.k + 1)})),
            min_open_s=tuple(min_open_s or (a.min_open_s,)),
            kws_thresholds=tuple(kws_thresholds or default_thresholds()))

    def analog_points(self) -> list[AnalogPoint]:
        return [AnalogPoint(m, k, o) for m in self.margins_db for k in self.ks for o in self.min_open_s]


@dataclass(slots=True)
class TuneResult:
    target_fa_per_hour: float
    profile: str
    points: list[dict]
    front: list[dict]
    best: dict | None
    settings: GateSettings
    notes: list[str] = field(default_factory=list)

    def best_settings(self) -> GateSettings:
        if self.best is None:
            raise GateError("no setting met the false-accept target", code="tune_infeasible")
        s = AnalogPoint(self.best["margin_db"], self.best["k"], self.best["min_open_s"]).apply(self.settings)
        s.kws.threshold = self.best["kws_threshold"]
        return s

    def summary_text(self) -> str:
        lines = [f"tune: {len(self.points)} points, target {self.target_fa_per_hour:g} FA/h, profile {self.profile}",
                 f"{'margin dB':>9s} {'k':>3s} {'min open':>8s} {'KWS thr':>8s} {'miss':>7s} {'FA/h':>8s} "
                 f"{'node J':>10s} {'total J':>10s}"]
        for p in self.front:
            mark = " <- best" if p is self.best else ""
            lines.append(f"{p['margin_db']:9.2f} {p['k']:3d} {p['min_open_s']:8.3f} {p['kws_threshold']:8.4f} "
                         f"{_pct(p['miss_rate']):>7s} {_num(p['fa_per_hour']):>8s} {p['node_joules']:10.4g} "
                         f"{p['joules']:10.4g}{mark}")
        if not self.front:
            rated = [p for p in self.points if p["fa_per_hour"] is not None]
            closest = min(rated, key=lambda p: (p["fa_per_hour"], p["miss_rate"] or 0.0), default=None)
            lines.append("no point meets the false-accept target" + ("" if closest is None else
                         f"; the fewest false accepts: {_num(closest['fa_per_hour'])} FA/h at margin "
                         f"{closest['margin_db']:g} dB, k={closest['k']}, KWS threshold "
                         f"{closest['kws_threshold']:.4g} (miss rate {_pct(closest['miss_rate'])})"))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines) + "\n"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


@dataclass(frozen=True, slots=True)
class ReplayPoint:
    """The slim part of one analog setting's replay report that tune needs (it crosses a process boundary)."""

    point: AnalogPoint
    counts: dict[str, Any]  # LedgerSnapshot.to_dict(): a snapshot holds a mappingproxy, which pickle refuses
    detections: list[Detection]
    inputs: list[InputEntry]
    trace: list[TraceRun]
    detector: DetectorInfo | None
    kws_reason: str | None


def _replay_point(args: tuple) -> ReplayPoint:
    """One analog setting, in a worker process."""
    from gate.replay import replay_files

    files, labels, settings_json, point = args
    settings = point.apply(GateSettings.model_validate_json(settings_json))
    report = replay_files([Path(f) for f in files], settings=settings, labels=None, reference=False)
    if report.failed_inputs:
        failed = report.failed_inputs[0]
        raise GateError(f"tune: cannot read {failed.path}: {failed.error}", code="audio_unreadable")
    return ReplayPoint(point=point, counts=report.counts.to_dict(), detections=report.detections,
                       inputs=report.inputs, trace=report.kws_traces.gated, detector=report.kws_traces.detector,
                       kws_reason=report.kws.reason)


def tune(files: Sequence[Path], labels: dict[str, list], *, settings: GateSettings, grid: TuneGrid,
         target_fa_per_hour: float, jobs: int | None = None) -> TuneResult:
    model = EnergyModel.from_profile(settings.energy.profile, settings.energy.grid_g_co2e_per_kwh)
    tasks = [([str(f) for f in files], None, settings.model_dump_json(), p) for p in grid.analog_points()]
    jobs = max(1, min(jobs or min(2, os.cpu_count() or 1), len(tasks)))
    if jobs == 1:
        replays = [_replay_point(t) for t in tasks]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            replays = list(pool.map(_replay_point, tasks))
    if replays and replays[0].detector is None:
        raise GateError(f"tune needs the KWS: {replays[0].kws_reason}", code="kws_unavailable")
    points = []
    for rp in replays:
        points.extend(_sweep(rp, labels, settings, model, grid.kws_thresholds))
    feasible = [p for p in points if p["fa_per_hour"] is not None and p["fa_per_hour"] <= target_fa_per_hour
                and p["miss_rate"] is not None]
    front = pareto_front(feasible, ("joules", "miss_rate"))
    best = min(front, key=lambda p: (p["miss_rate"], p["joules"])) if front else None
    for p in points:
        p["feasible"] = p in feasible
        p["on_front"] = any(p is f for f in front)
    notes = ["energy at KWS thresholds other than the replayed one is estimated from per-segment means"]
    return TuneResult(target_fa_per_hour, model.profile.name, points, front, best, settings, notes)


def _sweep(rp: ReplayPoint, labels: dict[str, list], settings: GateSettings, model: EnergyModel,
           thresholds: Sequence[float]) -> list[dict]:
    det = rp.detector
    params = DetectorParams(smoothing_s=det.smoothing_s, min_consecutive=det.min_consecutive,
                            refractory_s=det.refractory_s, period_s=det.period_s, hold_s=det.hold_s)
    audio = {i.path: i.audio_seconds for i in rp.inputs}
    streams = {p: (wake_windows(spans), audio[p]) for p, spans in labels.items() if p in audio}
    counts = LedgerSnapshot.from_dict(rp.counts)
    per_segment = _per_segment(rp.detections, counts, settings)
    fixed = LedgerSnapshot(audio_seconds=counts.audio_seconds,
                           stages={n: c for n, c in counts.stages.items() if n not in (ENCODER, RADIO, CLOUD)})
    p0 = rp.point
    duty = sum(i.duty_cycle * i.audio_seconds for i in rp.inputs) / max(counts.audio_seconds, 1e-9)
    runs = [r.model_dump() for r in rp.trace]
    out = []
    for th in thresholds:
        dets = trace_detections(runs, params, th)
        n = sum(len(v) for v in dets.values())
        priced = model.price(fixed.add(_scaled(per_segment, n)))
        m = score(dets, streams)
        out.append({"margin_db": p0.margin_db, "k": p0.k, "min_open_s": p0.min_open_s, "kws_threshold": th,
                    "gate_duty_cycle": duty, "segments": n, "miss_rate": m["miss_rate"],
                    "fa_per_hour": m["fa_per_hour"], "true_accepts": m["true_accepts"],
                    "false_accepts": m["false_accepts"], "keywords": m["keywords"],
                    "joules": priced.total_j, "node_joules": priced.node_j, "bytes": priced.total_bytes})
    return out


def _per_segment(detections: list[Detection], counts: LedgerSnapshot, settings: GateSettings) -> dict[str, StageCounts]:
    """Mean encoder/radio/cloud counts of one segment."""
    n = len(detections)
    if n:
        return {s: StageCounts(invocations=1, active_seconds=counts[s].active_seconds / n,
                               bytes=round(counts[s].bytes / n)) for s in (ENCODER, RADIO, CLOUD)}
    seg = settings.segmenter
    audio_s = min(seg.preroll_s + seg.keyword_s + seg.command_window_s, seg.max_segment_s)
    payload = round(audio_s * settings.audio.sample_rate) * 2
    topic = NodeTopics(settings.mqtt.node_id, settings.mqtt.topic_prefix).segments
    return {ENCODER: StageCounts(invocations=1, active_seconds=audio_s, bytes=payload),
            RADIO: StageCounts(invocations=1, bytes=wire_bytes(payload, topic_len=len(topic.encode()),
                                                               qos=max(1, settings.mqtt.qos))),
            CLOUD: StageCounts(invocations=1, active_seconds=audio_s)}


def _scaled(per_segment: dict[str, StageCounts], n: int) -> LedgerSnapshot:
    return LedgerSnapshot(stages={s: StageCounts(invocations=c.invocations * n, active_seconds=c.active_seconds * n,
                                                 bytes=c.bytes * n) for s, c in per_segment.items()})


def pareto_front(points: Sequence[dict], keys: tuple[str, str]) -> list[dict]:
    """Points no other point beats on both ``keys`` (lower is better) and ties on neither; by the first key."""
    a, b = keys
    ordered = sorted(points, key=lambda p: (p[a], p[b]))
    front: list[dict] = []
    best_b = float("inf")
    for p in ordered:
        if p[b] < best_b:
            front.append(p)
            best_b = p[b]
    return front


# ----------------------------------------------------------------------------- output

SWEEP_FIELDS = ("margin_db", "k", "min_open_s", "kws_threshold", "gate_duty_cycle", "segments", "keywords",
                "true_accepts", "false_accepts", "miss_rate", "fa_per_hour", "node_joules", "joules", "bytes",
                "feasible", "on_front")


def thresholds_yaml(result: TuneResult) -> str:
    """The complete thresholds file of the best point (every field, so `config check` sees them all)."""
    b = result.best
    header = [
        "# gate thresholds file written by `gate-node tune`.",
        f"# Best point at <= {result.target_fa_per_hour:g} false accepts per hour (profile {result.profile}):",
        f"#   miss rate {_pct(b['miss_rate'])}, {_num(b['fa_per_hour'])} FA/h, {b['joules']:.4g} J "
        f"({b['node_joules']:.4g} J on the node) over the tuning scenario.",
        "# Check an edited copy with `gate-node config check FILE`.", ""]
    body = yaml.safe_dump(result.best_settings().model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    return "\n".join(header) + body


def write_outputs(result: TuneResult, out: Path, *, sweep_out: Path | None = None) -> list[Path]:
    """The thresholds file (if a point met the target) and the sweep as JSON and CSV."""
    written = []
    if result.best is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(thresholds_yaml(result), encoding="utf-8")
        written.append(out)
    base = sweep_out.with_suffix("") if sweep_out is not None else out.with_suffix(".sweep")
    doc = {"target_fa_per_hour": result.target_fa_per_hour, "profile": result.profile, "best": result.best,
           "front": result.front, "points": result.points, "notes": result.notes}
    json_path, csv_path = Path(f"{base}.json"), Path(f"{base}.csv")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SWEEP_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(result.points)
    csv_path.write_text(buf.getvalue(), encoding="utf-8")
    return written + [json_path, csv_path]


__all__: list[Any] = ["AnalogPoint", "ReplayPoint", "TuneGrid", "TuneResult", "pareto_front", "thresholds_yaml", "tune",
                      "write_outputs"]
