"""`gate-cloud serve` against a real mosquitto: workers are real processes, faults are real signals.

Every test runs the committed cloud models (cloud/models/*.tflite) and fails, naming them, if they
are missing. ``GATE_TEST_FAKE_CLOUD_MODELS=1`` runs the MQTT tests (not the end-to-end one) with the
deterministic stand-in of cloud_helpers instead, for work on the transport while the weights are
being rebuilt.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from cloud_helpers import CloudService, make_segment
from mqtt_helpers import Collector, needs_mosquitto

from gate_core.wire import Verdict, rewrite_header

pytestmark = [needs_mosquitto, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
FAKE = os.environ.get("GATE_TEST_FAKE_CLOUD_MODELS") == "1"
MOSQUITTO_PUB = shutil.which("mosquitto_pub")


@pytest.fixture
def broker(mosquitto):
    """A real mosquitto on a free loopback port: the shared fixture, under the name these tests use."""
    return mosquitto


@pytest.fixture
def service_factory(tmp_path, broker):
    """``gate-cloud serve`` on the shipped models (the stand-in with GATE_TEST_FAKE_CLOUD_MODELS=1, except
    where ``real_only``), killed with every worker at teardown."""
    started: list[CloudService] = []

    def make(*, workers: int, extra: list[str] = (), real_only: bool = False, name: str = "svc",
             db: Path | None = None, prefix: str | None = None, db_url: str | None = None) -> CloudService:
        s = CloudService(tmp_path / name, broker.port, workers=workers, prefix=prefix or f"test-{name}",
                         models_factory="cloud_helpers:fake_models" if FAKE and not real_only else None,
                         db=db, db_url=db_url, extra=extra, log_level="INFO", ready_timeout=60)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


@pytest.fixture
def node(broker):
    c = Collector(broker.host, broker.port, ["gate/+/verdict"], client_id="test-node")
    yield c
    c.close()


def verdicts(node: Collector) -> dict[str, list[Verdict]]:
    out: dict[str, list[Verdict]] = {}
    for payload in node.on("/verdict"):
        v = Verdict.model_validate_json(payload)
        out.setdefault(v.segment_id, []).append(v)
    return out


def publish_stream(node: Collector, n: int, *, node_id: str = "n1", every_s: float = 0.0) -> list[str]:
    ids = []
    for i in range(n):
        header, payload = make_segment(node=node_id, seed=1000 + i, seq=i, seconds=1.0, sent_unix=time.time())
        node.publish(f"gate/{node_id}/segments", payload)
        ids.append(header.segment_id)
        if every_s:
            time.sleep(every_s)
    return ids


def wait_verdicts(node: Collector, ids: list[str], timeout: float) -> dict[str, list[Verdict]]:
    want = set(ids)
    node.wait_for(lambda c: want <= set(verdicts(c)), timeout)
    got = verdicts(node)
    missing = want - set(got)
    assert not missing, f"{len(missing)} of {len(want)} segments never answered"
    return got


# ---------------------------------------------------------------------------------------------


def _say(text: str, tmp: Path, voice: str = "en-us") -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    wav = tmp / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True, timeout=30)
    x, sr = sf.read(wav, dtype="float32")
    x = resample_poly(x, 16_000, sr) if sr != 16_000 else x
    return (np.clip(x, -1, 1) * 20_000).astype(np.int16)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng binary")
def test_node_segments_are_verified_and_answered_end_to_end(tmp_path, broker, service_factory):
    from gate.transport.config import BrokerLink, NodeIdentity
    from gate.transport.mqtt import MqttTransport
    from gate.transport.spool import Spool

    svc = service_factory(workers=1, real_only=True)
    got: dict[str, Verdict] = {}
    done = threading.Condition()

    def on_verdict(v: Verdict) -> None:
        with done:
            got[v.segment_id] = v
            done.notify_all()

    pre = np.zeros(8_000, np.int16)
    wake = _say("hey jarvis", tmp_path)
    command = _say("turn on the lights", tmp_path)
    speech = np.concatenate([pre, wake, command, np.zeros(4_000, np.int16)])
    noise = (np.random.default_rng(5).standard_normal(speech.size) * 300).astype(np.int16)
    detect_s = (pre.size + wake.size) / 16_000

    transport = MqttTransport(BrokerLink(broker.host, broker.port, reconnect_min_s=0.1, reconnect_max_s=1.0),
                              NodeIdentity("kitchen"), Spool(tmp_path / "spool", max_bytes=10 << 20, fsync=False),
                              on_verdict=on_verdict)
    transport.start()
    try:
        assert transport.wait_connected(10)
        ids = {}
        for label, x in (("wake", speech), ("noise", noise)):
            h, payload = make_segment(node="kitchen", samples=x, detect_s=detect_s, sent_unix=time.time())
            transport.publish_segment(payload, segment_id=h.segment_id)
            ids[label] = h.segment_id
        with done:
            assert done.wait_for(lambda: set(ids.values()) <= set(got), 30), svc.log()
    finally:
        transport.close()
    wake_v, noise_v = got[ids["wake"]], got[ids["noise"]]
    for v in (wake_v, noise_v):
        assert v.node_id == "kitchen" and v.rejected_code is None and 0.0 <= v.scores["verifier"] <= 1.0
        assert set(v.models) == {"verifier", "commands"}
        assert ("commands" in v.scores) == v.accepted  # the command model runs only after the verifier accepts
    # The service applied the shipped models faithfully: same scores as running them here.
    from cloud.commands import DEFAULT_COMMANDS, CommandRecognizer
    from cloud.verifier import DEFAULT_VERIFIER, Verifier
    from gate.kws.interpreter import read_evaluation

    verifier, commands = Verifier(), CommandRecognizer()
    for v, x in ((wake_v, speech), (noise_v, noise)):
        accepted, p = verifier.verify(x, detect_s)
        assert v.accepted == accepted and v.scores["verifier"] == pytest.approx(p, abs=1e-6)
        if accepted:
            assert v.command == commands.recognise(x, detect_s).name
    # And, as far as the shipped models claim to be accurate, they got this clear case right.
    if read_evaluation(DEFAULT_VERIFIER)["accuracy_test_float"] >= 0.9:
        assert wake_v.accepted and not noise_v.accepted
        if read_evaluation(DEFAULT_COMMANDS)["accuracy_test_float"] >= 0.9:
            assert wake_v.command == "lights_on"
    summary_expect = (int(wake_v.accepted) + int(noise_v.accepted), 2 - int(wake_v.accepted) - int(noise_v.accepted))
    rc, summary = svc.stop()
    assert rc == 0 and summary["received"] == 2 and (summary["accepted"], summary["rejected"]) == summary_expect
    assert summary["energy"]["joules"] > 0 and summary["workers"][0]["latency_s"]["n"] == 2


def test_two_workers_share_one_stream_without_duplicates(service_factory, node):
    svc = service_factory(workers=2)
    ids = publish_stream(node, 40)
    got = wait_verdicts(node, ids, timeout=40)
    assert all(len(v) == 1 for v in got.values()), "a segment was answered twice"
    rc, summary = svc.stop()
    assert rc == 0
    rows = svc.rows()
    assert sorted(r[0] for r in rows) == sorted(ids)
    per_worker = {w["worker"]: w["received"] for w in summary["workers"]}
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker
    assert summary["received"] == 40 and summary["dedupe_hits"] == 0 and summary["malformed"] == 0
    assert summary["accepted"] + summary["rejected"] == 40


def test_worker_killed_mid_stream_loses_nothing(service_factory, node):
    svc = service_factory(workers=2)
    ids: list[str] = []
    sender = threading.Thread(target=lambda: ids.extend(publish_stream(node, 60, every_s=0.03)))
    sender.start()
    assert node.wait_for(lambda c: len(verdicts(c)) >= 10, 30), svc.log()
    victim = svc.pid_of(0)
    os.kill(victim, signal.SIGKILL)
    sender.join(30)
    got = wait_verdicts(node, ids, timeout=60)
    # The restarted worker resumes its broker session: everything is answered and stored once.
    rows = svc.rows()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert len(got) == 60
    assert svc.pid_of(0) != victim
    rc, summary = svc.stop()
    assert rc == 0 and summary["restarts"]["0"] >= 1


def test_redelivered_segment_is_recognised_and_answered_again(service_factory, node):
    svc = service_factory(workers=1)
    header, payload = make_segment(seed=7, sent_unix=time.time())
    node.publish("gate/n1/segments", payload)
    wait_verdicts(node, [header.segment_id], timeout=20)
    node.publish("gate/n1/segments", payload)  # as a node resends after a lost PUBACK
    assert node.wait_for(lambda c: len(verdicts(c).get(header.segment_id, [])) == 2, 20), svc.log()
    first, second = verdicts(node)[header.segment_id]
    assert first == second
    metrics = urllib.request.urlopen(svc.states()[0]["metrics_url"] + "/metrics", timeout=5).read().decode()
    assert "gate_cloud_dedupe_hits_total 1.0" in metrics and "gate_cloud_messages_received_total 2.0" in metrics
    rc, summary = svc.stop()
    assert rc == 0 and summary["dedupe_hits"] == 1 and summary["received"] == 2
    assert len(svc.rows()) == 1


@pytest.mark.skipif(MOSQUITTO_PUB is None, reason="needs mosquitto_pub (Debian: mosquitto-clients)")
def test_malformed_messages_from_mosquitto_pub_are_counted_and_service_keeps_serving(
        tmp_path, broker, service_factory, node):
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text("cloud:\n  max_payload_kb: 16\n  max_segment_s: 5\n")
    svc = service_factory(workers=1, extra=["--config", str(cfg)])
    header, good = make_segment(seed=3, seconds=0.25, codec="pcm_s16le")
    _, pcm = make_segment(seed=4, seconds=0.25, codec="pcm_s16le")
    _, other = make_segment(seed=5, seconds=0.25, codec="pcm_s16le")
    head_len = int.from_bytes(pcm[4:8], "big")
    cases = {
        "junk": ("gate/n1/segments", b"this is not a segment", "wire_bad_magic"),
        "empty": ("gate/n1/segments", b"", "wire_truncated"),
        "truncated": ("gate/n1/segments", other[:-100], "wire_n_samples"),
        "too_large": ("gate/n1/segments", os.urandom(20 * 1024), "wire_too_large"),
        "bad_json": ("gate/n1/segments", pcm[:8] + b"\xff" * head_len + pcm[8 + head_len:], "wire_header_json"),
        "rate": ("gate/n1/segments", rewrite_header(pcm, sample_rate=8000), "wire_sample_rate"),
        "codec": ("gate/n1/segments", rewrite_header(pcm, codec="mp3"), "wire_codec"),
        "version": ("gate/n1/segments", rewrite_header(pcm, v=99), "wire_version"),
        "forged_node": ("gate/n2/segments", pcm, "wire_node_mismatch"),
        "bad_topic": ("gate/n 1/segments", pcm, "wire_topic"),
    }
    for name, (topic, payload, _) in cases.items():
        f = tmp_path / f"{name}.bin"
        f.write_bytes(payload)
        args = ["-n"] if not payload else ["-f", str(f)]
        subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, *args],
                       check=True, timeout=10)
    node.publish("gate/n1/segments", good)  # still serving
    answered = wait_verdicts(node, [header.segment_id], timeout=20)[header.segment_id]
    assert answered[0].rejected_code is None and "verifier" in answered[0].scores
    rc, summary = svc.stop()
    want: dict[str, int] = {}
    for _, _, code in cases.values():
        want[code] = want.get(code, 0) + 1
    assert rc == 0, svc.log()
    assert summary["malformed_by_code"] == want and summary["malformed"] == len(cases), svc.log()
    assert summary["received"] == len(cases) + 1 and summary["errors"] == 0
    assert svc.rows("SELECT COUNT(*) FROM rejects") == [(len(cases),)]
    log = svc.log()
    assert "wire_sample_rate" in log and "malformed message" in log


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_broker_restart_is_survived(broker, service_factory, node):
    svc = service_factory(workers=1, extra=[])
    first = publish_stream(node, 5)
    wait_verdicts(node, first, timeout=20)
    broker.restart()
    assert node.wait_for(lambda c: c.client.is_connected(), 10)
    health = svc.states()[0]["metrics_url"] + "/healthz"
    deadline = time.monotonic() + 20
    while not _healthy(health):
        assert time.monotonic() < deadline, svc.log()
        time.sleep(0.1)
    second = publish_stream(node, 5, node_id="n2")
    wait_verdicts(node, second, timeout=30)
    rc, summary = svc.stop()
    # A segment whose PUBACK was still on its way when the broker went down comes back: a dedupe hit.
    assert rc == 0 and summary["received"] == 10 + summary["dedupe_hits"]
    assert sorted(r[0] for r in svc.rows()) == sorted(first + second)


def test_scaling_down_retires_the_surplus_session(tmp_path, service_factory, node):
    db = tmp_path / "shared.db"
    two = service_factory(workers=2, name="two", prefix="scale", db=db)
    assert two.stop()[0] == 0
    # Nothing runs; the broker queues these in the sessions of both workers of the last run.
    ids = publish_stream(node, 10)
    one = service_factory(workers=1, name="one", prefix="scale", db=db)
    wait_verdicts(node, ids, timeout=30)
    rc, summary = one.stop()
    assert rc == 0 and "retired scale-1" in one.log()
    assert sorted(r[0] for r in one.rows()) == sorted(ids)


def test_two_workers_share_one_stream_on_postgresql(service_factory, node, pg_url):  # noqa: F811
    from cloud.store import open_store

    store = open_store(pg_url)
    store.query("DROP TABLE IF EXISTS segments, rejects, meta")
    store.close()
    svc = service_factory(workers=2, db_url=pg_url)
    ids = publish_stream(node, 20)
    got = wait_verdicts(node, ids, timeout=30)
    assert all(len(v) == 1 for v in got.values())
    rc, summary = svc.stop()
    assert rc == 0 and summary["received"] == 20 and summary["dedupe_hits"] == 0
    rows = svc.rows()
    assert sorted(r[0] for r in rows) == sorted(ids) and len({r[1] for r in rows}) == 2


def test_sigterm_mid_stream_finishes_in_flight_and_a_restart_resumes(tmp_path, service_factory, node):
    db = tmp_path / "resume.db"
    first = service_factory(workers=1, name="first", prefix="resume", db=db)
    ids: list[str] = []
    sender = threading.Thread(target=lambda: ids.extend(publish_stream(node, 60)))
    sender.start()
    assert node.wait_for(lambda c: len(verdicts(c)) >= 3, 30), first.log()
    rc, summary = first.stop()
    sender.join(30)
    assert rc == 0 and "Traceback" not in first.log()
    answered = summary["accepted"] + summary["rejected"]
    assert 3 <= answered < 60 and summary["errors"] == 0
    # What the first run did not take stayed in its broker session; the restart takes it over.
    second = service_factory(workers=1, name="second", prefix="resume", db=db)
    wait_verdicts(node, ids, timeout=40)
    assert sorted(r[0] for r in second.rows()) == sorted(ids)
    rc, summary2 = second.stop()
    # Every segment went through the models exactly once across the two runs.
    assert rc == 0 and answered + summary2["accepted"] + summary2["rejected"] == 60
