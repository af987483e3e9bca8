"""The replay report as one self-contained HTML file: inline CSS, plots as base64 PNGs.

Nothing is fetched when the page is opened (no scripts, fonts or images by URL), so the file can
be mailed, archived or opened offline. Plots are drawn with matplotlib's Agg backend, from the
report alone: a re-priced report renders without the audio.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from gate.report_schema import DetectionMetrics, ReplayReport, StageRow
from gate_core.cliutil import atomic_write_text

PIPELINE_LABELS = {"always_stream": "always-stream", "always_on_kws": "always-on KWS", "cascade": "cascade"}
STAGE_COLOURS = {"analog_gate": "#8c564b", "adc": "#1f77b4", "features_kws": "#ff7f0e", "encoder": "#9467bd",
                 "radio": "#d62728", "cloud": "#17becf", "host": "#bbbbbb"}
LABEL_COLOURS = {"wake": "#2ca02c", "wake_command": "#98df8a", "command": "#aec7e8", "confusable": "#ff7f0e",
                 "speech": "#c7c7c7", "noise": "#e7e7e7", "silence": "#ffffff"}
TIMELINE_MAX_S = 600.0  # a longer input is drawn whole and again zoomed on its first minutes


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pipelines(report: ReplayReport) -> list[tuple[str, dict[str, StageRow]]]:
    base = report.baselines
    out = [(n, base[n].stages) for n in ("always_stream", "always_on_kws") if n in base]
    return out + [("cascade", report.stages)]


def _joules(table: dict[str, StageRow], stage: str) -> float:
    """A stage's joules in one pipeline's table (0 for a stage it does not have)."""
    return table[stage].joules if stage in table else 0.0


def energy_plot(report: ReplayReport) -> str:
    """Stacked joules per stage for each pipeline: everything, and the node's stages without the host."""
    plt = _plt()
    pipes = _pipelines(report)
    stages = [s for s in STAGE_COLOURS if any(_joules(t, s) for _, t in pipes)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, include, title in ((axes[0], stages, "all energy (node, host idle, cloud)"),
                               (axes[1], [s for s in stages if s not in ("host", "cloud")],
                                "node stages only (no host idle, no cloud)")):
        bottom = [0.0] * len(pipes)
        x = range(len(pipes))
        for s in include:
            vals = [_joules(t, s) for _, t in pipes]
            ax.bar(x, vals, bottom=bottom, color=STAGE_COLOURS[s], label=s, edgecolor="white", linewidth=0.5,
                   hatch="//" if s == "host" else None)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        for i, b in enumerate(bottom):
            ax.text(i, b, f"{b:.3g} J", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(x), [PIPELINE_LABELS[n] for n, _ in pipes])
        ax.set_ylabel("joules")
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.12)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="center right", frameon=False, fontsize=9)
    fig.suptitle(f"energy per stage, profile {report.profile.name}, {report.audio_seconds:.0f} s of audio",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    return _png(fig)


def timeline_plot(report: ReplayReport, path: str, *, t_max: float | None = None) -> str:
    """Audio level, labels, gate-open, KWS posterior, segments and verdicts of one input."""
    plt = _plt()
    audio_s = report.input(path).audio_seconds
    end = min(audio_s, t_max) if t_max else audio_s
    fig, axes = plt.subplots(5, 1, figsize=(13, 6.5), sharex=True,
                             gridspec_kw={"height_ratios": [2, 1, 0.6, 1.6, 1]})
    ax_lvl, ax_lab, ax_gate, ax_kws, ax_seg = axes
    level = report.timeline.level_dbfs.get(path) or []
    hop = report.timeline.level_hop_s
    n = min(len(level), int(end / hop) + 1)
    ax_lvl.plot([i * hop for i in range(n)], level[:n], color="#444", linewidth=0.6)
    ax_lvl.set_ylabel("level\ndBFS")
    for lab in (report.labels or {}).get(path, []):
        if lab.start_s > end or lab.label in ("silence", "noise"):
            continue
        row = 1 if lab.label in ("wake", "wake_command") else 0
        ax_lab.broken_barh([(lab.start_s, lab.end_s - lab.start_s)], (row, 0.8),
                           color=LABEL_COLOURS.get(lab.label, "#ccc"))
    ax_lab.set_yticks([0.4, 1.4], ["other", "wake"])
    ax_lab.set_ylim(0, 2)
    ax_lab.set_ylabel("labels")
    spans = [(a, b - a) for a, b in _intervals(report, path) if a <= end]
    ax_gate.broken_barh(spans, (0, 1), color="#1f77b4")
    ax_gate.set_yticks([])
    ax_gate.set_ylabel("gate\nopen")
    det = report.kws_traces.detector
    for run in report.kws_traces.gated:
        if run.path != path or run.t0_s > end or det is None:
            continue
        t = [run.t0_s + det.period_s * i for i in range(len(run.p))]
        ax_kws.plot(t, run.p, color="#ff7f0e", linewidth=0.7)
    if det is not None:
        ax_kws.axhline(det.threshold, color="#d62728", linestyle="--", linewidth=0.8, label="threshold")
        ax_kws.legend(loc="upper right", fontsize=8, frameon=False)
    ax_kws.set_ylim(-0.02, 1.02)
    ax_kws.set_ylabel("KWS\nposterior")
    for d in report.detections:
        if d.path != path or d.start_s > end:
            continue
        ax_seg.broken_barh([(d.start_s, d.end_s - d.start_s)], (0, 0.5), color="#9467bd")
        colour, marker = ("#888", "o") if not d.verdict else ("#2ca02c", "^") if d.accepted else ("#d62728", "x")
        ax_seg.plot([d.detect_s], [0.8], marker=marker, color=colour, markersize=6, linestyle="none")
    ax_seg.set_yticks([0.25, 0.8], ["segment", "verdict"])
    ax_seg.set_ylim(-0.1, 1.1)
    ax_seg.set_xlim(0, end)
    ax_seg.set_xlabel("audio time, s    (verdict: green ^ accepted, red x rejected, grey o none)")
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"{Path(path).name}: {end:.0f} s" + (f" of {audio_s:.0f} s" if end < audio_s else ""), fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _intervals(report: ReplayReport, path: str) -> list[tuple[float, float]]:
    return [(g.start_s, g.end_s) for g in report.gate_open_intervals if g.path == path]


def det_plot(report: ReplayReport) -> str:
    """Miss rate against false accepts per hour, from the threshold sweeps over recorded posteriors."""
    plt = _plt()
    det = report.detection
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    styles = {"gated": ("cascade (KWS behind the analog gate)", "#ff7f0e"),
              "always_on": ("always-on KWS (no gate)", "#1f77b4")}
    drawn = False
    for name, rows in (det.det_curve if det else {}).items():
        pts = sorted((r.fa_per_hour, 100 * r.miss_rate) for r in rows
                     if r.fa_per_hour is not None and r.miss_rate is not None)
        if pts:
            label, colour = styles.get(name, (name, "#444"))
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker=".", color=colour, label=label, linewidth=1.2, drawstyle="steps-post")
            drawn = True
    for key, label, marker in (("tiny", "operating point: tiny", "o"), ("tiny_cloud", "tiny + cloud", "*"),
                               ("always_on_kws", "operating point: always-on", "s")):
        m = getattr(det, key) if det else None
        if m and m.fa_per_hour is not None and m.miss_rate is not None:
            ax.plot([m.fa_per_hour], [100 * m.miss_rate], marker=marker, markersize=9, linestyle="none",
                    label=label, markeredgecolor="black")
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no labelled scenario or no KWS:\nno DET curve", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("false accepts per hour (non-wake audio)")
    ax.set_ylabel("miss rate, %")
    ax.set_ylim(-2, 102)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, frameon=False)
    ax.set_title("DET: KWS threshold sweep over the recorded posteriors", fontsize=10)
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- page

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
 padding:0 1em;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
th,td{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f6f6f6}
.note{background:#fff6e0;border-left:4px solid #f0a500;padding:.5em .9em;margin:.6em 0}
.good{color:#1a7f37;font-weight:600}.muted{color:#777;font-size:.9em}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
code{background:#f3f3f3;padding:0 .2em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _j(v: float) -> str:
    return f"{v:.4g}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}%"


def _rate(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _savings_table(report: ReplayReport) -> str:
    pipes = [n for n, _ in _pipelines(report)]
    tot = {n: report.totals if n == "cascade" else report.baselines[n].totals for n in pipes}
    head = "".join(f"<th>{_e(PIPELINE_LABELS[n])}</th>" for n in pipes)
    rows = [("total joules", lambda t: _j(t.joules)), ("node joules (host included)", lambda t: _j(t.node_joules)),
            ("host idle joules", lambda t: _j(t.host_joules)), ("cloud joules (profile)", lambda t: _j(t.cloud_joules)),
            ("mean node power, W", lambda t: f"{t.mean_node_w:.4g}"), ("radio bytes", lambda t: f"{t.bytes:,}"),
            ("CO2e, g", lambda t: f"{t.co2e_g:.3g}")]
    body = "".join(f"<tr><td>{_e(name)}</td>" + "".join(f"<td>{f(tot[n])}</td>" for n in pipes) + "</tr>"
                   for name, f in rows)
    sav = "".join(
        f"<tr><td>cascade saves vs {_e(PIPELINE_LABELS[b])}</td><td>{_pct(s.joules_pct)}</td>"
        f"<td>{_pct(s.joules_pct_excluding_host)}</td><td>{_pct(s.bytes_pct)}</td></tr>"
        for b, s in report.savings_vs.items())
    return (f"<table><tr><th></th>{head}</tr>{body}</table>"
            f"<table><tr><th></th><th>joules</th><th>joules excl. host idle</th><th>bytes</th></tr>{sav}</table>")


def _stage_table(report: ReplayReport) -> str:
    pipes = _pipelines(report)
    head = "".join(f"<th>{_e(PIPELINE_LABELS[n])} J</th>" for n, _ in pipes)
    rows = []
    for stage, row in report.stages.items():
        vals = [_joules(t, stage) for _, t in pipes]
        rows.append(f"<tr><td>{_e(stage)}</td><td>{row.invocations:,}</td><td>{row.active_seconds:.2f}</td>"
                    f"<td>{100 * row.duty_cycle:.2f}%</td><td>{row.bytes:,}</td>"
                    + "".join(f"<td>{_j(v)}</td>" for v in vals) + "</tr>")
    return (f"<table><tr><th>stage</th><th>invocations</th><th>active s</th><th>duty</th><th>bytes</th>{head}</tr>"
            + "".join(rows) + "</table>")


def _detection_table(report: ReplayReport) -> str:
    det = report.detection
    if not det:
        return "<p class='muted'>No labels: replay a <code>--scenario</code> to score detections.</p>"
    rows = []
    for key, label in (("tiny", "tiny model alone (gated)"), ("tiny_cloud", "tiny + cloud verification"),
                       ("always_on_kws", "always-on KWS (no gate)")):
        m = getattr(det, key)
        if m is None:
            why = {"tiny_cloud": report.cloud.reason or "no cloud worker",
                   "always_on_kws": "reference pass not run"}.get(key, "")
            rows.append(f"<tr><td>{_e(label)}</td><td colspan='6' class='muted'>{_e(why)}</td></tr>")
            continue
        lat = m.latency_s
        rows.append(f"<tr><td>{_e(label)}</td><td>{m.true_accepts}/{m.keywords}</td>"
                    f"<td>{_rate(m.miss_rate)}</td><td>{m.false_accepts}</td><td>{_num(m.fa_per_hour)}</td>"
                    f"<td>{_num(lat.median, '.2f')}</td><td>{_num(lat.p90, '.2f')}</td></tr>")
    w = det.windows
    return ("<table><tr><th></th><th>true accepts</th><th>miss rate</th><th>false accepts</th><th>FA/hour</th>"
            "<th>latency median, s</th><th>latency p90, s</th></tr>" + "".join(rows) + "</table>"
            f"<p class='muted'>A detection counts for a wake word from {w.early_s} s before it starts to "
            f"{w.late_s} s after it ends; latency is detection time minus the word's end. FA/hour is over the "
            f"{det.tiny.non_wake_hours * 60:.1f} min of audio outside those windows.</p>" + _commands_line(det))


def _commands_line(det: DetectionMetrics) -> str:
    c = det.commands
    if not c:
        return ""
    return (f"<p>Commands after accepted detections: {c.correct} of {c.detected} right "
            f"({c.unrecognised} not recognised, {c.wrong} wrong), against the command said after each "
            "labelled wake phrase.</p>")


def _cloud_block(report: ReplayReport) -> str:
    c = report.cloud
    m = c.measured
    if not c.available:
        return f"<p class='muted'>{_e(c.reason or 'no cloud worker: verdicts not available')}</p>"
    measured = "" if not m or None in (m.joules, m.cpu_s, m.model_cpu_s, m.segments, m.audio_s) else (
        f"<p>The worker's own meter (process CPU time x server W per busy core x PUE): <b>{m.joules:.3g} J</b> "
        f"for {m.cpu_s:.2f} CPU s, {m.model_cpu_s:.3f} s of it in the models, {m.segments} segments, "
        f"{m.audio_s:.1f} audio s. The <code>cloud</code> stage in the tables is priced by the profile "
        f"({_j(_joules(report.stages, 'cloud'))} J, a Whisper-class figure per audio second), "
        f"the same price the baselines pay, so the comparison is like for like; the measured figure is the small "
        f"verifier actually run and is not added to any total.</p>")
    sens = report.cloud_sensitivity
    if sens:
        measured += ("<p>With every pipeline's cloud priced at the measured "
                     f"{sens.j_per_audio_s:.3g} J per audio second instead: "
                     + ", ".join(f"cascade saves {_pct(v)} of the joules of {_e(PIPELINE_LABELS[b])}"
                                 for b, v in sens.savings_joules_pct.items()) + ".</p>")
    return f"<p>{_e(c.worker)}: {c.verdicts} verdict(s).</p>" + measured


def render(report: ReplayReport) -> str:
    prof = report.profile
    notes = "".join(f"<div class='note'>{_e(n)}</div>" for n in report.notes)
    sav = report.savings
    inputs = [i.path for i in report.inputs]
    timelines = []
    for p in inputs[:3]:
        timelines.append(f"<img alt='timeline of {_e(Path(p).name)}' src='data:image/png;base64,"
                         f"{timeline_plot(report, p)}'>")
        if report.input(p).audio_seconds > TIMELINE_MAX_S:
            timelines.append(f"<img alt='timeline of {_e(Path(p).name)}, first minutes' "
                             f"src='data:image/png;base64,{timeline_plot(report, p, t_max=180.0)}'>")
    # The settings block follows the thresholds file's schema, not the report's: read as JSON.
    k = report.settings
    det = report.kws_traces.detector
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gate replay report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>
<h1>gate replay report</h1>
<p class="muted">{_e(report.generated_by)} &middot; {len(inputs)} input(s), {report.audio_seconds:.1f} s
 of audio &middot; profile <b>{_e(prof.name)}</b>: {_e(prof.description)} (host idle {prof.host_idle_w:g} W)
 &middot; grid {report.grid_g_co2e_per_kwh:g} gCO2e/kWh</p>
<p>The cascade saves <span class="good">{_pct(sav.joules_pct)}</span> of the joules and
<span class="good">{_pct(sav.bytes_pct)}</span> of the bytes of always-streaming
({_pct(sav.joules_pct_excluding_host)} of the joules if the host's idle power is left out; that idle power is
{sav.host_share_of_cascade_pct:.1f}% of the cascade's energy).</p>
{notes}
<h2>Savings</h2>{_savings_table(report)}
<h2>Energy per stage</h2>
<img alt="energy per stage, stacked, per pipeline" src="data:image/png;base64,{energy_plot(report)}">
{_stage_table(report)}
<h2>Detection</h2>{_detection_table(report)}
<img alt="DET curve" src="data:image/png;base64,{det_plot(report)}">
<h2>Cloud</h2>{_cloud_block(report)}
<h2>Timeline</h2>{''.join(timelines)}
<h2>Settings</h2>
<p class="muted">analog margin {k['analog']['margin_db']} dB, decision {_e(k['analog']['decision']['rule'])}
 k={k['analog']['decision']['k']}, min open {k['analog']['min_open_s']} s, hangover {k['analog']['hangover_s']} s;
 KWS threshold {_e(det.threshold if det else k['kws']['threshold'])}, segment codec {_e(k['segmenter']['codec'])}.</p>
</body></html>
"""


def write_html(report: ReplayReport, path: Path) -> None:
    """Atomically, like the JSON report."""
    atomic_write_text(path, render(report))
