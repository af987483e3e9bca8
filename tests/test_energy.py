"""Energy ledger, profiles, pricing and baselines. Small hand-checkable numbers throughout."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import yaml

from gate.energy import (
    ADC,
    ANALOG_GATE,
    CLOUD,
    ENCODER,
    FEATURES_KWS,
    RADIO,
    STAGES,
    EnergyLedger,
    EnergyModel,
    LedgerSnapshot,
    StageCounts,
    always_on_kws_counts,
    always_stream_counts,
    joules_to_co2e_g,
    list_profiles,
    load_profile,
    mqtt_publish_b,
    parse_profile,
    savings,
    wire_bytes,
)
from gate.energy.model import NODE_STAGES
from gate.energy.wire import SessionBytes, control_b, mqtt_connect_b, mqtt_subscribe_b
from gate_core.errors import ProfileError

SHIPPED = ("mcu-analog", "pi4", "pizero2w")


def tiny_profile(**overrides) -> dict:
    """Round numbers so every priced figure can be checked by hand."""
    p = {
        "name": "tiny",
        "description": "hand-checkable",
        "host": {"idle_w": 2.0, "source": "test"},
        "stages": {s: {} for s in NODE_STAGES},
        "cloud": {"j_per_audio_s": 1.0, "pue": 1.5, "source": "test"},
    }
    p["stages"][ADC] = {"active_w": 0.5, "wake_j": 0.25, "source": "test"}
    p["stages"][FEATURES_KWS] = {"per_invocation_j": 0.01, "source": "test"}
    p["stages"][RADIO] = {"per_byte_j": 1e-6, "per_invocation_j": 0.1, "source": "test"}
    p.update(overrides)
    return p


# ----------------------------------------------------------------------------- ledger


def test_stage_counts_add_subtract_round_trip():
    a = StageCounts(invocations=3, active_seconds=1.5, bytes=100)
    b = StageCounts(invocations=1, active_seconds=0.5, bytes=40)
    assert a.add(b) == StageCounts(4, 2.0, 140)
    assert a.subtract(b) == StageCounts(2, 1.0, 60)
    assert StageCounts.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="later or unrelated"):
        b.subtract(a)


def test_charge_accumulates_and_advance_audio_drives_always_on():
    led = EnergyLedger(always_on=[ANALOG_GATE])
    led.advance_audio(2.0)
    led.charge(ADC, invocations=1, active_seconds=0.5, nbytes=16000)
    led.charge(ADC, active_seconds=0.25, nbytes=8000)
    snap = led.snapshot()
    assert snap.audio_seconds == 2.0
    assert snap[ADC] == StageCounts(1, 0.75, 24000)
    assert snap[ANALOG_GATE] == StageCounts(0, 2.0, 0)
    assert snap[RADIO] == StageCounts()  # never charged reads as zero


@pytest.mark.parametrize(
    "kwargs",
    [{"invocations": -1}, {"active_seconds": -0.1}, {"nbytes": -5}, {"active_seconds": float("nan")}],
)
def test_negative_or_non_finite_charge_rejected(kwargs):
    led = EnergyLedger()
    with pytest.raises(ValueError):
        led.charge(ADC, **kwargs)
    assert led.snapshot() == LedgerSnapshot()


def test_stage_names_validated_but_new_stages_allowed():
    led = EnergyLedger()
    led.charge("denoiser", invocations=1)
    for bad in ("Radio", "1st", "a-b", "", "host"):
        with pytest.raises(ValueError):
            led.charge(bad, invocations=1)
    with pytest.raises(ValueError):
        led.advance_audio(-1.0)


def test_snapshot_is_immutable_and_delta_counts_since():
    led = EnergyLedger()
    led.charge(RADIO, invocations=1, nbytes=500)
    led.advance_audio(10.0)
    mark = led.snapshot()
    with pytest.raises(TypeError):
        mark.stages[RADIO] = StageCounts()  # type: ignore[index]
    led.charge(RADIO, invocations=2, nbytes=300)
    led.charge(FEATURES_KWS, invocations=7)
    led.advance_audio(5.0)
    d = led.delta(mark)
    assert d.audio_seconds == 5.0
    assert d[RADIO] == StageCounts(2, 0.0, 300)
    assert d[FEATURES_KWS].invocations == 7
    assert mark[RADIO].bytes == 500  # the old reading did not move
    assert mark.add(d) == led.snapshot()


def test_delta_against_a_pre_reset_snapshot_is_an_error():
    led = EnergyLedger()
    led.charge(ADC, invocations=5)
    led.advance_audio(1.0)
    mark = led.snapshot()
    led.reset()
    assert led.snapshot() == LedgerSnapshot()
    with pytest.raises(ValueError):
        led.delta(mark)


@pytest.fixture
def eager_thread_switching():
    # Switch threads as often as possible so an unlocked read-modify-write would lose updates.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.mark.usefixtures("eager_thread_switching")
def test_two_threads_charging_10k_times_lose_nothing():
    led = EnergyLedger(always_on=[ANALOG_GATE])
    n = 10_000

    def audio():
        for _ in range(n):
            led.charge(FEATURES_KWS, invocations=1, active_seconds=0.01)
            led.advance_audio(0.01)

    def mqtt():
        for _ in range(n):
            led.charge(RADIO, invocations=1, nbytes=3)
            led.charge(FEATURES_KWS, nbytes=1)

    threads = [threading.Thread(target=audio), threading.Thread(target=mqtt)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = led.snapshot()
    assert s[FEATURES_KWS].invocations == n
    assert s[FEATURES_KWS].bytes == n
    assert s[FEATURES_KWS].active_seconds == pytest.approx(100.0)
    assert s[RADIO] == StageCounts(n, 0.0, 3 * n)
    assert s.audio_seconds == pytest.approx(100.0)


def test_json_round_trip_of_snapshot_and_ledger():
    led = EnergyLedger(always_on=[ANALOG_GATE])
    led.charge(ADC, invocations=1, active_seconds=0.125, nbytes=4000)
    led.charge("denoiser", invocations=2)
    led.advance_audio(3.5)
    snap = led.snapshot()
    text = json.dumps(snap.to_dict())
    assert LedgerSnapshot.from_dict(json.loads(text)) == snap
    assert list(snap.to_dict()["stages"]) == [ANALOG_GATE, ADC, "denoiser"]  # pipeline order, then extras
    again = EnergyLedger.from_dict(json.loads(json.dumps(led.to_dict())))
    assert again.snapshot() == snap and again.always_on == (ANALOG_GATE,)


@pytest.mark.parametrize(
    "bad",
    [
        {"audio_seconds": 1.0, "stages": {"adc": {"invocations": -1}}},
        {"audio_seconds": 1.0, "stages": {"adc": {"invocation": 1}}},
        {"audio_seconds": 1.0, "stages": {"Bad Name": {}}},
        {"audio_seconds": -1.0},
        {"version": 99},
        {"audio_s": 1.0},
    ],
)
def test_bad_snapshot_dicts_rejected(bad):
    with pytest.raises((ValueError, TypeError)):
        LedgerSnapshot.from_dict(bad)


# ----------------------------------------------------------------------------- profiles


def test_shipped_profiles_load_and_every_nonzero_figure_has_a_source():
    assert set(SHIPPED) <= set(list_profiles())
    for name in SHIPPED:
        p = load_profile(name)
        assert p.name == name
        sections = [p.host, p.cloud, p.carbon, *p.stages.values()]
        for sec in sections:
            figures = {k: v for k, v in sec.model_dump().items() if k != "source"}
            if any(v not in (0, 0.0) for k, v in figures.items() if not (k == "pue" and v == 1.0)):
                assert sec.source.strip(), f"{name}: {sec!r}"
        assert p.host.idle_w > 0 and p.cloud.pue == 1.58 and p.cloud.j_per_audio_s == 1.2


def test_host_dominates_on_a_pi_not_on_the_mcu():
    one_hour = always_on_kws_counts(3600.0, kws_hop_s=0.1)
    pi = EnergyModel.from_profile("pi4").price(one_hour)
    mcu = EnergyModel.from_profile("mcu-analog").price(one_hour)
    assert pi.host_j > 0.9 * pi.node_j
    assert mcu.host_j < 0.5 * mcu.node_j


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_profile_by_path(tmp_path):
    p = load_profile(write(tmp_path, tiny_profile()))
    assert p.name == "tiny" and p.stages[ADC].active_w == 0.5
    # PyYAML reads 2e-7 (no dot) as a string; it must still be a number.
    text = write(tmp_path, tiny_profile()).read_text().replace("per_byte_j: 1.0e-06", "per_byte_j: 2e-7")
    assert "2e-7" in text
    (tmp_path / "sci.yaml").write_text(text)
    assert load_profile(tmp_path / "sci.yaml").stages[RADIO].per_byte_j == 2e-7


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [
        (lambda d: d["stages"][RADIO].pop("source"), ["stages.radio", "per_byte_j=1e-06", "source"]),
        (lambda d: d["host"].update(source="  "), ["host", "idle_w=2.0"]),
        (lambda d: d["stages"][ADC].update(actve_w=1.0), ["stages.adc.actve_w", "Extra inputs"]),
        (lambda d: d.update(colour="blue"), ["colour"]),
        (lambda d: d["stages"][ADC].update(active_w=-0.5), ["stages.adc.active_w", "-0.5"]),
        (lambda d: d["stages"][ADC].update(active_w="3 W"), ["stages.adc.active_w", "3 W"]),
        (lambda d: d["stages"][ADC].update(active_w=True), ["stages.adc.active_w", "boolean"]),
        (lambda d: d["cloud"].update(pue=0.9), ["cloud.pue", "0.9"]),
        (lambda d: d["stages"].pop(FEATURES_KWS), ["stages", "features_kws"]),
        (lambda d: d["stages"].update(cloud={}), ["stages", "own section"]),
        (lambda d: d["stages"].update({"Bad-Name": {}}), ["stages", "Bad-Name"]),
    ],
)
def test_invalid_profile_names_file_field_and_value(tmp_path, mutate, fragments):
    data = tiny_profile()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    msg = str(info.value)
    assert str(path) in msg and info.value.code == "profile_invalid"
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_missing_profile_and_bad_yaml(tmp_path):
    with pytest.raises(ProfileError, match="no such profile.*pi4"):
        load_profile("no-such-board")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="bad.yaml:2:1: YAML syntax error"):
        load_profile(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ProfileError, match="mapping"):
        load_profile(bad)


# ----------------------------------------------------------------------------- pricing


def tiny_snapshot() -> LedgerSnapshot:
    return LedgerSnapshot(
        audio_seconds=10.0,
        stages={
            ADC: StageCounts(invocations=2, active_seconds=4.0, bytes=128_000),
            FEATURES_KWS: StageCounts(invocations=100, active_seconds=4.0),
            RADIO: StageCounts(invocations=1, bytes=50_000),
            CLOUD: StageCounts(invocations=1, active_seconds=3.0),
        },
    )


def test_pricing_by_hand():
    b = EnergyModel(profile=parse_profile(tiny_profile())).price(tiny_snapshot())
    assert b.stage_j[ADC] == pytest.approx(0.5 * 4.0 + 0.25 * 2)  # 2.5 J
    assert b.stage_j[FEATURES_KWS] == pytest.approx(0.01 * 100)  # 1.0 J
    assert b.stage_j[RADIO] == pytest.approx(0.1 * 1 + 1e-6 * 50_000)  # 0.15 J
    assert b.stage_j[CLOUD] == pytest.approx(1.0 * 3.0 * 1.5)  # 4.5 J
    assert b.stage_j[ANALOG_GATE] == 0.0 and b.stage_j[ENCODER] == 0.0
    assert b.host_j == pytest.approx(2.0 * 10.0)
    assert b.total_j == pytest.approx(28.15)
    assert b.cloud_j == pytest.approx(4.5) and b.node_j == pytest.approx(23.65)
    assert b.total_bytes == 50_000  # radio only: encoder/ADC bytes are not on the air
    assert b.co2e_g == pytest.approx(28.15 / 3.6e6 * 475)
    assert list(b.stage_j) == list(STAGES)
    d = json.loads(json.dumps(b.to_dict()))
    assert d["total_j"] == pytest.approx(28.15) and d["profile"] == "tiny"


def test_stage_missing_from_profile_is_reported_unpriced():
    snap = tiny_snapshot().add(LedgerSnapshot(stages={"denoiser": StageCounts(invocations=3)}))
    b = EnergyModel(profile=parse_profile(tiny_profile())).price(snap)
    assert b.unpriced == ("denoiser",) and b.stage_j["denoiser"] == 0.0


def test_repricing_a_saved_snapshot_with_another_profile():
    saved = json.loads(json.dumps(tiny_snapshot().to_dict()))
    snap = LedgerSnapshot.from_dict(saved)
    for name in SHIPPED:
        prof = load_profile(name)
        b = EnergyModel.from_profile(name).price(snap)
        assert b.profile == name
        assert b.host_j == pytest.approx(prof.host.idle_w * 10.0)
        kws = prof.stages[FEATURES_KWS]
        assert b.stage_j[FEATURES_KWS] == pytest.approx(kws.per_invocation_j * 100 + kws.active_w * 4.0)
        r = prof.stages[RADIO]
        assert b.stage_j[RADIO] == pytest.approx(r.per_byte_j * 50_000 + r.per_invocation_j + r.wake_j)
        assert b.stage_j[CLOUD] == pytest.approx(1.2 * 3.0 * 1.58)
    assert (
        EnergyModel.from_profile("pi4").price(snap).total_j
        != EnergyModel.from_profile("mcu-analog").price(snap).total_j
    )


def test_co2e_conversion():
    assert joules_to_co2e_g(1.0) == pytest.approx(1.32e-4, rel=0.005)
    assert joules_to_co2e_g(3.6e6, 475) == pytest.approx(475.0)
    model = EnergyModel(profile=parse_profile(tiny_profile()), grid_g_co2e_per_kwh=0.0)
    assert model.price(tiny_snapshot()).co2e_g == 0.0
    assert EnergyModel.from_profile("pi4", grid=100.0).grid_g_co2e_per_kwh == 100.0


# ----------------------------------------------------------------------------- wire and baselines


def test_mqtt_publish_and_wire_bytes_by_hand():
    # 1 control + 1 remaining length + 2 topic length + 10 topic + 2 packet id + 100 payload
    assert mqtt_publish_b(100, topic_len=10) == 116
    assert mqtt_publish_b(100, topic_len=10, qos=0) == 114
    assert mqtt_publish_b(113, topic_len=10) == 129  # remaining length 127: still one byte
    assert mqtt_publish_b(114, topic_len=10) == 131  # 128 needs two
    # one segment + TCP/IPv4 40 B, plus PUBACK 4 B on its own 40 B segment
    assert wire_bytes(100, topic_len=10) == 116 + 40 + 44
    assert wire_bytes(100, topic_len=10, qos=0) == 114 + 40
    assert wire_bytes(0, topic_len=10) == 0
    # 3 messages of 100 + one of 50
    assert wire_bytes(350, topic_len=10, packet_payload=100) == 3 * 200 + (66 + 40 + 44)
    # QoS 0, 3000 B payload: 1 + 2 (remaining length 3012) + 2 + 10 + 3000 = 3015 B -> 3 TCP segments
    assert wire_bytes(3000, topic_len=10, qos=0) == 3015 + 3 * 40
    assert wire_bytes(100, topic_len=10, tls_record_overhead=29) == (116 + 29 + 40) + (4 + 29 + 40)


def test_always_stream_one_hour_is_115_2_mb_plus_overhead():
    s = always_stream_counts(3600.0, topic_len=24, packet_s=0.1)
    assert s[ADC].bytes == 115_200_000
    # per 100 ms packet of 3200 B: MQTT 1+2+2+24+2 = 31 B, 3 TCP segments x 40 B, PUBACK 4+40 B
    per_packet_overhead = 31 + 3 * 40 + 44
    assert s[RADIO].bytes == 115_200_000 + 36_000 * per_packet_overhead
    assert 0.05 < s[RADIO].bytes / 115.2e6 - 1 < 0.07
    assert s[CLOUD].active_seconds == 3600.0 and s[ADC].active_seconds == 3600.0
    assert s[ANALOG_GATE] == StageCounts() and s[FEATURES_KWS] == StageCounts()


def test_always_on_kws_counts():
    s = always_on_kws_counts(
        3600.0, kws_hop_s=0.02, segments_bytes=3 * 1000, segment_audio_s=7.5, n_segments=3, topic_len=10
    )
    assert s[FEATURES_KWS].invocations == 180_000
    assert s[ADC].active_seconds == 3600.0 and s[ANALOG_GATE] == StageCounts()
    assert s[RADIO] == StageCounts(3, 0.0, 3 * wire_bytes(1000, topic_len=10))
    assert s[CLOUD].active_seconds == 7.5 and s[ENCODER].bytes == 3000
    with pytest.raises(ValueError):
        always_on_kws_counts(10.0, kws_hop_s=0.0)
    with pytest.raises(ValueError):
        always_on_kws_counts(10.0, kws_hop_s=0.1, segments_bytes=10)


def test_savings_by_hand_and_against_baselines():
    model = EnergyModel(profile=parse_profile(tiny_profile()))
    cheap = model.price(LedgerSnapshot(audio_seconds=1.0, stages={RADIO: StageCounts(bytes=1000)}))
    dear = model.price(LedgerSnapshot(audio_seconds=1.0, stages={RADIO: StageCounts(bytes=4000)}))
    # 2.0 + 0.001 J vs 2.0 + 0.004 J; 1000 vs 4000 B
    sv = savings(cheap, dear)
    assert sv["bytes_pct"] == pytest.approx(75.0)
    assert sv["joules_pct"] == pytest.approx(100 * (1 - 2.001 / 2.004))
    empty = model.price(LedgerSnapshot())
    assert savings(empty, empty) == {"joules_pct": 0.0, "bytes_pct": 0.0}
    assert savings(cheap, empty)["bytes_pct"] is None

    mcu = EnergyModel.from_profile("mcu-analog")
    stream = mcu.price(always_stream_counts(3600.0))
    kws = mcu.price(
        always_on_kws_counts(3600.0, kws_hop_s=0.1, segments_bytes=40_000, segment_audio_s=2.5, n_segments=1)
    )
    assert savings(kws, stream)["joules_pct"] > 90.0


def test_session_control_packet_sizes():
    # CONNECT: fixed header 1 + remaining-length 1 + 10 B variable header + client id "c1" (2 + 2).
    assert mqtt_connect_b(client_id="c1") == 16
    # A password goes only with a user name (MQTT 3.1.1 section 3.1.2.9).
    assert mqtt_connect_b(client_id="c1", password="pw") == 16
    assert mqtt_connect_b(client_id="c1", username="u", password="pw") == 16 + 3 + 4
    assert mqtt_connect_b(client_id="c1", will_topic="a/b", will_payload=b"xy") == 16 + 5 + 4
    # SUBSCRIBE: 1 + 1 + packet id 2 + (2 + len + QoS 1) per filter; SUBACK 1 + 1 + 2 + 1 per filter.
    assert mqtt_subscribe_b(["a/b", "c"]) == (4 + 6 + 4, 6)


def test_keepalives_carry_the_remainder_and_refuse_time_going_back():
    s = SessionBytes.of(client_id="c1", will_topic=None, will_payload=b"", username=None, password=None,
                        subscribe=[], keepalive_s=30)
    assert s.ping == 2 * (2 + 40) and s.disconnect == 2 + 40 and s.connect == control_b(16, 4)
    assert s.keepalives(29.0) == (0, 0)
    assert s.keepalives(2.0) == (1, s.ping)
    assert s.keepalives(89.0) == (3, 3 * s.ping)
    with pytest.raises(ValueError, match="elapsed_s"):
        s.keepalives(-1.0)
    with pytest.raises(ValueError, match="keepalive_s"):
        SessionBytes.of(client_id="c", will_topic=None, will_payload=b"", username=None, password=None,
                        subscribe=[], keepalive_s=0)
