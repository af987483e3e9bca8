"""The replay report: counts, their price under one device profile, baselines and savings.

The report is a :class:`gate.report_schema.ReplayReport`; its JSON is the saved file.

The report keeps the raw counts (``counts``, ``baselines.*.counts``) beside the priced figures, so
:func:`reprice` can price a saved report for another profile without touching the audio. Every
figure here is a pure function of those counts and the profile.

Pipelines compared on the same audio and the same profile:
- ``cascade``: what the replay counted (analog gate, ADC on demand, KWS while open, segments).
- ``always_on_kws``: no analog gate; ADC and KWS on all the time, and the cascade's own segments
  (count, payload bytes, audio seconds) sent and verified, so only the gate's effect differs.
- ``always_stream``: ADC and radio always on, raw PCM to the cloud, the cloud model on everything.

The ``cloud`` stage is priced by the profile (``cloud.j_per_audio_s`` x audio seconds x PUE, a
Whisper-class figure) for every pipeline alike; the replay's own cloud worker meters what its small
verifier really cost and that is reported apart (``cloud.measured``), never added to the totals.

One caveat on re-pricing: a profile's ``adc.startup_s`` is simulated (the ADC delivers audio only
once ready), so a report re-priced for a profile with another start-up time differs slightly from
a fresh replay; :func:`reprice` says so in ``notes``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gate import __version__
from gate.energy import (
    ADC,
    CLOUD,
    HOST,
    RADIO,
    STAGES,
    EnergyModel,
    LedgerSnapshot,
    always_on_kws_counts,
    always_stream_counts,
    savings,
)
from gate.energy.model import EnergyBreakdown
from gate.report_schema import (
    REPORT_SCHEMA,
    AlwaysOnKwsParams,
    Baseline,
    CloudInfo,
    CloudSensitivity,
    CommandResults,
    Detection,
    DetectionMetrics,
    DetRow,
    FailedInput,
    GateOpenInterval,
    InputEntry,
    KwsInfo,
    KwsTraces,
    LabelSpan,
    MetricScore,
    ProfileSummary,
    RadioInfo,
    ReplayReport,
    Savings,
    ScenarioSummary,
    SimulatedWith,
    StageRow,
    Timeline,
    Totals,
    Windows,
    parse_report,
)
from gate.transport.config import estimated_session
from gate_core.cliutil import atomic_write_text

if TYPE_CHECKING:
    from gate.config import GateSettings
    from gate.replay import FileResult

PIPELINES = ("always_stream", "always_on_kws", "cascade")

__all__ = ["PIPELINES", "add_detection_metrics", "build_report", "load_report", "reprice", "summary_text",
           "write_report"]


def build_report(*, results: Sequence[FileResult], failed: list[FailedInput], settings: GateSettings,
                 model: EnergyModel, stages_run: Sequence[str], kws: KwsInfo, radio: RadioInfo, cloud: CloudInfo,
                 kws_traces: KwsTraces, timeline: Timeline, extra_counts: LedgerSnapshot | None = None,
                 kws_hop_s: float | None = None) -> ReplayReport:
    """``extra_counts``: charges not tied to one file (a live transport's radio, the cloud), added to
    the totals. ``kws_hop_s``: the KWS inference period, for the always-on-KWS baseline."""
    counts = LedgerSnapshot()
    for r in results:
        counts = counts.add(r.counts)
    if extra_counts is not None:
        counts = counts.add(LedgerSnapshot(stages=dict(extra_counts.stages)))
    detections = [d for r in results for d in r.detections]
    # Each recording is a power-up with a link of its own: one connect each (a stream's own traffic
    # keeps its link alive, so no keepalives).
    connects = estimated_session(settings.mqtt).connect * len(results)
    baselines: dict[str, tuple[LedgerSnapshot, AlwaysOnKwsParams | None]] = {
        "always_stream": (always_stream_counts(counts.audio_seconds, link_bytes=connects), None)}
    if kws_hop_s:
        seg = {"n_segments": len(detections), "segments_bytes": sum(d.payload_bytes for d in detections),
               "segment_audio_s": sum(d.end_s - d.start_s for d in detections)}
        bare = always_on_kws_counts(counts.audio_seconds, kws_hop_s=kws_hop_s, **seg)
        # The same segments go up either way, and with them the same session, status and verdict traffic.
        link = max(0, counts[RADIO].bytes - bare[RADIO].bytes)
        baselines["always_on_kws"] = (
            always_on_kws_counts(counts.audio_seconds, kws_hop_s=kws_hop_s, link_bytes=link, **seg),
            AlwaysOnKwsParams(kws_hop_s=kws_hop_s, link_bytes=link, **seg))
    simulated = SimulatedWith(profile=model.profile.name, adc_startup_s=_adc_startup_s(model))
    return ReplayReport(
        schema_=REPORT_SCHEMA,
        generated_by=f"gate {__version__}",
        stages_run=list(stages_run),
        audio_seconds=counts.audio_seconds,
        counts=counts,
        simulated_with=simulated,
        inputs=[InputEntry(path=r.path, audio_seconds=r.audio_seconds,
                           gate_open_intervals=[(round(a, 6), round(b, 6)) for a, b in r.intervals],
                           n_opens=len(r.intervals),
                           duty_cycle=_ratio(sum(b - a for a, b in r.intervals), r.audio_seconds),
                           n_detections=len(r.detections), suppressed_detections=r.suppressed_detections,
                           **({"second_stage": r.second_stage} if r.second_stage is not None else {}))
                for r in results],
        # One row per published segment: where it was cut, the KWS score, the cloud's verdict if any.
        detections=detections,
        gate_open_intervals=[GateOpenInterval(path=r.path, start_s=round(a, 6), end_s=round(b, 6))
                             for r in results for a, b in r.intervals],
        failed_inputs=failed,
        settings=settings.model_dump(mode="json"),
        kws=kws, radio=radio, cloud=cloud, kws_traces=kws_traces, timeline=timeline,
        **_priced(counts, baselines, model, simulated, cloud))


def reprice(report: ReplayReport, model: EnergyModel) -> ReplayReport:
    """Price (or re-price) a report's counts with ``model``; returns a new report."""
    baselines = {name: (b.counts, b.params) for name, b in report.baselines.items()}
    return report.model_copy(update=_priced(report.counts, baselines, model, report.simulated_with, report.cloud))


def _priced(counts: LedgerSnapshot, baselines: Mapping[str, tuple[LedgerSnapshot, AlwaysOnKwsParams | None]],
            model: EnergyModel, simulated: SimulatedWith, cloud: CloudInfo) -> dict[str, Any]:
    """The report's fields that follow from its counts and ``model``."""
    cascade = model.price(counts)
    priced_baselines = {name: model.price(base_counts) for name, (base_counts, _) in baselines.items()}
    out: dict[str, Any] = {
        "profile": ProfileSummary(name=model.profile.name, description=model.profile.description,
                                  host_idle_w=model.profile.host.idle_w),
        "grid_g_co2e_per_kwh": model.grid_g_co2e_per_kwh,
        "stages": _stage_table(counts, cascade),
        "totals": _totals(cascade),
        "baselines": {name: Baseline(counts=base_counts, **({"params": params} if params is not None else {}),
                                     joules=priced.total_j, bytes=priced.total_bytes, co2e_g=priced.co2e_g,
                                     stages=_stage_table(base_counts, priced), totals=_totals(priced))
                      for (name, (base_counts, params)), priced in zip(baselines.items(), priced_baselines.values(),
                                                                       strict=True)},
        "savings_vs": {name: _savings(cascade, priced) for name, priced in priced_baselines.items()},
    }
    out["savings"] = out["savings_vs"]["always_stream"]
    notes = []
    startup = _adc_startup_s(model)
    if simulated.adc_startup_s != startup:
        notes.append(f"re-priced for {model.profile.name} (ADC start-up {startup * 1000:g} ms) from a replay "
                     f"simulated with {simulated.profile} ({simulated.adc_startup_s * 1000:g} ms): detections "
                     f"and ADC seconds are those of the simulated start-up")
    share = out["savings"].host_share_of_cascade_pct
    if share >= 50:
        notes.append(f"the host's idle power ({model.profile.host.idle_w:g} W) is {share:.0f}% of the cascade's "
                     f"energy: it is drawn whatever the cascade does, so gating saves bytes, cloud and stage "
                     f"energy but cannot lower the node's total below it")
    out["notes"] = notes
    out["cloud_sensitivity"] = _cloud_sensitivity(cloud, counts, cascade, {
        n: (baselines[n][0], b) for n, b in priced_baselines.items()})
    return out


def _adc_startup_s(model: EnergyModel) -> float:
    return model.profile.stages[ADC].startup_s if ADC in model.profile.stages else 0.0


def _cloud_sensitivity(cloud: CloudInfo, counts: LedgerSnapshot, cascade: EnergyBreakdown,
                       baselines: dict[str, tuple[LedgerSnapshot, EnergyBreakdown]]) -> CloudSensitivity | None:
    """Every pipeline's cloud re-priced at what the replay's own worker measured per audio second.

    The profile prices the cloud as a Whisper-class model; the worker runs a small verifier. The
    savings move a lot between the two, so both are shown rather than one chosen quietly.
    """
    jps = cloud.measured.j_per_audio_s if cloud.measured is not None else None
    if not jps:
        return None
    pipes = {"cascade": (counts, cascade), **baselines}
    totals = {n: b.total_j - b.cloud_j + jps * c[CLOUD].active_seconds for n, (c, b) in pipes.items()}
    return CloudSensitivity(j_per_audio_s=jps, totals_j=totals,
                            savings_joules_pct={n: _pct_saved(totals["cascade"], totals[n]) for n in baselines})


def _savings(cascade: EnergyBreakdown, base: EnergyBreakdown) -> Savings:
    return Savings(**savings(cascade, base),
                   joules_pct_excluding_host=_pct_saved(cascade.total_j - cascade.host_j, base.total_j - base.host_j),
                   node_joules_pct=_pct_saved(cascade.node_j, base.node_j),
                   host_share_of_cascade_pct=100.0 * _ratio(cascade.host_j, cascade.total_j))


def _command_results(dets: Sequence[Detection], labels: dict[str, list]) -> CommandResults | None:
    """The cloud's command for each accepted detection of a labelled wake phrase + command, against the
    command said (the ``command`` label of a ``wake_command`` event that starts within 2 s after the fire)."""
    from gate_core.vocabulary import match_command

    n = correct = unrecognised = 0
    for d in dets:
        if not d.accepted:
            continue
        said = [lab for lab in labels.get(d.path, ())
                if lab.label == "command" and getattr(lab, "kind", "") == "wake_command"
                and d.detect_s - 1.0 <= lab.start_s <= d.detect_s + 2.0]
        if not said:
            continue  # a false accept, or labels without command texts
        want = match_command(getattr(said[0], "text", ""))
        n += 1
        correct += want is not None and d.verdict.command == want.name
        unrecognised += d.verdict.command is None
    if n == 0:
        return None
    return CommandResults(detected=n, correct=correct, unrecognised=unrecognised, wrong=n - correct - unrecognised)


def add_detection_metrics(report: ReplayReport, labels: dict[str, list], *,
                          reference_detections: dict[str, list[float]] | None = None) -> ReplayReport:
    """The report with its detections (tiny model alone, after cloud verification, always-on
    reference) scored against labels, and DET curves from the recorded KWS traces."""
    from gate_core.metrics import EARLY_S, LATE_S, DetectorParams, det_curve, hold, score, wake_windows

    audio = {i.path: i.audio_seconds for i in report.inputs}
    streams = {p: (wake_windows(spans), audio[p]) for p, spans in labels.items() if p in audio}
    dets = report.detections
    by_path: dict[str, list[float]] = {}
    accepted: dict[str, list[float]] = {}
    for d in dets:
        by_path.setdefault(d.path, []).append(d.detect_s)
        if d.accepted:
            accepted.setdefault(d.path, []).append(d.detect_s)
    cloud_ok = report.cloud.available
    det = report.kws_traces.detector
    always_on = None
    if reference_detections is not None:
        # An always-on node cuts segments too: its detections go through the same hold.
        held = {p: hold(t, det.hold_s if det else 0.0) for p, t in reference_detections.items()}
        always_on = MetricScore.model_validate(score(held, streams))
    curves: dict[str, list[DetRow]] = {}
    if det:
        params = DetectorParams(smoothing_s=det.smoothing_s, min_consecutive=det.min_consecutive,
                                refractory_s=det.refractory_s, period_s=det.period_s, hold_s=det.hold_s)
        for name, runs in (("gated", report.kws_traces.gated), ("always_on", report.kws_traces.always_on)):
            if runs is not None:
                rows = det_curve([r.model_dump() for r in runs], params, streams)
                curves[name] = [DetRow.model_validate(row) for row in rows]
    tiny = MetricScore.model_validate(score(by_path, streams))
    out = DetectionMetrics(
        windows=Windows(early_s=EARLY_S, late_s=LATE_S), tiny=tiny,
        tiny_cloud=MetricScore.model_validate(score(accepted, streams)) if cloud_ok else None,
        always_on_kws=always_on, det_curve=curves,
        **({"commands": _command_results(dets, labels)} if cloud_ok else {}))
    return report.model_copy(update={
        "detection": out,
        "labels": {p: [LabelSpan(start_s=s.start_s, end_s=s.end_s, label=s.label) for s in spans]
                   for p, spans in labels.items()},
        # The original summary block, kept for readers of gate.replay/1 reports.
        "scenario": ScenarioSummary(keywords=tiny.keywords, hits=tiny.true_accepts, misses=tiny.misses,
                                    false_accepts=tiny.false_accepts,
                                    recall=_ratio(tiny.true_accepts, tiny.keywords), late_s=LATE_S)})


def _stage_table(counts: LedgerSnapshot, priced: EnergyBreakdown) -> dict[str, StageRow]:
    table = {}
    for name in list(STAGES) + [n for n in priced.stage_j if n not in STAGES]:
        c = counts[name]
        table[name] = StageRow(invocations=c.invocations, active_seconds=c.active_seconds,
                               duty_cycle=_ratio(c.active_seconds, counts.audio_seconds), bytes=c.bytes,
                               joules=priced.stage_j.get(name, 0.0))
    table[HOST] = StageRow(invocations=0, active_seconds=counts.audio_seconds,
                           duty_cycle=1.0 if counts.audio_seconds else 0.0, bytes=0, joules=priced.host_j)
    return table


def _totals(priced: EnergyBreakdown) -> Totals:
    return Totals(joules=priced.total_j, bytes=priced.total_bytes, co2e_g=priced.co2e_g, node_joules=priced.node_j,
                  cloud_joules=priced.cloud_j, host_joules=priced.host_j, mean_node_w=priced.mean_node_w,
                  unpriced_stages=list(priced.unpriced))


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _pct_saved(cascade: float, baseline: float) -> float | None:
    if baseline == 0:
        return 0.0 if cascade == 0 else None
    return 100.0 * (1.0 - cascade / baseline)


def write_report(report: ReplayReport, path: Path) -> None:
    """Atomically: a reader never sees half a report."""
    atomic_write_text(path, json.dumps(report.to_json(), indent=2) + "\n")


def load_report(path: Path) -> ReplayReport:
    """A saved replay report; a UsageError naming the file, the field and its value otherwise."""
    from gate_core.cliutil import fail, read_json

    try:
        return parse_report(read_json(Path(path), "gate replay report (JSON)"), path)
    except ValueError as exc:
        fail(str(exc), code="report_invalid")


def summary_text(report: ReplayReport) -> str:
    """The savings table: per-stage joules of each pipeline, totals, bytes, CO2e and detection."""
    prof = report.profile
    lines = [f"gate replay: {len(report.inputs)} file(s), {report.audio_seconds:.1f} s of audio, "
             f"profile {prof.name} (host idle {prof.host_idle_w:g} W)",
             f"stages run: {', '.join(report.stages_run)}", ""]
    names = [n for n in PIPELINES if n == "cascade" or n in report.baselines]
    tables = {n: (report.stages if n == "cascade" else report.baselines[n].stages) for n in names}
    totals = {n: (report.totals if n == "cascade" else report.baselines[n].totals) for n in names}
    head = "".join(f"{n.replace('_', '-') + ' J':>18s}" for n in names)
    lines.append(f"{'stage':14s} {'duty':>7s}{head}")
    for stage, row in report.stages.items():
        vals = [tables[n][stage].joules if stage in tables[n] else 0.0 for n in names]
        if not any(vals) and row.active_seconds == 0:
            continue
        lines.append(f"{stage:14s} {100 * row.duty_cycle:6.2f}%" + "".join(f"{v:18.4g}" for v in vals))
    lines.append(f"{'total':14s} {'':7s}" + "".join(f"{totals[n].joules:18.4g}" for n in names))
    lines.append(f"{'  node only':14s} {'':7s}" + "".join(f"{totals[n].node_joules:18.4g}" for n in names))
    lines.append(f"{'radio bytes':14s} {'':7s}" + "".join(f"{totals[n].bytes:18,d}" for n in names))
    lines.append(f"{'CO2e g':14s} {'':7s}" + "".join(f"{totals[n].co2e_g:18.3g}" for n in names))
    lines.append("")
    for base, sav in report.savings_vs.items():
        lines.append(f"saved vs {base.replace('_', '-')}: {_fmt_pct(sav.joules_pct)} of joules "
                     f"({_fmt_pct(sav.joules_pct_excluding_host)} excluding the host's idle power), "
                     f"{_fmt_pct(sav.bytes_pct)} of bytes")
    sens = report.cloud_sensitivity
    if sens:
        lines.append(f"with the cloud at the worker's measured {sens.j_per_audio_s:.3g} J per audio s instead of "
                     f"the profile's: " + ", ".join(f"{_fmt_pct(v)} of joules saved vs {b.replace('_', '-')}"
                                                   for b, v in sens.savings_joules_pct.items()))
    lines.append(f"host idle power is {report.savings.host_share_of_cascade_pct:.1f}% of the cascade's "
                 f"energy (CO2e at {report.grid_g_co2e_per_kwh:g} g/kWh)")
    for note in report.notes:
        lines.append(f"note: {note}")
    dets = report.detections
    if not report.kws.available:
        lines.append(f"KWS not run: {report.kws.reason}")
    else:
        verdicts = sum(1 for d in dets if d.verdict)
        accepted = sum(1 for d in dets if d.accepted)
        cloud = report.cloud
        tail = (f", {verdicts} verdict(s), {accepted} accepted by the cloud" if cloud.available
                else f" ({cloud.reason})" if cloud.reason else "")
        lines.append(f"detections: {len(dets)} segment(s) published{tail}")
        measured = cloud.measured
        if measured and None not in (measured.joules, measured.cpu_s, measured.model_cpu_s):
            lines.append(f"cloud worker's own meter: {measured.joules:.3g} J for {measured.cpu_s:.2f} CPU s "
                         f"({measured.model_cpu_s:.3f} s in the models); the cloud stage above is the "
                         f"profile's {report.stages['cloud'].joules:.3g} J")
    if report.detection is not None:
        lines.append("")
        lines.append(f"{'detection':18s} {'TA':>6s} {'miss':>8s} {'FA':>5s} {'FA/h':>8s} {'latency':>9s}")
        for label, m in (("tiny (gated)", report.detection.tiny), ("tiny + cloud", report.detection.tiny_cloud),
                         ("always-on KWS", report.detection.always_on_kws)):
            if m is None:
                continue
            lat = m.latency_s.median
            lines.append(f"{label:18s} {m.true_accepts:3d}/{m.keywords:<3d}{_fmt_rate(m.miss_rate):>8s} "
                         f"{m.false_accepts:5d} {_fmt_num(m.fa_per_hour):>8s} "
                         f"{'-' if lat is None else f'{lat:.2f} s':>9s}")
        cmds = report.detection.commands
        if cmds:
            lines.append(f"commands after accepted detections: {cmds.correct} of {cmds.detected} right "
                         f"({cmds.unrecognised} not recognised, {cmds.wrong} wrong)")
    if report.failed_inputs:
        lines.append(f"{len(report.failed_inputs)} file(s) skipped (see stderr and failed_inputs in the report)")
    return "\n".join(lines) + "\n"


def _fmt_rate(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _fmt_num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _fmt_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}%"
