import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import gate
from gate.cli import main
from gate.config import GateSettings
from gate.energy import EnergyModel, wire_bytes
from gate.energy.wire import control_b, mqtt_connect_b, mqtt_subscribe_b
from gate.replay import replay_files
from gate.report import load_report, reprice
from gate_core.wire import Status, new_id
from sensors.wavfile import write_audio

SR = 16000


@pytest.fixture
def burst_file(tmp_path):
    """20 s of faint noise with a 2 s, 800 Hz burst at 5-7 s."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SR * 20) * 1e-3
    t = np.arange(2 * SR) / SR
    x[5 * SR:7 * SR] += 0.3 * np.sin(2 * np.pi * 800 * t)
    return write_audio(tmp_path / "burst.wav", x)


def test_report_has_the_documented_fields(burst_file, tmp_path):
    out = tmp_path / "r.json"
    assert main(["replay", str(burst_file), "--report", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert r["audio_seconds"] == pytest.approx(20.0)
    for stage in ("analog_gate", "adc"):
        assert set(r["stages"][stage]) >= {"invocations", "active_seconds", "duty_cycle", "joules"}
    assert set(r["totals"]) >= {"joules", "bytes"}
    assert set(r["baselines"]["always_stream"]) >= {"joules", "bytes"}
    assert set(r["savings"]) >= {"joules_pct", "bytes_pct"}
    assert r["profile"]["name"] == "pi4"
    (interval,) = r["inputs"][0]["gate_open_intervals"]
    # opens within a few ticks of the burst; closes after the envelope has decayed (a -10 dBFS tone
    # needs about 6 RC constants to fall 50 dB to the floor) and the hangover has run out
    a = GateSettings().analog
    assert 5.0 <= interval[0] <= 5.05
    assert 7.0 + a.hangover_s <= interval[1] <= 7.0 + a.hangover_s + 8 * a.envelope_tau_ms / 1000 + 0.05
    assert r["stages"]["analog_gate"]["duty_cycle"] == 1.0
    # The ADC is charged from the gate-open instant, plus digitising the analog store's pre-roll.
    preroll = GateSettings().segmenter.analog_preroll_s
    assert r["stages"]["adc"]["active_seconds"] == pytest.approx(interval[1] - interval[0] + preroll)
    assert r["stages"]["adc"]["invocations"] == 1


def test_savings_follow_from_the_priced_stages(burst_file):
    r = replay_files([burst_file], settings=GateSettings())
    stream = r.baselines["always_stream"]
    # No segment: the only radio bytes are the link's CONNECT and SUBSCRIBE (20 s: no keepalive yet).
    offline = Status(node_id="node1", state="offline", boot_id=new_id(), version=gate.__version__).to_json()
    session = control_b(mqtt_connect_b(client_id="gate-gate-node1", will_topic="gate/node1/status",
                                       will_payload=offline), 4,
                        *mqtt_subscribe_b(["gate/node1/verdict", "gate/node1/config"]))
    assert r.totals.bytes == session and stream.bytes >= 20 * 32000
    assert r.savings.bytes_pct == pytest.approx(100 * (1 - session / stream.bytes))
    assert r.savings.joules_pct == pytest.approx(100 * (1 - r.totals.joules / stream.joules))
    # On a Pi the host's idle power dominates; the report says so instead of hiding it.
    assert r.savings.host_share_of_cascade_pct > 90
    assert r.savings.joules_pct_excluding_host > r.savings.joules_pct


def test_a_saved_report_reprices_like_a_fresh_run(burst_file, tmp_path):
    out = tmp_path / "r.json"
    assert main(["replay", str(burst_file), "--report", str(out), "--quiet"]) == 0
    # A profile's adc.startup_s changes what the ADC delivers (the cascade simulates it), so a fresh
    # run matches a re-priced one exactly only when the start-up latencies agree (pi4 says 0).
    prof = yaml.safe_load((Path(gate.__file__).parent / "profiles" / "mcu-analog.yaml").read_text())
    prof["stages"]["adc"]["startup_s"] = 0.0
    mcu = tmp_path / "mcu-analog-nostartup.yaml"
    mcu.write_text(yaml.safe_dump(prof))
    repriced = reprice(load_report(out), EnergyModel.from_profile(mcu))
    s = GateSettings()
    s.energy.profile = str(mcu)
    fresh = replay_files([burst_file], settings=s)
    assert repriced.profile.name == "mcu-analog"
    assert repriced.totals == fresh.totals
    assert repriced.savings == fresh.savings
    assert repriced.totals.joules < load_report(out).totals.joules


def test_bad_files_are_listed_and_the_rest_still_counts(burst_file, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00")
    out = tmp_path / "r.json"
    assert main(["replay", str(burst_file), str(bad), "--report", str(out)]) == 2
    r = json.loads(out.read_text())
    assert [i["path"] for i in r["inputs"]] == [str(burst_file)]
    assert r["failed_inputs"][0]["path"] == str(bad) and r["failed_inputs"][0]["code"] == "audio_corrupt"
    assert r["audio_seconds"] == pytest.approx(20.0)
    assert "bad.wav" in capsys.readouterr().err


def test_only_bad_files_is_an_error_without_traceback(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing.wav")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_unknown_profile_is_a_clear_error(burst_file, capsys):
    assert main(["replay", str(burst_file), "--profile", "pi9000"]) == 2
    assert "pi9000" in capsys.readouterr().err


def test_invalid_thresholds_file_stops_replay(burst_file, tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("analog:\n  margin: 3\n")
    assert main(["--config", str(cfg), "replay", str(burst_file)]) == 2
    assert "analog.margin" in capsys.readouterr().err


def test_thresholds_change_the_replay(burst_file, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("analog:\n  hangover_s: 1.0\n")
    out = tmp_path / "r.json"
    assert main(["--config", str(cfg), "replay", str(burst_file), "--report", str(out), "--quiet"]) == 0
    (interval,) = json.loads(out.read_text())["inputs"][0]["gate_open_intervals"]
    assert interval[1] >= 7.9


def test_the_links_keepalives_are_charged_on_the_audio_clock(tmp_path):
    quiet = tmp_path / "quiet.wav"
    write_audio(quiet, np.zeros(65 * SR))
    s = GateSettings()
    s.mqtt.keepalive_s = 30
    no_kws = replay_files([quiet], settings=s, kws=None)
    assert no_kws.totals.bytes == 0  # no KWS: nothing is ever published, no link is held
    with_kws = replay_files([quiet], settings=s).totals.bytes
    s.mqtt.keepalive_s = 3600
    once = replay_files([quiet], settings=s).totals.bytes
    # 65 s of audio at a 30 s keepalive: two PINGREQ/PINGRESP exchanges of 2 + 2 B and two TCP/IP headers.
    assert with_kws - once == 2 * (2 + 2 + 2 * 40)


def test_baselines_hold_a_link_like_the_cascades_node(burst_file):
    r = replay_files([burst_file], settings=GateSettings())
    b = r.baselines
    # The always-on-KWS node sends the cascade's segments over the same kind of link: same bytes.
    assert b["always_on_kws"].bytes == r.totals.bytes > 0
    # The stream connects once too (20 s of 16-bit PCM in 100 ms messages, plus that connect).
    pcm = wire_bytes(20 * SR * 2, topic_len=24, packet_payload=3200)
    assert b["always_stream"].bytes == pcm + r.totals.bytes
