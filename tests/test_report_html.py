"""The replay report end to end: cloud leg, baselines, re-pricing from the CLI, and the HTML page."""

import importlib.util
import json
import re

import pytest
from report_helpers import mcu_without_startup, slice_demo, standin_config

from gate.cli import main
from gate.config import load_settings
from gate.replay import replay_files
from gate.report_schema import CommandResults, Detection, ReplayReport
from gate_core.wire import Verdict, new_id
from sensors.scenario import scenario_inputs


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scene")
    return slice_demo(tmp / "demo24"), standin_config(tmp / "standin.yaml"), tmp


@pytest.fixture(scope="module")
def cloud_replay(scene):
    """One replay with the embedded broker and a private cloud worker, written as JSON and HTML."""
    d, cfg, tmp = scene
    out, page = tmp / "r.json", tmp / "r.html"
    html = ["--html", str(page)] if importlib.util.find_spec("matplotlib") else []
    rc = main(["--config", str(cfg), "replay", "--scenario", str(d), "--broker", "embedded", "--report", str(out),
               *html, "--profile", "mcu-analog", "--quiet", "--no-progress"])
    assert rc == 0
    return json.loads(out.read_text()), page.read_text() if html else None


def test_published_segments_get_verdicts_from_the_cloud_worker(cloud_replay):
    r, _ = cloud_replay
    assert r["detections"], "the stand-in KWS should cut segments on the demo's speech"
    assert r["cloud"]["available"] and r["cloud"]["verdicts"] == len(r["detections"])
    assert all(d["verdict"] and d["verdict"]["segment_id"] == d["segment_id"] for d in r["detections"])
    measured = r["cloud"]["measured"]
    assert measured["segments"] == len(r["detections"]) and measured["joules"] > 0
    assert r["radio"]["delivered"] == len(r["detections"])


def test_a_report_with_verdicts_and_the_workers_meter_reads_back_key_for_key(cloud_replay):
    r, _ = cloud_replay
    report = ReplayReport.model_validate(r)
    assert report.detections[0].verdict.segment_id == report.detections[0].segment_id
    assert report.cloud.measured.segments == len(report.detections) and report.cloud_sensitivity is not None
    assert json.dumps(report.to_json(), indent=2) == json.dumps(r, indent=2)


def test_report_prices_three_pipelines_and_every_stage(cloud_replay):
    r, _ = cloud_replay
    assert set(r["baselines"]) == {"always_stream", "always_on_kws"}
    assert set(r["savings_vs"]) == {"always_stream", "always_on_kws"}
    for stage in ("analog_gate", "adc", "features_kws", "encoder", "radio", "cloud", "host"):
        assert set(r["stages"][stage]) >= {"invocations", "active_seconds", "bytes", "joules"}
    seg_s = sum(d["end_s"] - d["start_s"] for d in r["detections"])
    assert r["stages"]["cloud"]["active_seconds"] == pytest.approx(seg_s)
    aok = r["baselines"]["always_on_kws"]
    # Like for like: the always-on-KWS baseline sends the cascade's own segments, and runs the KWS all the time.
    assert aok["counts"]["stages"]["cloud"]["active_seconds"] == pytest.approx(seg_s)
    assert aok["stages"]["features_kws"]["invocations"] > r["stages"]["features_kws"]["invocations"]
    assert r["totals"]["co2e_g"] > 0 and r["profile"]["name"] == "mcu-analog"


def test_detection_is_scored_for_tiny_cloud_and_always_on(cloud_replay):
    r, _ = cloud_replay
    det = r["detection"]
    for key in ("tiny", "tiny_cloud", "always_on_kws"):
        m = det[key]
        assert m["true_accepts"] + m["misses"] == m["keywords"] > 0
    assert det["tiny_cloud"]["true_accepts"] <= det["tiny"]["true_accepts"]
    # The sweep over the recorded posteriors reproduces the live detector at its own threshold.
    th = r["kws_traces"]["detector"]["threshold"]
    (row,) = [p for p in det["det_curve"]["gated"] if p["threshold"] == th] or [None]
    if row is not None:
        assert row["true_accepts"] == det["tiny"]["true_accepts"]
        assert row["false_accepts"] == det["tiny"]["false_accepts"]


def test_html_is_self_contained_with_the_three_plots(cloud_replay):
    pytest.importorskip("matplotlib")
    _, page = cloud_replay
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page), "nothing may be fetched"
    assert "<script" not in page and "@import" not in page and "url(" not in page
    imgs = re.findall(r"<img alt='?\"?([^'\"]*)['\"] src=['\"]data:image/png;base64,", page)
    assert any("energy per stage" in a for a in imgs)
    assert any("timeline" in a for a in imgs)
    assert any("DET" in a for a in imgs)


def test_cli_reprice_equals_a_fresh_replay_with_that_profile(scene, tmp_path):
    d, cfg, _ = scene
    saved, repriced = tmp_path / "pi4.json", tmp_path / "mcu.json"
    assert main(["--config", str(cfg), "replay", "--scenario", str(d), "--broker", "none", "--report", str(saved),
                 "--quiet",
                 "--no-reference"]) == 0
    mcu = mcu_without_startup(tmp_path)
    assert main(["report", str(saved), "--profile", str(mcu), "--out", str(repriced), "--quiet"]) == 0
    r = json.loads(repriced.read_text())
    settings = load_settings(cfg)
    settings.energy.profile = str(mcu)
    audio, labels = scenario_inputs(d)
    fresh = replay_files([audio], settings=settings, labels={str(audio): labels}, reference=False)
    assert r["profile"]["name"] == "mcu-analog" and json.loads(saved.read_text())["profile"]["name"] == "pi4"
    fresh = fresh.to_json()
    assert _numbers(r["totals"]) == pytest.approx(_numbers(fresh["totals"]))
    for name in fresh["baselines"]:
        assert _numbers(r["baselines"][name]["totals"]) == pytest.approx(_numbers(fresh["baselines"][name]["totals"]))
        assert r["savings_vs"][name] == pytest.approx(fresh["savings_vs"][name])
    assert r["detection"] == fresh["detection"]


def _numbers(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float))}


def test_reprice_notes_a_different_simulated_adc_startup(scene, tmp_path, capsys):
    d, cfg, _ = scene
    saved = tmp_path / "pi4.json"
    assert main(["--config", str(cfg), "replay", "--scenario", str(d), "--broker", "none", "--report", str(saved),
                 "--quiet",
                 "--no-reference"]) == 0
    assert main(["report", str(saved), "--profile", "mcu-analog"]) == 0
    out = capsys.readouterr().out
    assert "always-on-kws J" in out and "simulated with pi4" in out


def test_report_of_something_else_is_a_clear_error(tmp_path, capsys):
    bogus = tmp_path / "x.json"
    bogus.write_text("[1, 2]")
    assert main(["report", str(bogus)]) == 2
    assert "not a gate replay report" in capsys.readouterr().err


def test_without_a_cloud_worker_the_replay_goes_on_and_says_why(scene, monkeypatch):
    import gate.cloud_leg

    def refuse(self):
        raise gate.cloud_leg.CloudUnavailable("gate-cloud serve exited with 2: no models")

    monkeypatch.setattr(gate.cloud_leg.CloudWorker, "__enter__", refuse)
    d, cfg, _ = scene
    audio, labels = scenario_inputs(d)
    r = replay_files([audio], settings=load_settings(cfg), broker="embedded", labels={str(audio): labels},
                     reference=False)
    assert r.detections and all(det.verdict is None for det in r.detections)
    assert not r.cloud.available
    assert r.cloud.reason.startswith("no cloud worker: verdicts not available")
    assert r.detection.tiny_cloud is None


def test_commands_after_accepted_detections_are_scored_against_the_command_said():
    from gate.report import _command_results
    from sensors.scenario import Label

    def lab(a, b, label, kind, text):
        return Label(a, b, label, kind, text, None, int(a * 16000), int(b * 16000))

    labels = {"s.flac": [lab(2.0, 2.6, "wake", "wake_command", "hey jarvis"),
                         lab(2.8, 3.4, "command", "wake_command", "turn it down"),
                         lab(20.0, 20.6, "wake", "wake_command", "hey jarvis"),
                         lab(20.8, 21.6, "command", "wake_command", "turn on the lights"),
                         lab(40.0, 40.6, "wake", "wake_command", "hey jarvis"),
                         lab(40.9, 41.3, "command", "wake_command", "stop"),
                         lab(60.0, 60.5, "command", "command", "stop")]}  # a command without a wake phrase

    def det(t, accepted, command):
        sid = new_id()
        return Detection(path="s.flac", segment_id=sid, seq=0, start_s=t - 2.0, end_s=t + 3.0, detect_s=t, score=0.9,
                         end_reason="command_window", preroll_clipped=False, audio_bytes=1, payload_bytes=2,
                         verdict=Verdict(segment_id=sid, node_id="n", accepted=accepted, command=command))

    dets = [det(2.7, True, "down"), det(20.7, True, "on"), det(40.7, True, None),
            det(59.9, True, "stop"),    # no wake_command there: not scored
            det(80.0, False, "stop")]   # rejected by the cloud: not scored
    assert _command_results(dets, labels) == CommandResults(detected=3, correct=1, unrecognised=1, wrong=1)
    assert _command_results(dets[3:], labels) is None


def test_the_html_detection_table_says_how_the_commands_fared(cloud_replay):
    from gate.html_report import _detection_table

    r, _ = cloud_replay
    report = ReplayReport.model_validate(r)
    commands = CommandResults(detected=5, correct=4, unrecognised=1, wrong=0)
    report = report.model_copy(update={"detection": report.detection.model_copy(update={"commands": commands})})
    assert "Commands after accepted detections: 4 of 5 right (1 not recognised, 0 wrong)" in _detection_table(report)
    report = report.model_copy(update={"detection": report.detection.model_copy(update={"commands": None})})
    assert "Commands after" not in _detection_table(report)
