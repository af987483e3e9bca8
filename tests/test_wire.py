import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gate.energy import EnergyLedger
from gate_core.wire import (
    MAX_HEADER_BYTES,
    ConfigUpdate,
    NodeTopics,
    SegmentHeader,
    Verdict,
    WireError,
    decode_segment,
    encode_segment,
    new_id,
    parse_topic,
    pcm_sha256,
    peek_header,
    shared_subscription,
)

MAX = 1 << 20
RNG = np.random.default_rng(7)
AUDIO = (np.sin(np.arange(8000) * 0.07) * 9000 + RNG.normal(0, 300, 8000)).astype(np.int16)


def header(**kw) -> SegmentHeader:
    ledger = EnergyLedger()
    ledger.charge("encoder", invocations=1, nbytes=100)
    fields = dict(node_id="kitchen", boot_id=new_id(), segment_id=new_id(), seq=3, t_start_s=12.25,
                  t_end_s=12.75, t_detect_s=12.5, scores={"analog": 1.0, "kws": 0.91}, sample_rate=16000,
                  codec="flac", n_samples=1, audio_sha256="0" * 64, ledger_delta=ledger.snapshot().to_dict(),
                  sent_unix=1.7e9)
    fields.update(kw)
    return SegmentHeader(**fields)


def frame(head: dict | bytes, audio: bytes, *, magic=b"GSG", version=1) -> bytes:
    raw = head if isinstance(head, bytes) else json.dumps(head).encode()
    return struct.pack(">3sBI", magic, version, len(raw)) + raw + audio


def good(codec="pcm_s16le") -> tuple[dict, bytes]:
    payload = encode_segment(header(), AUDIO, codec)
    n = struct.unpack_from(">I", payload, 4)[0]
    return json.loads(payload[8:8 + n]), payload[8 + n:]


@pytest.mark.parametrize("codec", ["flac", "pcm_s16le"])
def test_round_trip(codec):
    h = header()
    payload = encode_segment(h, AUDIO, codec)
    got, samples = decode_segment(payload, max_bytes=MAX)
    assert np.array_equal(samples, AUDIO) and samples.dtype == np.int16
    assert got.codec == codec and got.n_samples == AUDIO.size and got.audio_sha256 == pcm_sha256(AUDIO)
    assert (got.t_start_s, got.t_end_s, got.t_detect_s) == (12.25, 12.75, 12.5)
    assert got.segment_id == h.segment_id and got.ledger_delta == h.ledger_delta and got.scores == h.scores
    assert peek_header(payload)["segment_id"] == h.segment_id


def test_flac_is_smaller_than_pcm():
    assert len(encode_segment(header(), AUDIO, "flac")) < 0.8 * len(encode_segment(header(), AUDIO, "pcm_s16le"))


def test_ids_are_unique():
    assert len({new_id() for _ in range(1000)}) == 1000


def _mutate(head: dict, **kw) -> dict:
    return {**head, **kw}


def _cases():
    h, pcm = good()
    fh, flac = good("flac")
    flac_h = dict(fh)
    no_seq = {k: v for k, v in h.items() if k != "seq"}
    return {
        "too_large": (frame(h, pcm), "wire_too_large", "payload", 1000),
        "short_prefix": (b"GSG\x01\x00", "wire_truncated", "prefix", MAX),
        "header_past_end": (frame(h, b"")[:40], "wire_truncated", "prefix.header_len", MAX),
        "huge_header_len": (struct.pack(">3sBI", b"GSG", 1, MAX_HEADER_BYTES + 1), "wire_too_large",
                            "prefix.header_len", MAX),
        "bad_magic": (frame(h, pcm, magic=b"XYZ"), "wire_bad_magic", "prefix.magic", MAX),
        "framing_version": (frame(h, pcm, version=9), "wire_version", "prefix.version", MAX),
        "schema_version": (frame(_mutate(h, v=2), pcm), "wire_version", "v", MAX),
        "schema_version_bool": (frame(_mutate(h, v=True), pcm), "wire_version", "v", MAX),
        "not_utf8": (frame(b"\xff\xfe", pcm), "wire_header_json", "header", MAX),
        "not_json": (frame(b"{nope", pcm), "wire_header_json", "header", MAX),
        "json_nan": (frame(json.dumps(h).replace("12.25", "NaN").encode(), pcm), "wire_header_json", "header", MAX),
        "json_array": (frame(b"[1, 2]", pcm), "wire_header_json", "header", MAX),
        "deep_json": (frame(b"[" * 10000, pcm), "wire_header_json", "header", MAX),
        "missing_field": (frame(no_seq, pcm), "wire_header_schema", "seq", MAX),
        "string_int": (frame(_mutate(h, seq="3"), pcm), "wire_header_schema", "seq", MAX),
        "extra_field": (frame(_mutate(h, evil=1), pcm), "wire_header_schema", "evil", MAX),
        "detect_outside": (frame(_mutate(h, t_detect_s=99.0), pcm), "wire_header_schema", "header", MAX),
        "bad_node": (frame(_mutate(h, node_id="a/#"), pcm), "wire_header_schema", "node_id", MAX),
        "bad_ledger": (frame(_mutate(h, ledger_delta={"stages": {"radio": {"bytes": -1}}}), pcm),
                       "wire_header_schema", "ledger_delta", MAX),
        "bad_score_key": (frame(_mutate(h, scores={"a b": 1.0}), pcm), "wire_header_schema", "scores", MAX),
        "rate": (frame(_mutate(h, sample_rate=8000), pcm), "wire_sample_rate", "sample_rate", MAX),
        "codec": (frame(_mutate(h, codec="opus"), pcm), "wire_codec", "codec", MAX),
        "pcm_odd": (frame(h, pcm[:-1]), "wire_audio", "audio", MAX),
        "pcm_short": (frame(h, pcm[:-2]), "wire_n_samples", "n_samples", MAX),
        "pcm_long": (frame(h, pcm + b"\0\0"), "wire_n_samples", "n_samples", MAX),
        "sha": (frame(h, pcm[:-2] + b"\x01\x00"), "wire_sha256", "audio_sha256", MAX),
        "too_long": (frame(_mutate(h, n_samples=16000 * 61), pcm), "wire_too_large", "n_samples", MAX),
        "flac_garbage": (frame(flac_h, b"fLaC" + b"\x00" * 64), "wire_audio", "audio", MAX),
        "flac_not_flac": (frame(flac_h, pcm), "wire_audio", "audio", MAX),
        "flac_truncated": (frame(flac_h, flac[:len(flac) // 2]), "wire_audio", "audio", MAX),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_wire_error(name):
    payload, code, field, max_bytes = CASES[name]
    with pytest.raises(WireError) as err:
        decode_segment(payload, max_bytes=max_bytes)
    assert err.value.code == code, str(err.value)
    assert err.value.field == field or (field == "header" and err.value.field in ("header", None)), str(err.value)
    assert err.value.reason


def test_flac_rate_differs_from_header():
    h = header(sample_rate=8000)
    inner = encode_segment(h, AUDIO, "flac")
    n = struct.unpack_from(">I", inner, 4)[0]
    head = json.loads(inner[8:8 + n])
    head["sample_rate"] = 16000
    with pytest.raises(WireError) as err:
        decode_segment(frame(head, inner[8 + n:]), max_bytes=MAX)
    assert err.value.code == "wire_sample_rate" and err.value.field == "audio.sample_rate"


def test_expected_rate_is_checked():
    with pytest.raises(WireError) as err:
        decode_segment(encode_segment(header(), AUDIO, "pcm_s16le"), max_bytes=MAX, expected_rate=8000)
    assert err.value.code == "wire_sample_rate"


def test_not_bytes():
    with pytest.raises(WireError) as err:
        decode_segment("text", max_bytes=MAX)  # type: ignore[arg-type]
    assert err.value.code == "wire_type"


def test_encoder_refuses_what_the_decoder_would():
    with pytest.raises(WireError):
        encode_segment(header(), AUDIO, "opus")
    with pytest.raises(TypeError):
        encode_segment(header(), AUDIO.astype(np.float32), "flac")


# -- hostile input ----------------------------------------------------------------------------

VALID = {c: encode_segment(header(), AUDIO[:2000], c) for c in ("flac", "pcm_s16le")}
FUZZ = settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                derandomize=True)


def _only_wire_errors(payload: bytes) -> None:
    try:
        h, x = decode_segment(payload, max_bytes=64 * 1024)
    except WireError as exc:
        assert exc.code.startswith("wire_") and str(exc)
    else:
        assert x.dtype == np.int16 and x.size == h.n_samples


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_wire_error(data):
    _only_wire_errors(data)
    _only_wire_errors(b"GSG\x01" + data)


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "splice"]), st.integers(0, 1 << 16),
                                st.integers(1, 255), st.binary(min_size=1, max_size=32)), min_size=1, max_size=4)


@FUZZ
@given(codec=st.sampled_from(sorted(VALID)), mutations=MUTATIONS)
def test_mutated_payloads_only_raise_wire_error(codec, mutations):
    payload = bytearray(VALID[codec])
    for op, at, n, blob in mutations:
        i = at % max(len(payload), 1)
        if op == "flip" and payload:
            payload[i] ^= n
        elif op == "cut":
            del payload[i:i + n]
        elif op == "insert":
            payload[i:i] = blob
        else:
            payload[i:] = blob
    _only_wire_errors(bytes(payload))


def test_many_seeded_mutations_only_raise_wire_error():
    # Hypothesis costs milliseconds per example; this plain loop adds volume at ~0.3 ms each.
    rng = np.random.default_rng(2024)
    for k in range(4000):
        payload = bytearray(VALID["flac" if k % 2 else "pcm_s16le"])
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(payload))) if payload else 0
            if rng.random() < 0.7 and payload:
                payload[i] ^= int(rng.integers(1, 256))
            else:
                del payload[i:i + int(rng.integers(1, 200))]
        _only_wire_errors(bytes(payload))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(field=st.sampled_from(sorted(good()[0])), value=json_values)
def test_mutated_header_fields_only_raise_wire_error(field, value):
    head, audio = good()
    head[field] = value
    try:
        raw = json.dumps(head, allow_nan=True).encode()
    except (ValueError, RecursionError):
        return
    _only_wire_errors(frame(raw, audio))


# -- other schemas ------------------------------------------------------------------------------

def test_verdict_and_config_reject_unknown_keys():
    v = Verdict(segment_id=new_id(), node_id="kitchen", accepted=True, scores={"verifier": 0.97}, command="lights on")
    assert Verdict.model_validate_json(v.to_json()) == v
    with pytest.raises(ValidationError):
        Verdict.model_validate({**v.model_dump(), "extra": 1})
    with pytest.raises(ValidationError):
        ConfigUpdate.model_validate({"request_id": "r1", "changes": {}})


# -- topics -----------------------------------------------------------------------------------

def test_topics():
    t = NodeTopics("kitchen")
    assert (t.segments, t.verdict, t.status, t.heartbeat, t.config, t.config_ack) == (
        "gate/kitchen/segments", "gate/kitchen/verdict", "gate/kitchen/status", "gate/kitchen/heartbeat",
        "gate/kitchen/config", "gate/kitchen/config/ack")
    assert NodeTopics("n-1.a_b", prefix="lab").segments == "lab/n-1.a_b/segments"
    assert shared_subscription("segments", group="cloud") == "$share/cloud/gate/+/segments"
    for kind in ("segments", "verdict", "config/ack"):
        assert parse_topic(t.topic(kind)) == ("kitchen", kind)


@pytest.mark.parametrize("node", ["", "a/b", "+", "#", "a+", "x" * 65, "sp ace", "nul\0", "ü"])
def test_bad_node_ids_cannot_make_topics(node):
    with pytest.raises(WireError):
        NodeTopics(node)


@pytest.mark.parametrize("topic", ["gate/+/segments", "gate/#", "gate/a/b/segments", "other/a/segments",
                                   "gate/a/unknown", "gate//segments", "gate/a", "$share/g/gate/a/segments",
                                   "gate/a/segments/", "gate/a\0/segments"])
def test_parse_topic_rejects(topic):
    with pytest.raises(WireError) as err:
        parse_topic(topic)
    assert err.value.code == "wire_topic"
