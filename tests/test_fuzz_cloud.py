"""Bad-input campaign against a running `gate-cloud serve`: random and mutated MQTT payloads.

Every payload is classified here first by the oracle (gate_core.wire.decode_segment plus the handler's
topic rule, exactly what the cloud promises to enforce), then published with one paho client at
QoS 1. The service must count every invalid payload once under the right code, store every valid
one once, never restart a worker, and still answer fresh valid segments at the end.

``make test`` runs FUZZ_N payloads; the full campaign (10,000 and the shipped models) is
``.venv/bin/python tests/test_fuzz_cloud.py --payloads 10000``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cloud_helpers import (  # noqa: E402
    CloudService,
    make_segment,  # noqa: E402
    store_rows,
    wait_until,
)
from fault_helpers import store_count  # noqa: E402
from mqtt_helpers import MOSQUITTO, Collector, Mosquitto  # noqa: E402

from gate_core.wire import (  # noqa: E402
    MAX_HEADER_BYTES,
    PREFIX_BYTES,
    WireError,
    decode_segment,
    new_id,
    parse_topic,
    rewrite_header,
)

FUZZ_N = int(os.environ.get("GATE_FUZZ_PAYLOADS", "1000"))
MAX_PAYLOAD_KB, MAX_SEGMENT_S = 64, 5.0
CLOUD_CFG = f"cloud:\n  max_payload_kb: {MAX_PAYLOAD_KB}\n  max_segment_s: {MAX_SEGMENT_S}\n"
NODE = "n1"


@dataclass(frozen=True, slots=True)
class Case:
    kind: str
    topic: str
    payload: bytes
    code: str | None  # the oracle's WireError code; None = valid
    segment_id: str | None  # of a valid one


def classify(topic: str, payload: bytes) -> tuple[str | None, str | None]:
    """(WireError code or None, segment id of a valid one): the contract of cloud/service/handler.py."""
    try:
        node, kind = parse_topic(topic)
        if kind != "segments":
            return "wire_topic", None
        header, _ = decode_segment(payload, max_bytes=MAX_PAYLOAD_KB * 1024, max_seconds=MAX_SEGMENT_S)
        if header.node_id != node:
            return "wire_node_mismatch", None
    except WireError as err:
        return err.code, None
    return None, header.segment_id


def _header_edits(rng: np.random.Generator) -> dict:
    edits = [
        {"v": 2}, {"v": "1"}, {"v": None}, {"v": 1.0}, {"codec": "mp3"}, {"codec": "FLAC"}, {"codec": 1},
        {"sample_rate": 8000}, {"sample_rate": 0}, {"sample_rate": -16000}, {"sample_rate": "16000"},
        {"sample_rate": 10 ** 12}, {"n_samples": 0}, {"n_samples": -1}, {"n_samples": 2 ** 40},
        {"n_samples": 2 ** 63}, {"n_samples": 79_999}, {"n_samples": 1.5}, {"audio_sha256": "0" * 64},
        {"audio_sha256": "xyz"}, {"segment_id": "not-hex"}, {"segment_id": "A" * 32}, {"node_id": "n2"},
        {"node_id": "bad/level"}, {"node_id": ""}, {"boot_id": 7}, {"seq": -1}, {"t_start_s": -1.0},
        {"t_end_s": 0.0, "t_start_s": 5.0}, {"t_detect_s": 1e9}, {"extra": 1},
        {"scores": {f"k{i}": 0.5 for i in range(40)}}, {"scores": {"bad key!": 1.0}},
        {"scores": {"kws": "high"}}, {"ledger_delta": {"stages": 5}}, {"ledger_delta": [1, 2]},
        {"sent_unix": "yesterday"},
    ]
    return edits[rng.integers(len(edits))]


def _mutate(rng: np.random.Generator, kind: str, base: bytes) -> tuple[str, bytes]:
    topic = f"gate/{NODE}/segments"
    fresh = rewrite_header(base, segment_id=new_id())
    if kind == "valid":
        return topic, fresh
    if kind == "random":
        return topic, rng.bytes(int(rng.integers(0, 4000)))
    if kind == "random_prefixed":  # valid magic and a believable header length, then junk
        n = int(rng.integers(0, 3000))
        return topic, b"GSG\x01" + int(rng.integers(0, n + 16)).to_bytes(4, "big") + rng.bytes(n)
    if kind == "bitflip":
        b = bytearray(fresh)
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
        return topic, bytes(b)
    if kind == "truncate":
        return topic, fresh[:int(rng.integers(0, len(fresh)))]
    if kind == "header_edit":
        return topic, rewrite_header(fresh, **_header_edits(rng))
    if kind == "prefix_lie":
        n = int.from_bytes(fresh[4:PREFIX_BYTES], "big")
        lie = [0, n - 1, n + 1, len(fresh), MAX_HEADER_BYTES + 1, 2 ** 32 - 1][int(rng.integers(6))]
        return topic, fresh[:4] + max(lie, 0).to_bytes(4, "big") + fresh[PREFIX_BYTES:]
    if kind == "bad_magic":
        return topic, [b"GSH", b"gsg", b"\x00\x00\x00"][int(rng.integers(3))] + fresh[3:]
    if kind == "frame_version":
        return topic, fresh[:3] + bytes([int(rng.integers(2, 256))]) + fresh[4:]
    if kind == "header_not_json":
        n = int.from_bytes(fresh[4:PREFIX_BYTES], "big")
        junk = [b"\xff" * n, b"[" * n, b'"' + b"a" * (n - 2) + b'"', b"NaN".ljust(n), b"{" * n][int(rng.integers(5))]
        return topic, fresh[:PREFIX_BYTES] + junk + fresh[PREFIX_BYTES + n:]
    if kind == "codec_swap":  # the header names the other codec than the audio carries
        n = int.from_bytes(fresh[4:PREFIX_BYTES], "big")
        codec = json.loads(fresh[PREFIX_BYTES:PREFIX_BYTES + n])["codec"]
        return topic, rewrite_header(fresh, codec="pcm_s16le" if codec == "flac" else "flac")
    if kind == "undecodable_flac":
        n = int.from_bytes(fresh[4:PREFIX_BYTES], "big")
        head = rewrite_header(fresh, codec="flac")[:PREFIX_BYTES + n + 2]  # header grows by 2 B at most
        n2 = int.from_bytes(head[4:PREFIX_BYTES], "big")
        return topic, head[:PREFIX_BYTES + n2] + b"fLaC" + rng.bytes(int(rng.integers(0, 3000)))
    if kind == "oversized":
        return topic, fresh + rng.bytes(MAX_PAYLOAD_KB * 1024 + int(rng.integers(1, 200_000)))
    if kind == "forged_node":
        return f"gate/n{int(rng.integers(2, 9))}/segments", fresh
    raise ValueError(kind)


KINDS = {"valid": 10, "random": 8, "random_prefixed": 6, "bitflip": 14, "truncate": 8, "header_edit": 18,
         "prefix_lie": 6, "bad_magic": 4, "frame_version": 3, "header_not_json": 6, "codec_swap": 4,
         "undecodable_flac": 5, "oversized": 4, "forged_node": 4}


def cases(n: int, seed: int = 0) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    bases = [make_segment(node=NODE, seconds=float(s), codec=c, seed=i)[1]
             for i, (s, c) in enumerate([(0.25, "flac"), (0.25, "pcm_s16le"), (1.0, "flac"), (1.0, "pcm_s16le")])]
    names = list(KINDS)
    p = np.array([KINDS[k] for k in names], float)
    p /= p.sum()
    for i in range(n):
        kind = names[rng.choice(len(names), p=p)]
        topic, payload = _mutate(rng, kind, bases[int(rng.integers(len(bases)))])
        if i < 3:  # a few multi-megabyte ones, far over the limit
            kind, payload = "oversized", rng.bytes(2 * 1024 * 1024 + i)
        code, sid = classify(topic, payload)
        yield Case(kind, topic, payload, code, sid)


def publish_all(port: int, batch: list[Case], timeout: float) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fuzzer", protocol=paho.MQTTv311)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(k.topic, k.payload, qos=1) for k in batch]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            assert info.is_published(), "the broker did not take every payload in time"
    finally:
        c.disconnect()
        c.loop_stop()


def run_campaign(workdir: Path, n: int, *, models_factory: str | None, seed: int = 0,
                 timeout_s: float = 600.0) -> dict:
    """Start mosquitto and `gate-cloud serve`, fire ``n`` payloads, check the books; returns the figures."""
    workdir.mkdir(parents=True, exist_ok=True)
    # No persistence: saving the database after every change makes a 10,000-message burst quadratic.
    broker = Mosquitto(workdir, persistence=False)
    broker.start()
    svc = None
    try:
        svc = CloudService(workdir / "cloud", broker.port, models_factory=models_factory, config=CLOUD_CFG,
                           prefix="fuzz")
        verdicts = Collector(broker.host, broker.port, ["gate/+/verdict"], client_id="fuzz-verdicts")
        t0 = time.monotonic()
        batch = list(cases(n, seed))
        t_gen = time.monotonic() - t0
        t1 = time.monotonic()
        publish_all(broker.port, batch, timeout=timeout_s)
        t_pub = time.monotonic() - t1

        def received() -> int:
            return sum(s["received"] for s in svc.live_summaries())

        assert wait_until(lambda: received() >= n, timeout_s, 0.5), (received(), svc.log())
        t_done = time.monotonic() - t1
        # Still alive and answering: fresh valid segments get a real verdict.
        finals = [make_segment(node=NODE, seconds=0.5, seed=10_000 + i, sent_unix=time.time()) for i in range(5)]
        publish_all(broker.port, [Case("final", f"gate/{NODE}/segments", p, None, h.segment_id)
                                  for h, p in finals], timeout=30)
        final_ids = {h.segment_id for h, _ in finals}

        def answered() -> set[str]:
            return {json.loads(p)["segment_id"] for p in verdicts.on("/verdict")
                    if json.loads(p)["rejected_code"] is None}

        assert verdicts.wait_for(lambda c: final_ids <= answered(), 60), svc.log()
        verdicts.close()
        rc, summary = svc.stop()
        expected_codes = Counter(k.code for k in batch if k.code is not None)
        valid_ids = {k.segment_id for k in batch if k.code is None}
        rows = store_rows(svc.db)
        figures = {
            "payloads": n, "valid": len(valid_ids), "invalid": sum(expected_codes.values()),
            "by_kind": dict(Counter(k.kind for k in batch)), "expected_by_code": dict(sorted(expected_codes.items())),
            "malformed_counted": summary["malformed"], "malformed_by_code": summary["malformed_by_code"],
            "received": summary["received"], "errors": summary["errors"], "restarts": summary.get("restarts", {}),
            "rows": sum(rows.values()), "rows_doubled": sum(1 for v in rows.values() if v > 1),
            "rejects_logged": store_count(svc.db, "SELECT COUNT(*) FROM rejects"), "exit_code": rc,
            "bytes": sum(len(k.payload) for k in batch), "generate_s": round(t_gen, 2),
            "publish_s": round(t_pub, 2), "all_handled_s": round(t_done, 2),
            "rate_per_s": round(n / t_done, 1),
        }
        assert rc == 0, svc.log()
        assert summary["malformed"] == figures["invalid"], figures
        assert summary["malformed_by_code"] == figures["expected_by_code"], figures
        assert summary["received"] == n + len(finals) and summary["errors"] == 0, figures
        assert all(v == 0 for v in figures["restarts"].values()), figures
        assert set(rows) == valid_ids | final_ids and figures["rows_doubled"] == 0, figures
        assert figures["rejects_logged"] == figures["invalid"], figures
        assert "Traceback" not in svc.log_path.read_text(errors="replace")
        return figures
    finally:
        if svc is not None:
            svc.kill()
        broker.stop()


needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


def test_the_oracle_agrees_with_hand_made_cases():
    _, good = make_segment(node=NODE, seconds=0.25)
    assert classify(f"gate/{NODE}/segments", good)[0] is None
    assert classify("gate/n2/segments", good)[0] == "wire_node_mismatch"
    assert classify(f"gate/{NODE}/segments", rewrite_header(good, v=2))[0] == "wire_version"
    assert classify(f"gate/{NODE}/segments", good[:-10])[0] in ("wire_audio", "wire_n_samples")
    kinds = Counter(c.kind for c in cases(400))
    assert set(kinds) == set(KINDS), "every mutation kind is exercised"


@needs_mosquitto
@pytest.mark.slow
def test_cloud_survives_a_fuzz_campaign_and_counts_every_bad_payload(tmp_path):
    figures = run_campaign(tmp_path, FUZZ_N, models_factory="fault_helpers:fast_models", timeout_s=120)
    assert figures["invalid"] > 0.8 * FUZZ_N and figures["valid"] > 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fuzz a running gate-cloud serve with random and mutated payloads.")
    p.add_argument("--payloads", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fake-models", action="store_true", help="the stand-in models instead of the shipped ones")
    p.add_argument("--timeout-s", type=float, default=900.0)
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gate-fuzz-") as tmp:
        figures = run_campaign(Path(tmp), args.payloads, seed=args.seed, timeout_s=args.timeout_s,
                               models_factory="fault_helpers:fast_models" if args.fake_models else None)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
