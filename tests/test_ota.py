"""Signed over-the-air model releases: the payload's checks, the node's store surviving a kill mid-install,
the swap at a segment boundary, and releases through a real mosquitto to real nodes (gate.node.run_node)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mqtt_helpers import Collector

from cloud.release import build_release, keygen, publish_release
from gate.config import GateSettings
from gate.kws.config import KwsConfig
from gate.node import PacedSource, run_node
from gate.ota import ModelStore, OtaAgent, load_selftest
from gate_core import release as fmt

ROOT = Path(__file__).resolve().parents[1]
MODEL = (ROOT / "gate/models/kws_logmel.tflite").read_bytes()
CARD = json.loads((ROOT / "gate/models/kws_logmel.json").read_text())
ENVELOPES = (ROOT / "gate/models/kws_analog_envelopes.tflite").read_bytes()
ENVELOPES_CARD = json.loads((ROOT / "gate/models/kws_analog_envelopes.json").read_text())
SECOND_STAGE = (ROOT / "gate/models/second_stage.tflite").read_bytes()


def card_with(threshold: float, version: str) -> dict:
    return {**CARD, "version": version, "detector": {**CARD["detector"], "threshold": threshold}}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    priv, pub = keygen(d / "cloud")
    other, _ = keygen(d / "other")
    return {"priv": priv, "pub": pub, "other": other, "public": fmt.load_public_key(pub)}


@pytest.fixture(scope="module")
def clips():
    return load_selftest()


def agent(tmp_path, keys, clips, *, max_bytes=262_144, node="n1") -> tuple[OtaAgent, list[fmt.Ack]]:
    acks: list[fmt.Ack] = []
    a = OtaAgent(kws=KwsConfig(), node_id=node, public_key=keys["public"], store=ModelStore(tmp_path / node),
                 clips=clips, max_bytes=max_bytes, send_ack=lambda topic, p: acks.append(fmt.Ack.from_json(p)))
    return a, acks


# ------------------------------------------------------------------------------- signing units


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    priv, pub = keygen(tmp_path)
    assert (priv.stat().st_mode & 0o777) == 0o600
    assert fmt.key_id(fmt.load_private_key(priv).public_key()) == fmt.key_id(fmt.load_public_key(pub))
    with pytest.raises(Exception, match="already exists"):
        keygen(tmp_path)


def test_a_signed_release_round_trips_and_its_card_is_canonical(keys):
    shuffled = dict(reversed(list(card_with(0.98, "v2").items())))
    payload = build_release(MODEL, shuffled, keys["priv"], node="n1", created_unix=100.0)
    rel = fmt.decode(payload, keys["public"], node="n1")
    assert rel.model == MODEL and rel.sha256 == fmt.sha256_hex(MODEL) and rel.version == "v2"
    assert rel.card == card_with(0.98, "v2") and rel.created_unix == 100.0
    assert fmt.decode(build_release(MODEL, card_with(0.98, "v2"), keys["priv"], node="n1", created_unix=100.0),
                      keys["public"], node="n1").release_id == rel.release_id


def _edit(payload: bytes, **changes) -> bytes:
    body = json.loads(payload)
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(("case", "code", "words"), [
    ("other key", "release_signature", "bad signature (signed by key"),
    ("card edited", "release_signature", "bad signature"),
    ("version edited", "release_signature", "bad signature"),
    ("model swapped", "release_hash", "model sha256 mismatch"),
    ("announced hash wrong", "release_hash", "model sha256 mismatch"),
    ("model cut", "release_truncated", "truncated model"),
    ("payload cut", "release_malformed", "not JSON"),
    ("garbage", "release_malformed", "not JSON"),
    ("not base64", "release_malformed", "not base64"),
    ("no signature", "release_malformed", "missing signature"),
    ("other node", "release_target", "addressed to 'n2'"),
    ("too large", "release_too_large", "over the profile's 1000 B limit"),
    ("unknown format", "release_format", "unsupported release format"),
])
def test_every_tampered_release_is_refused_with_its_reason(keys, case, code, words):
    good = build_release(MODEL, CARD, keys["priv"])
    body = json.loads(good)
    eager = card_with(0.01, "eager")
    import base64

    payload, limit = {
        "other key": (build_release(MODEL, CARD, keys["other"]), None),
        "card edited": (_edit(good, card=eager, card_sha256=fmt.sha256_hex(fmt.canonical_card(eager))), None),
        "version edited": (_edit(good, version="v9"), None),
        "model swapped": (_edit(good, model=base64.b64encode(ENVELOPES[:len(MODEL)].ljust(len(MODEL), b"\0"))
                                .decode()), None),
        "announced hash wrong": (_edit(good, sha256="0" * 64), None),
        "model cut": (_edit(good, model=base64.b64encode(MODEL[:1000]).decode()), None),
        "payload cut": (good[: len(good) // 2], None),
        "garbage": (bytes(range(256)), None),
        "not base64": (_edit(good, model="!!" + body["model"]), None),
        "no signature": (json.dumps({k: v for k, v in body.items() if k != "signature"}).encode(), None),
        "other node": (build_release(MODEL, CARD, keys["priv"], node="n2"), None),
        "too large": (good, 1000),
        "unknown format": (_edit(good, format="gate-release/9"), None),
    }[case]
    with pytest.raises(fmt.ReleaseError) as info:
        fmt.decode(payload, keys["public"], node="n1", max_bytes=limit)
    assert info.value.code == code and words in info.value.args[0] and "\n" not in info.value.args[0]


def test_topics_follow_the_prefix_and_no_node_is_called_fleet():
    assert fmt.model_topic("home") == "home/fleet/model"
    assert fmt.model_topic("home", "kitchen") == "home/kitchen/model"
    assert fmt.ack_topic("home", "kitchen") == "home/kitchen/model/ack"
    for bad in (("gate", "fleet"), ("gate", "a/b"), ("ga+te", "n1")):
        with pytest.raises(fmt.ReleaseError):
            fmt.model_topic(*bad)


# ------------------------------------------------------------------------------- the node's checks


def test_the_agent_refuses_models_that_fail_on_the_node_and_keeps_the_running_one(tmp_path, keys, clips):
    a, acks = agent(tmp_path, keys, clips)
    key = keys["priv"]
    a.handle(build_release(MODEL, card_with(0.02, "too-eager"), key))  # fires on the reject clips
    a.handle(build_release(ENVELOPES, ENVELOPES_CARD, key))  # another feature kind
    a.handle(build_release(b"\x00" * 30_000, CARD, key))  # signed, but no TFLite model
    a.max_bytes = 40_000
    a.handle(build_release(MODEL, CARD, key))  # 59736 B > 40000 B
    assert [k.code for k in acks] == ["release_selftest", "model_mismatch", "model_invalid", "release_too_large"]
    assert "self-test failed: reject_" in acks[0].reason
    assert all(not k.accepted and k.reason and "\n" not in k.reason for k in acks)
    assert a.store.active is None and a._ready is None
    assert not [p for p in (tmp_path / "n1").iterdir() if p.suffix == ".tflite"]


def test_a_release_carries_the_runtime_card_and_a_bad_card_is_refused_at_both_ends(tmp_path, keys, clips):
    record = json.loads((ROOT / "gate/models/kws_logmel.eval.json").read_text())
    key = fmt.load_private_key(keys["priv"])
    # Signed with the card in one piece: what is released is its runtime part.
    rel = fmt.decode(build_release(MODEL, {**CARD, **record}, key), keys["public"], node="n1")
    assert rel.card == CARD and "evaluation" not in rel.card
    with pytest.raises(fmt.ReleaseError, match="the release card: detector.threshold = 1.5: ") as info:
        build_release(MODEL, {**CARD, "detector": {"threshold": 1.5}}, key)
    assert info.value.code == "release_card"
    # A node refuses a signed release whose card is not a runtime card, and keeps what it runs.
    a, acks = agent(tmp_path, keys, clips)
    bad = {**CARD, "window_frames": "100"}
    a.handle(fmt.encode(MODEL, bad, key, version="bad-card", created_unix=100.0))
    assert [(k.accepted, k.code) for k in acks] == [(False, "model_card")]
    assert acks[0].reason == 'release bad-card: window_frames = "100": Input should be a valid integer'
    assert a.store.active is None and a._ready is None


def test_a_release_superseded_before_its_swap_is_answered_and_the_store_spares_other_files(tmp_path, keys, clips):
    a, acks = agent(tmp_path, keys, clips)
    (tmp_path / "n1" / "mine.tflite").write_bytes(b"not ours")
    a.handle(build_release(MODEL, card_with(0.98, "v1"), keys["priv"], created_unix=100.0))
    a.handle(build_release(MODEL, card_with(0.985, "v2"), keys["priv"], created_unix=200.0))
    assert [(k.accepted, k.code) for k in acks] == [(False, "release_superseded")]
    assert a._ready[0].version == "v2" and (tmp_path / "n1" / "mine.tflite").is_file()


def test_a_stale_release_is_refused_and_the_running_one_is_acked_again(tmp_path, keys, clips):
    a, acks = agent(tmp_path, keys, clips)
    new = build_release(MODEL, card_with(0.98, "v2"), keys["priv"], created_unix=200.0)
    assert a.handle(new) is not None
    assert a.handle(new).version == "v2"  # the same release again (a retained copy): acked, nothing redone
    a.handle(build_release(MODEL, card_with(0.97, "v1"), keys["priv"], created_unix=100.0))
    assert [(k.accepted, k.code) for k in acks] == [(True, None), (False, "release_stale")]


def test_a_swap_waits_for_the_segment_to_end_and_loses_no_audio(tmp_path, keys, clips):
    from gate.cascade import Cascade
    from sensors.wavfile import read_audio

    s = GateSettings()
    x = read_audio(ROOT / "datasets/demo/stream.flac")[: 16_000 * 8]  # "hey jarvis, stop" at 2.1 s
    cascade = Cascade.from_config(s)
    a, acks = agent(tmp_path, keys, clips)
    assert a.handle(build_release(MODEL, card_with(0.98, "v2"), keys["priv"])) is not None
    old = cascade.kws
    swapped_at = None
    for i in range(0, x.size, 1600):
        out = cascade.process(x[i:i + 1600])
        if out.segments or cascade.segmenter.collecting:
            assert swapped_at is None or not cascade.segmenter.collecting
        if i >= 16_000 * 2.5 and swapped_at is None and a.swap_in(cascade):
            swapped_at = i
            assert not cascade.segmenter.collecting
    assert swapped_at is not None and cascade.kws is not old and cascade.kws.detector.threshold == 0.98
    assert cascade.t_s == x.size / 16_000  # every sample went through
    assert acks[-1].accepted and acks[-1].active_sha256 == fmt.sha256_hex(MODEL)


# ------------------------------------------------------------------------------- killed mid-install

KILLER = """
import os, sys
from pathlib import Path
from gate_core import release as fmt
import gate.ota as ota
root, payload, pub, crash_at = sys.argv[1], Path(sys.argv[2]).read_bytes(), sys.argv[3], int(sys.argv[4])
calls = [0]
real = os.replace
def replace(src, dst):
    calls[0] += 1
    if calls[0] == crash_at:
        os._exit(9)  # killed: no cleanup, no exception handlers
    real(src, dst)
os.replace = replace
store = ota.ModelStore(root)
store.install(fmt.decode(payload, fmt.load_public_key(pub), node="n1"))
"""


@pytest.mark.parametrize("crash_at", [1, 2, 3, 0], ids=["before model", "before card", "before state", "no crash"])
def test_a_node_killed_mid_install_comes_back_on_a_model_that_passed(tmp_path, keys, clips, crash_at):
    a, _ = agent(tmp_path, keys, clips)
    a.handle(build_release(MODEL, card_with(0.98, "v1"), keys["priv"], created_unix=100.0))
    v1 = a.store.active
    nxt = tmp_path / "v2.json"
    nxt.write_bytes(build_release(MODEL, card_with(0.985, "v2"), keys["priv"], created_unix=200.0))
    r = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "n1"), str(nxt), str(keys["pub"]), str(crash_at)],
                       cwd=ROOT, capture_output=True, timeout=60)
    assert r.returncode == (9 if crash_at else 0), r.stderr.decode()[-800:]
    back = ModelStore(tmp_path / "n1")
    assert back.active.version == ("v2" if not crash_at else "v1")
    if crash_at:
        assert back.active == v1
        assert sorted(p.name for p in (tmp_path / "n1").iterdir()) == sorted(
            ["state.json", v1.model, v1.card])  # the half-install is gone
    a.store = back
    assert a.effective(GateSettings()).kws.model_path == str(back.path(back.active))


def test_a_damaged_active_model_rolls_back_to_the_previous_one(tmp_path, keys, clips):
    a, _ = agent(tmp_path, keys, clips)
    a.handle(build_release(MODEL, card_with(0.98, "v1"), keys["priv"], created_unix=100.0))
    a.handle(build_release(MODEL, card_with(0.985, "v2"), keys["priv"], created_unix=200.0))
    store = a.store
    assert (store.active.version, store.previous.version) == ("v2", "v1")
    with open(store.path(store.active), "r+b") as f:
        f.truncate(1000)
    back = ModelStore(tmp_path / "n1")
    assert back.active.version == "v1" and back.previous is None


# ------------------------------------------------------------------------------- real broker, real nodes


def node_settings(tmp_path: Path, node: str, keys) -> GateSettings:
    s = GateSettings()
    s.mqtt.node_id = node
    s.mqtt.spool_dir = str(tmp_path / node / "spool")
    s.mqtt.await_verdict_s = None
    s.kws.ota.public_key = str(keys["pub"])
    s.kws.ota.model_dir = str(tmp_path / node / "models")
    s.energy.profile = "mcu-analog" if node == "n1" else "pi4"
    return s


class RunningNode:
    def __init__(self, settings: GateSettings, url: str) -> None:
        self.source = PacedSource(np.zeros(16_000 * 120, np.int16), realtime=True)  # a quiet room
        self.rc: list[int] = []
        self.thread = threading.Thread(target=lambda: self.rc.append(run_node(
            settings=settings, config_path=None, broker=url, install_signals=False, source=self.source)), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.source.end()
        self.thread.join(30)
        assert self.rc == [0]


def acks_for(col: Collector, node: str) -> list[fmt.Ack]:
    return [fmt.Ack.from_json(p) for p in col.on(f"/{node}/model/ack")]


def test_releases_through_mosquitto_reach_two_nodes_and_refusals_keep_the_old_model(mosquitto, tmp_path, keys):
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    col = Collector(mosquitto.host, mosquitto.port, [fmt.ack_filter("gate")], client_id="ota-acks")
    nodes = {n: RunningNode(node_settings(tmp_path, n, keys), url) for n in ("n1", "n2")}
    try:
        time.sleep(1.0)  # both subscribed (a retained release would reach a late one all the same)
        v2 = build_release(MODEL, card_with(0.98, "v2"), keys["priv"])
        t0 = time.monotonic()
        publish_release(mosquitto.host, mosquitto.port, v2)
        sha = fmt.sha256_hex(MODEL)
        assert col.wait_for(lambda c: all(any(a.accepted and a.version == "v2" for a in acks_for(c, n))
                                          for n in nodes), timeout=20), col.messages
        print(f"fleet release acked by 2 nodes in {time.monotonic() - t0:.2f} s")
        for n in nodes:
            state = json.loads((tmp_path / n / "models" / "state.json").read_text())
            assert state["active"]["sha256"] == sha and state["active"]["version"] == "v2"
        # Refusals, to one node: each acked with its reason, the running release stays.
        bad = {
            "release_signature": build_release(MODEL, card_with(0.98, "evil"), keys["other"], node="n1"),
            "release_hash": _edit(build_release(MODEL, CARD, keys["priv"], node="n1"), sha256="1" * 64),
            "release_selftest": build_release(MODEL, card_with(0.02, "eager"), keys["priv"], node="n1"),
            "model_mismatch": build_release(ENVELOPES, ENVELOPES_CARD, keys["priv"], node="n1"),
            "release_malformed": build_release(MODEL, CARD, keys["priv"], node="n1")[:5000],
            # n1 runs the MCU profile (256 KiB): the 448 kB second-stage model does not fit
            "release_too_large": build_release(SECOND_STAGE, CARD, keys["priv"], node="n1"),
        }
        for code, payload in bad.items():
            before = len(acks_for(col, "n1"))
            col.publish(fmt.model_topic("gate", "n1"), payload, retain=True)
            assert col.wait_for(lambda c, n=before: len(acks_for(c, "n1")) > n, timeout=10), code
            ack = acks_for(col, "n1")[-1]
            assert (ack.accepted, ack.code) == (False, code), ack
            assert ack.active_sha256 == sha and ack.reason
        state = json.loads((tmp_path / "n1" / "models" / "state.json").read_text())
        assert state["active"]["version"] == "v2"
    finally:
        for n in nodes.values():
            n.stop()
        col.close()
    # Restarted, n2 comes back on its installed release and answers the retained fleet release with it.
    again = RunningNode(node_settings(tmp_path, "n2", keys), url)
    col = Collector(mosquitto.host, mosquitto.port, [fmt.ack_filter("gate")], client_id="ota-acks-2")
    try:
        assert col.wait_for(lambda c: any(a.accepted and a.version == "v2" for a in acks_for(c, "n2")), timeout=15)
    finally:
        again.stop()
        col.close()


def test_gate_cloud_release_publishes_retained_and_keygen_keeps_an_existing_key(mosquitto, tmp_path, keys, capfd):
    from cloud.cli import main as cloud_main

    model, card = ROOT / "gate/models/kws_logmel.tflite", ROOT / "gate/models/kws_logmel.json"
    assert cloud_main(["release", str(model), "--card", str(card), "--key", str(keys["priv"]), "--node", "kitchen",
                       "--prefix", "home", "--broker", f"{mosquitto.host}:{mosquitto.port}"]) == 0
    out = json.loads(capfd.readouterr().out)
    assert out["topic"] == "home/kitchen/model" and out["sha256"] == fmt.sha256_hex(MODEL)
    late = Collector(mosquitto.host, mosquitto.port, ["home/kitchen/model"], client_id="late")
    try:
        assert late.wait_for(lambda c: c.messages, timeout=5)
        topic, payload, retained = late.messages[0]
        assert retained and fmt.decode(payload, keys["public"], node="kitchen").sha256 == out["sha256"]
    finally:
        late.close()
    assert cloud_main(["keygen", "--out", str(keys["priv"].parent)]) == 2
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and "already exists" in err
