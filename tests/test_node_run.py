"""`gate-node run` as a service: signals, reloads, logs; and `gate-node replay` growing the new stages."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mqtt_helpers import Collector, needs_mosquitto
from node_helpers import needs_espeak, node_settings, wake_scene

from gate.cli import configure_logging, main
from gate.config import load_settings
from gate.node import EndOfStream, Node

GATE_NODE = Path(sys.executable).parent / "gate-node"
ROOT = Path(__file__).resolve().parent.parent


class _Silence:
    """A source of quiet blocks; ends after ``n`` blocks."""

    def __init__(self, n: int) -> None:
        self.n = n

    def read(self, timeout=None):
        if self.n == 0:
            raise EndOfStream
        self.n -= 1
        return np.zeros(1600, np.int16)

    def close(self) -> None:
        pass


def _node(tmp_path, cfg_text: str, n_blocks: int = 50):
    from gate.cascade import Cascade

    cfg = tmp_path / "t.yaml"
    cfg.write_text(cfg_text)
    settings = load_settings(cfg)
    cascade = Cascade.from_config(settings, kws=None)
    return Node(settings=settings, cascade=cascade, source=_Silence(n_blocks), transport=None,
                config_path=str(cfg), load=load_settings), cfg


def test_reload_applies_a_valid_file_between_segments(tmp_path):
    node, cfg = _node(tmp_path, "segmenter:\n  command_window_s: 3.0\n")
    cfg.write_text("segmenter:\n  command_window_s: 1.0\nanalog:\n  margin_db: 9\n")
    node.request_reload()
    assert node.run() == 0
    assert node.stats.reloads == 1 and node.stats.reload_failures == 0
    assert node.cascade.segmenter.config.command_window_s == 1.0
    assert node.cascade.front.config.margin_db == 9
    assert node.cascade.t_s == pytest.approx(5.0)  # the audio clock went on across the reload


def test_an_invalid_file_is_logged_and_the_running_settings_kept(tmp_path, caplog):
    node, cfg = _node(tmp_path, "segmenter:\n  command_window_s: 2.0\n")
    cfg.write_text("segmenter:\n  command_window: 1.0\n")
    node.request_reload()
    with caplog.at_level(logging.ERROR, logger="gate.node"):
        assert node.run() == 0
    assert node.stats.reload_failures == 1 and node.stats.reloads == 0
    assert node.cascade.segmenter.config.command_window_s == 2.0
    assert "segmenter.command_window" in caplog.text and "keeping the running settings" in caplog.text


def test_logs_have_no_timestamps_under_journald(monkeypatch, capsys):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    configure_logging("INFO")
    logging.getLogger("gate.test").info("hello")
    assert capsys.readouterr().err.strip() == "INFO gate.test: hello"
    monkeypatch.delenv("JOURNAL_STREAM")
    configure_logging("INFO")
    logging.getLogger("gate.test").info("hello")
    assert capsys.readouterr().err.strip().endswith("INFO gate.test: hello")
    assert not capsys.readouterr().err.startswith("INFO")
    configure_logging("WARNING")


@needs_mosquitto
@needs_espeak
def test_sighup_then_sigterm_on_a_running_node(mosquitto, tmp_path):
    """A real `gate-node run` process: SIGHUP with a broken file, then a good one, then SIGTERM."""
    wav, _, _ = wake_scene(tmp_path / "room.wav", seconds=30.0, at_s=[2.0])
    settings = node_settings(tmp_path)
    cfg = tmp_path / "t.yaml"
    good = f"kws:\n  model_path: {settings.kws.model_path}\nmqtt:\n  spool_dir: {tmp_path / 'spool'}\n"
    cfg.write_text(good)
    col = Collector(mosquitto.host, mosquitto.port, ["gate/+/status"])
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    proc = subprocess.Popen([str(GATE_NODE), "--config", str(cfg), "run", "--input", str(wav),
                             "--broker", f"mqtt://{mosquitto.host}:{mosquitto.port}"],
                            env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()

    def wait_log(needle: str, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in ln for ln in lines):
                return True
            time.sleep(0.05)
        return False

    try:
        assert col.wait_for(lambda c: any(b'"online"' in p for p in c.on("/status")), 15), "".join(lines)
        cfg.write_text(good + "analog:\n  margn_db: 3\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_log("is invalid; keeping the running settings"), "".join(lines)
        assert wait_log("analog.margn_db")
        cfg.write_text(good + "analog:\n  margin_db: 8\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_log("thresholds reloaded"), "".join(lines)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert wait_log("node stopped")
        assert col.wait_for(lambda c: json.loads(c.on("/status")[-1])["state"] == "offline", 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        col.close()


@needs_espeak
def test_replay_reports_the_new_stages_and_detections(tmp_path):
    wav, _, _ = wake_scene(tmp_path / "room.wav", seconds=14.0, at_s=[2.0, 8.0])
    settings = node_settings(tmp_path)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"kws:\n  model_path: {settings.kws.model_path}\n")
    out = tmp_path / "r.json"
    assert main(["--config", str(cfg), "replay", str(wav), "--report", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert r["stages_run"] == ["analog_gate", "adc", "features_kws", "encoder", "radio"]
    assert r["kws"] == {"available": True, "reason": None}
    dets = r["detections"]
    assert len(dets) == 2 and [d["verdict"] for d in dets] == [None, None]
    assert set(dets[0]) >= {"start_s", "end_s", "score", "detect_s", "segment_id", "verdict"}
    assert 2.0 <= dets[0]["detect_s"] <= 4.5 and 8.0 <= dets[1]["detect_s"] <= 10.5
    st = r["stages"]
    assert st["features_kws"]["invocations"] > 0 and st["encoder"]["invocations"] == 2
    assert st["radio"]["invocations"] == 2 and st["radio"]["bytes"] > st["encoder"]["bytes"]
    assert r["radio"]["mode"] == "estimated"
    # Only the open gate's audio reached the KWS: far fewer inferences than an always-on KWS.
    assert st["features_kws"]["active_seconds"] < 0.5 * r["audio_seconds"]


@needs_mosquitto
@needs_espeak
def test_replay_publishes_through_an_embedded_broker(tmp_path):
    wav, _, _ = wake_scene(tmp_path / "room.wav", seconds=10.0, at_s=[2.0])
    settings = node_settings(tmp_path)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"kws:\n  model_path: {settings.kws.model_path}\n")
    out = tmp_path / "r.json"
    assert main(["--config", str(cfg), "replay", str(wav), "--broker", "embedded", "--report", str(out),
                 "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert len(r["detections"]) == 1
    assert r["radio"]["mode"] == "broker" and r["radio"]["delivered"] == 1 and r["radio"]["pending"] == 0
    # The transport's real wire bytes: the segment, its PUBACK, and the status messages; one radio
    # wake per delivered segment (the status messages ride on the same link).
    assert r["stages"]["radio"]["bytes"] > len(r["detections"])
    assert r["stages"]["radio"]["invocations"] == r["radio"]["delivered"] == 1


def test_replay_scores_a_scenario_against_its_labels(tmp_path):
    demo = ROOT / "datasets" / "demo"
    assert (demo / "labels.csv").is_file(), "committed demo scenario missing: datasets/demo/labels.csv"
    settings = node_settings(tmp_path)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"kws:\n  model_path: {settings.kws.model_path}\n")
    out = tmp_path / "r.json"
    assert main(["--config", str(cfg), "replay", "--scenario", str(demo), "--broker", "none", "--report", str(out),
                 "--quiet"]) == 0
    from sensors.scenario import read_labels

    sc = json.loads(out.read_text())["scenario"]
    assert sc["keywords"] == sum(1 for lab in read_labels(demo / "labels.csv") if lab.label == "wake")
    assert sc["hits"] + sc["misses"] == sc["keywords"]
