"""Bad-input campaign on the node's inputs: audio files and thresholds files.

Audio: thousands of mutated, truncated, mis-sized and mis-formatted WAV/FLAC files through
sensors.wavfile.read_audio, in a child process with a memory limit (so a runaway allocation is a
finding, not an OOM-killed machine), each within a time bound; a sample through `gate-node replay`.
The only acceptable outcomes are int16 audio or AudioInputError (CLI: exit 2, no traceback).

Thresholds: hypothesis-generated invalid values, keys and documents through load_settings: a
GateSettings or a SettingsError whose every problem is located in the file, never anything else.
"""

from __future__ import annotations

import io
import os
import resource
import struct
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from cloud_helpers import ENV, ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gate.config import GateSettings, SettingsError, load_settings

AUDIO_N = int(os.environ.get("GATE_FUZZ_AUDIO", "2000"))
PER_FILE_S = 2.0
MEM_LIMIT = 2 << 30
SR = 16_000

# ---------------------------------------------------------------------------------------------
# Audio files


def _bases() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(SR // 2) * 3000).astype(np.int16)
    out = {}
    for name, rate, ch, fmt, sub in [("wav16k", SR, 1, "WAV", "PCM_16"), ("wav44st", 44_100, 2, "WAV", "PCM_16"),
                                     ("wavf32", SR, 1, "WAV", "FLOAT"), ("wavu8", 8_000, 1, "WAV", "PCM_U8"),
                                     ("flac16k", SR, 1, "FLAC", "PCM_16"), ("flac48st", 48_000, 2, "FLAC", "PCM_24")]:
        n = int(x.size * rate / SR)
        data = np.resize(x, n * ch).reshape(n, ch) if ch > 1 else np.resize(x, n)
        buf = io.BytesIO()
        sf.write(buf, data, rate, format=fmt, subtype=sub)
        out[name] = buf.getvalue()
    return out


def _rate_span(blob: bytes) -> slice:
    """Where the sample rate lives: fuzzed on its own (test_extreme_sample_rates), kept intact here."""
    return slice(24, 28) if blob[:4] == b"RIFF" else slice(18, 21)


def mutate_audio(rng: np.random.Generator, base: bytes) -> tuple[str, bytes]:
    b = bytearray(base)
    kind = ["truncate", "header_flip", "any_flip", "size_lie", "field_edit", "junk_tail", "random",
            "empty_ish", "chunk_shuffle"][int(rng.integers(9))]
    if kind == "truncate":
        b = b[:int(rng.integers(0, len(b)))]
    elif kind == "header_flip":
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(min(64, len(b))))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == "any_flip":
        for _ in range(int(rng.integers(1, 20))):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == "size_lie":  # RIFF size, data size or FLAC total samples claim something else
        value = [0, 1, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF, len(b) * 1000][int(rng.integers(6))]
        if b[:4] == b"RIFF":
            at = [4, b.find(b"data") + 4][int(rng.integers(2))]
            b[at:at + 4] = struct.pack("<I", value & 0xFFFFFFFF)
        else:  # STREAMINFO total samples: 36 bits ending at byte 26
            b[22:26] = struct.pack(">I", value & 0xFFFFFFFF)
    elif kind == "field_edit" and b[:4] == b"RIFF":
        at, fmt = [(20, "<H"), (22, "<H"), (32, "<H"), (34, "<H"), (16, "<I")][int(rng.integers(5))]
        b[at:at + struct.calcsize(fmt)] = struct.pack(fmt, int(rng.integers(0, 1 << (8 * struct.calcsize(fmt)))))
    elif kind == "junk_tail":
        b += rng.bytes(int(rng.integers(1, 5000)))
    elif kind == "random":
        b = bytearray(rng.bytes(int(rng.integers(0, 5000))))
    elif kind == "empty_ish":
        b = bytearray([b"", b"RIFF", b"RIFF\x00\x00\x00\x00WAVE", b"fLaC", base[:44]][int(rng.integers(5))])
    elif kind == "chunk_shuffle":
        cut = int(rng.integers(12, max(13, min(200, len(b)))))
        b = b[:12] + b[cut:] + b[12:cut]
    if len(b) >= 28 and bytes(b[:4]) == base[:4]:
        span = _rate_span(base)
        b[span] = base[span]
    return kind, bytes(b)


def read_many(paths: list[str]) -> list[tuple[str, str, str, float, int]]:
    """In a child process under a memory limit: (path, outcome, detail, seconds, samples) per file."""
    # On top of what the (forked) process already maps, so the limit bounds what reading allocates.
    with open("/proc/self/status") as f:
        vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEM_LIMIT, vm + MEM_LIMIT))
    from gate_core.errors import AudioInputError
    from sensors.wavfile import read_audio

    out = []
    for p in paths:
        t = time.monotonic()
        try:
            x = read_audio(p)
            ok = isinstance(x, np.ndarray) and x.dtype == np.int16 and x.ndim == 1
            out.append((p, "audio" if ok else "bad_array", f"{x.dtype} {x.shape}", time.monotonic() - t, x.size))
        except AudioInputError as exc:
            good = p in str(exc) and bool(exc.code)  # names the file, carries a stable code
            out.append((p, "audio_error" if good else "vague_error", f"{exc.code}: {exc}", time.monotonic() - t, 0))
        except BaseException as exc:  # noqa: BLE001 - exactly what the campaign is looking for
            out.append((p, "crash", f"{type(exc).__name__}: {exc}"[:300], time.monotonic() - t, 0))
    return out


def _in_child(paths: list[str], timeout: float) -> list[tuple]:
    with ProcessPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(read_many, paths)
        try:
            return fut.result(timeout=timeout)
        except TimeoutError:
            for proc in pool._processes.values():  # a hung read: end the child, fail the test
                proc.kill()
            raise AssertionError(f"reading {len(paths)} files did not finish within {timeout} s") from None


@pytest.fixture(scope="module")
def fuzzed_audio(tmp_path_factory) -> list[tuple[str, str, bytes]]:
    d = tmp_path_factory.mktemp("audio_fuzz")
    rng = np.random.default_rng(8)
    bases = list(_bases().items())
    out = []
    for i in range(AUDIO_N):
        name, base = bases[i % len(bases)]
        kind, blob = mutate_audio(rng, base)
        path = d / f"{i:05d}_{name}_{kind}.{'flac' if name.startswith('flac') else 'wav'}"
        path.write_bytes(blob)
        out.append((str(path), kind, blob))
    return out


def test_mutated_audio_files_give_audio_or_a_clear_error(fuzzed_audio):
    t0 = time.monotonic()
    results = _in_child([p for p, _, _ in fuzzed_audio], timeout=240)
    elapsed = time.monotonic() - t0
    outcomes = {}
    for _, outcome, *_ in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    bad = [r for r in results if r[1] not in ("audio", "audio_error")]
    assert not bad, bad[:10]
    slow = [r for r in results if r[3] > PER_FILE_S]
    assert not slow, slow[:10]
    # A 0.5 s file cannot turn into more than its header may honestly claim (a few s at the fuzzed rates).
    assert max(r[4] for r in results) < 10 * 60 * SR
    assert outcomes["audio_error"] > AUDIO_N // 3 and outcomes.get("audio", 0) > 0, outcomes
    print(f"\naudio fuzz: {len(results)} files in {elapsed:.1f} s: {outcomes}")


def test_a_sample_through_gate_node_replay_exits_2_without_a_traceback(fuzzed_audio, tmp_path):
    results = dict((r[0], r[1]) for r in _in_child([p for p, _, _ in fuzzed_audio[:60]], timeout=60))
    bad = [p for p, o in results.items() if o == "audio_error"][:25]
    proc = subprocess.run([sys.executable, "-m", "gate.cli", "replay", *bad, "--quiet"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    skipped = [ln for ln in proc.stderr.splitlines() if ln.startswith("gate-node: skipped ")]
    assert len(skipped) == len(bad), proc.stderr[-2000:]


def _wav_with_rate(rate: int, n: int = 2000) -> bytes:
    data = np.zeros(n, "<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, (rate * 2) & 0xFFFFFFFF, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_extreme_sample_rates_give_an_audio_error_quickly(tmp_path):
    paths = []
    for rate in (1, 2**31 - 1):  # 999983 Hz: ~14 s and ~1 GB, left out to keep the suite short
        p = tmp_path / f"rate_{rate}.wav"
        p.write_bytes(_wav_with_rate(rate))
        paths.append(str(p))
    results = _in_child(paths, timeout=60)
    assert all(r[1] in ("audio", "audio_error") and r[3] < PER_FILE_S for r in results), results


# ---------------------------------------------------------------------------------------------
# Thresholds files


def _leaves(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _leaves(v, (*prefix, k))
        else:
            out.append((*prefix, k))
    return out


DEFAULTS = GateSettings().model_dump(mode="json")
LEAVES = _leaves(DEFAULTS)
junk = st.one_of(
    st.text(max_size=30), st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=True),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


def _check(path: Path) -> GateSettings | SettingsError:
    try:
        return load_settings(path, env={})
    except SettingsError as exc:
        assert exc.problems, "a SettingsError with no problem in it"
        for p in exc.problems:
            assert p.where.startswith(str(path)), f"problem not located in the file: {p}"
            assert p.message
        return exc


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(leaf=st.sampled_from(LEAVES), value=junk)
def test_a_wrong_value_anywhere_is_named_by_its_field(tmp_path, leaf, value):
    data = yaml.safe_load(yaml.safe_dump(DEFAULTS))
    node = data
    for k in leaf[:-1]:
        node = node[k]
    node[leaf[-1]] = value
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    got = _check(path)
    if isinstance(got, SettingsError):
        dotted = ".".join(leaf)
        assert any(p.path.startswith(dotted) or dotted.startswith(p.path) for p in got.problems), \
            (dotted, str(got))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from([()] + [leaf[:-1] for leaf in LEAVES]), key=st.text(min_size=1, max_size=12))
def test_an_unknown_key_at_any_level_is_refused(tmp_path, where, key):
    data = yaml.safe_load(yaml.safe_dump(DEFAULTS))
    node = data
    for k in where:
        node = node[k]
    if key in node:
        return
    node[key] = 1
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    got = _check(path)
    assert isinstance(got, SettingsError) and "unknown key" in str(got)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                      st.lists(st.sampled_from(["analog:", "  margin_db: 3", "mqtt: [", "- 1", "  :", "&a x",
                                                "*a", "!!binary QQ==", "? x", "version: 2", "\t", "{", "}"]),
                               max_size=8).map("\n".join)))
def test_arbitrary_documents_never_raise_anything_but_settings_error(tmp_path, text):
    path = tmp_path / "t.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check(path)


def test_gate_node_config_check_exits_2_on_invalid_files(tmp_path):
    files = {"range.yaml": "analog:\n  margin_db: 1000\n", "key.yaml": "mqtt:\n  brokr: x\n",
}
    for name, text in files.items():
        p = tmp_path / name
        p.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "gate.cli", "config", "check", str(p)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and f"{p}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_deeply_nested_yaml_is_a_settings_error(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("analog: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SettingsError):
        load_settings(p, env={})


def test_a_huge_integer_is_a_settings_error(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("analog:\n  margin_db: " + "9" * 5000 + "\n")
    with pytest.raises(SettingsError):
        load_settings(p, env={})


def test_a_yaml_alias_bomb_is_checked_quickly(tmp_path):
    levels = "abcdefg"
    text = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n" for p, c in zip(levels, levels[1:], strict=False))
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    try:
        proc = subprocess.run([sys.executable, "-m", "gate.cli", "config", "check", str(path)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("gate-node config check did not finish within 10 s") from None
    assert proc.returncode == 2
