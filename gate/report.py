"""The replay report: counts, their price under one device profile, baselines and savings.

The report keeps the raw counts (``counts``, ``baselines.*.counts``) beside the priced figures, so
:func:`reprice` can price a saved report for another profile without touching the audio. Every
figure here is a pure function of those counts and the profile.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gate import __version__
from gate.energy import HOST, STAGES, EnergyModel, LedgerSnapshot, always_stream_counts, savings
from gate.energy.model import EnergyBreakdown

REPORT_SCHEMA = "gate.replay/1"


def build_report(*, results: Sequence[Any], failed: list[dict], settings: Any, model: EnergyModel,
                 stages_run: Sequence[str], extra_counts: LedgerSnapshot | None = None) -> dict:
    """``extra_counts``: charges not tied to one file (a live transport's radio), added to the totals."""
    counts = LedgerSnapshot()
    for r in results:
        counts = counts.add(r.counts)
    if extra_counts is not None:
        counts = counts.add(LedgerSnapshot(stages=dict(extra_counts.stages)))
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "generated_by": f"gate {__version__}",
        "stages_run": list(stages_run),
        "audio_seconds": counts.audio_seconds,
        "counts": counts.to_dict(),
        "baselines": {"always_stream": {"counts": always_stream_counts(counts.audio_seconds).to_dict()}},
        "inputs": [
            {"path": r.path, "audio_seconds": r.audio_seconds,
             "gate_open_intervals": [[round(a, 6), round(b, 6)] for a, b in r.intervals],
             "n_opens": len(r.intervals),
             "duty_cycle": _ratio(sum(b - a for a, b in r.intervals), r.audio_seconds),
             "n_detections": len(getattr(r, "detections", ())),
             **getattr(r, "extra", {})}
            for r in results
        ],
        # One row per published segment: where it was cut, the KWS score, the cloud's verdict if any.
        "detections": [d for r in results for d in getattr(r, "detections", ())],
        "gate_open_intervals": [
            {"path": r.path, "start_s": round(a, 6), "end_s": round(b, 6)} for r in results for a, b in r.intervals
        ],
        "failed_inputs": failed,
        "settings": settings.model_dump(mode="json"),
    }
    return reprice(report, model)


def reprice(report: dict, model: EnergyModel) -> dict:
    """Price (or re-price) a report's counts with ``model``; returns a new report."""
    out = dict(report)
    counts = LedgerSnapshot.from_dict(report["counts"])
    cascade = model.price(counts)
    out["profile"] = {"name": model.profile.name, "description": model.profile.description,
                      "host_idle_w": model.profile.host.idle_w}
    out["grid_g_co2e_per_kwh"] = model.grid_g_co2e_per_kwh
    out["stages"] = _stage_table(counts, cascade)
    out["totals"] = _totals(cascade)
    baselines = {}
    for name, base in report["baselines"].items():
        base_counts = LedgerSnapshot.from_dict(base["counts"])
        priced = model.price(base_counts)
        baselines[name] = {"counts": base["counts"], "joules": priced.total_j, "bytes": priced.total_bytes,
                           "co2e_g": priced.co2e_g, "stages": _stage_table(base_counts, priced),
                           "totals": _totals(priced)}
    out["baselines"] = baselines
    stream = model.price(LedgerSnapshot.from_dict(report["baselines"]["always_stream"]["counts"]))
    saved = savings(cascade, stream)
    saved["joules_pct_excluding_host"] = _pct_saved(cascade.total_j - cascade.host_j, stream.total_j - stream.host_j)
    saved["host_share_of_cascade_pct"] = 100.0 * _ratio(cascade.host_j, cascade.total_j)
    out["savings"] = saved
    return out


def score_detections(detections: Sequence[dict], labels: dict[str, list], *, late_s: float = 1.0) -> dict:
    """Detections against labelled wake words: a hit fires inside [start_s, end_s + late_s] of one.

    ``labels`` maps a replayed path to its sensors.scenario labels. Each wake word is hit at most
    once; a detection that matches none is a false accept.
    """
    keywords = hits = false_accepts = 0
    hours = 0.0
    for path, spans in labels.items():
        targets = [s for s in spans if s.label == "wake"]  # a wake_command event labels its wake word too
        keywords += len(targets)
        if spans:
            hours += max(s.end_s for s in spans) / 3600.0
        used: set[int] = set()
        for d in (d for d in detections if d["path"] == path):
            match = next((i for i, s in enumerate(targets)
                          if i not in used and s.start_s <= d["detect_s"] <= s.end_s + late_s), None)
            if match is None:
                false_accepts += 1
            else:
                used.add(match)
                hits += 1
    return {"keywords": keywords, "hits": hits, "misses": keywords - hits, "false_accepts": false_accepts,
            "recall": _ratio(hits, keywords), "late_s": late_s}


def _stage_table(counts: LedgerSnapshot, priced: EnergyBreakdown) -> dict[str, dict]:
    table = {}
    for name in list(STAGES) + [n for n in priced.stage_j if n not in STAGES]:
        c = counts[name]
        table[name] = {"invocations": c.invocations, "active_seconds": c.active_seconds,
                       "duty_cycle": _ratio(c.active_seconds, counts.audio_seconds), "bytes": c.bytes,
                       "joules": priced.stage_j.get(name, 0.0)}
    table[HOST] = {"invocations": 0, "active_seconds": counts.audio_seconds,
                   "duty_cycle": 1.0 if counts.audio_seconds else 0.0, "bytes": 0, "joules": priced.host_j}
    return table


def _totals(priced: EnergyBreakdown) -> dict[str, float]:
    return {"joules": priced.total_j, "bytes": priced.total_bytes, "co2e_g": priced.co2e_g,
            "node_joules": priced.node_j, "cloud_joules": priced.cloud_j, "host_joules": priced.host_j,
            "mean_node_w": priced.mean_node_w, "unpriced_stages": list(priced.unpriced)}


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _pct_saved(cascade: float, baseline: float) -> float | None:
    if baseline == 0:
        return 0.0 if cascade == 0 else None
    return 100.0 * (1.0 - cascade / baseline)


def write_report(report: dict, path: Path) -> None:
    """Atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_report(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def summary_text(report: dict) -> str:
    """A short human summary: per-stage energy for the cascade and the always-stream baseline."""
    audio_s = report["audio_seconds"]
    prof = report["profile"]
    lines = [f"gate replay: {len(report['inputs'])} file(s), {audio_s:.1f} s of audio, "
             f"profile {prof['name']} (host idle {prof['host_idle_w']:g} W)",
             f"stages run: {', '.join(report['stages_run'])}", ""]
    stream = report["baselines"]["always_stream"]
    lines.append(f"{'stage':14s} {'duty':>7s} {'cascade J':>12s} {'always-stream J':>16s}")
    for name, row in report["stages"].items():
        base = stream["stages"].get(name, {"joules": 0.0})
        if row["joules"] == 0 and base["joules"] == 0 and row["active_seconds"] == 0:
            continue
        lines.append(f"{name:14s} {100 * row['duty_cycle']:6.2f}% {row['joules']:12.4g} {base['joules']:16.4g}")
    tot, sav = report["totals"], report["savings"]
    lines.append(f"{'total':14s} {'':7s} {tot['joules']:12.4g} {stream['joules']:16.4g}")
    lines.append(f"bytes on the radio: cascade {tot['bytes']:,} vs always-stream {stream['bytes']:,}")
    lines.append(f"saved vs always-stream: {_fmt_pct(sav['joules_pct'])} of joules "
                 f"({_fmt_pct(sav['joules_pct_excluding_host'])} excluding the host's idle power, which is "
                 f"{sav['host_share_of_cascade_pct']:.1f}% of the cascade's energy), "
                 f"{_fmt_pct(sav['bytes_pct'])} of bytes")
    lines.append(f"CO2e: cascade {tot['co2e_g']:.3g} g vs always-stream {stream['co2e_g']:.3g} g "
                 f"at {report['grid_g_co2e_per_kwh']:g} g/kWh")
    dets = report.get("detections", [])
    if report.get("kws", {}).get("available") is False:
        lines.append(f"KWS not run: {report['kws']['reason']}")
    else:
        accepted = sum(1 for d in dets if (d.get("verdict") or {}).get("accepted"))
        lines.append(f"detections: {len(dets)} segment(s) published"
                     + (f", {accepted} accepted by the cloud" if any(d.get("verdict") for d in dets) else ""))
    if "scenario" in report:
        sc = report["scenario"]
        lines.append(f"scenario: {sc['hits']}/{sc['keywords']} wake words found, {sc['false_accepts']} false accept(s)")
    if report["failed_inputs"]:
        lines.append(f"{len(report['failed_inputs'])} file(s) skipped (see stderr and failed_inputs in the report)")
    return "\n".join(lines) + "\n"


def _fmt_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}%"
