"""The whole node (file fed as a microphone -> cascade -> spool -> MQTT) against a real mosquitto."""

import json
import threading
import time

import numpy as np
import pytest
from mqtt_helpers import Collector, needs_mosquitto
from node_helpers import SR, needs_espeak, node_settings, wake_scene

from gate.node import run_node
from gate_core.wire import decode_segment

pytestmark = [needs_mosquitto, needs_espeak]


def _collect(mosquitto):
    return Collector(mosquitto.host, mosquitto.port, ["gate/+/segments", "gate/+/status", "gate/+/heartbeat"])


def test_segments_arrive_intact_with_audio_clock_timestamps(mosquitto, tmp_path):
    path, pcm, phrase_s = wake_scene(tmp_path / "room.wav", seconds=16.0, at_s=[3.0, 10.0])
    settings = node_settings(tmp_path)
    col = _collect(mosquitto)
    try:
        rc = run_node(settings=settings, config_path=None, input_file=str(path), realtime=False,
                      broker=f"mqtt://{mosquitto.host}:{mosquitto.port}", install_signals=False)
        assert rc == 0
        assert col.wait_for(lambda c: len(c.on("/segments")) >= 2, timeout=10)
        assert col.wait_for(lambda c: any(b'"offline"' in p for p in c.on("/status")), timeout=5)
    finally:
        col.close()
    payloads = col.on("/segments")
    assert len(payloads) == 2
    headers = []
    for payload in payloads:
        header, audio = decode_segment(payload, max_bytes=1 << 20)  # intact: framing, FLAC and sha256 all check
        start, end = round(header.t_start_s * SR), round(header.t_end_s * SR)
        assert np.array_equal(audio, pcm[start:end])  # exactly the file's samples at those audio times
        headers.append(header)
    s = settings.segmenter
    for header, said_at in zip(headers, (3.0, 10.0), strict=True):
        assert header.node_id == "node1" and header.codec == "flac" and header.sample_rate == SR
        # The KWS fires while the phrase is being said (or just after it); the segment reaches back
        # to the analog store's pre-roll before the gate opened, and forward by the command window.
        assert said_at <= header.t_detect_s <= said_at + phrase_s + 0.5
        assert header.t_start_s <= said_at
        assert header.t_start_s >= said_at - s.analog_preroll_s - 0.05
        assert header.t_end_s == pytest.approx(header.t_detect_s + s.command_window_s, abs=1 / SR)
        assert header.ledger_delta["stages"]["features_kws"]["invocations"] > 0
    assert [h.seq for h in headers] == [0, 1]
    assert len({h.boot_id for h in headers}) == 1 and len({h.segment_id for h in headers}) == 2
    status = [json.loads(p)["state"] for p in col.on("/status")]
    assert status[0] == "online" and status[-1] == "offline"
    beats = [json.loads(p) for p in col.on("/heartbeat")]
    assert beats and all(b["ledger"]["stages"]["analog_gate"]["active_seconds"] > 0 for b in beats)


def test_live_paced_segment_reaches_the_broker_promptly(mosquitto, tmp_path):
    """Paced in real time, as a microphone would deliver it: the segment is on the broker soon after
    its last sample was heard. ``started`` precedes the pacing origin (transport and model start-up
    happen in between), so ``heard_to_broker`` over-estimates the true latency."""
    path, _, _ = wake_scene(tmp_path / "room.wav", seconds=7.0, at_s=[1.5])
    settings = node_settings(tmp_path)
    arrivals: list[tuple[float, bytes]] = []
    col = _collect(mosquitto)
    col.client.on_message = lambda c, u, m: arrivals.append((time.time(), bytes(m.payload))) \
        if m.topic.endswith("/segments") else None
    started = time.time()
    t = threading.Thread(target=run_node, kwargs=dict(
        settings=settings, config_path=None, input_file=str(path), realtime=True,
        broker=f"mqtt://{mosquitto.host}:{mosquitto.port}", install_signals=False))
    t.start()
    t.join(30)
    col.close()
    assert not t.is_alive() and len(arrivals) == 1
    arrived, payload = arrivals[0]
    header, _ = decode_segment(payload, max_bytes=1 << 20)
    encode_to_broker = arrived - header.sent_unix
    heard_to_broker = arrived - (started + header.t_end_s)
    assert 0 <= encode_to_broker < 0.5
    assert heard_to_broker < settings.node.batch_ms / 1000 + 1.0


def test_the_shipped_model_wakes_the_node_on_hey_jarvis(mosquitto, tmp_path):
    """The same path with gate/models' KWS: "hey jarvis, turn on the lights" must be published."""
    settings = node_settings(tmp_path, model="shipped")
    path, pcm, phrase_s = wake_scene(tmp_path / "room.wav", seconds=9.0, at_s=[2.0])
    col = _collect(mosquitto)
    try:
        assert run_node(settings=settings, config_path=None, input_file=str(path), realtime=False,
                        broker=f"mqtt://{mosquitto.host}:{mosquitto.port}", install_signals=False) == 0
        col.wait_for(lambda c: len(c.on("/segments")) >= 1, timeout=5)
    finally:
        col.close()
    (payload,) = col.on("/segments")
    header, audio = decode_segment(payload, max_bytes=1 << 20)
    assert 2.0 <= header.t_detect_s <= 2.0 + phrase_s + 0.5
    assert np.array_equal(audio, pcm[round(header.t_start_s * SR):round(header.t_end_s * SR)])
