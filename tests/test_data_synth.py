from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from data_helpers import empty_path_dir, needs_espeak, no_partials, tree_digest

from sensors import datacli, loaders
from sensors.synth import corpus, tts
from sensors.synth.corpus import MANIFEST_FIELDS, SynthConfig, synth

pytestmark = needs_espeak


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    rc = datacli.main(["synth", "--phrase", "hey jarvis", "--out", str(out), "--n", "80", "--seed", "11", "--quiet"])
    assert rc == 0
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_manifest_describes_every_clip(small):
    rows = _rows(small)
    assert len(rows) == 80
    assert tuple(rows[0]) == MANIFEST_FIELDS
    counts = {lab: sum(r["label"] == lab for r in rows) for lab in corpus.LABELS}
    assert counts == corpus.label_counts(80, SynthConfig(phrase="x").fractions)
    files = {str(p.relative_to(small)) for p in (small / "clips").rglob("*.wav")}
    assert files == {r["path"] for r in rows}
    for r in rows:
        assert r["split"] in corpus.SPLITS
        info = json.loads(r["augmentation"])
        x, sr = sf.read(small / r["path"], dtype="int16")
        assert sr == 16_000 and x.shape == (16_000,) and np.abs(x).max() > 0
        if r["label"] == "noise":
            assert r["text"] == "" and r["engine"] == "" and r["snr_db"] == ""
            continue
        assert r["engine"] in tts.ENGINES and r["voice"].startswith(r["engine"] + ":")
        assert r["text"]
        if r["label"] == "wake":
            assert r["text"] == "hey jarvis"
            a, e = info["speech_s"]
            assert 0 <= a < e <= 1.0  # the whole keyword is inside the clip
        else:
            assert "hey jarvis" not in f" {r['text']} "
        if r["snr_db"]:
            assert float(r["snr_db"]) == info["snr_db"]
            assert info["noise"]["kind"] == r["noise"]
    # Every render's clips share its split: no voice leaks from train into test.
    by_source: dict[str, set[str]] = {}
    for r in rows:
        if r["source"]:
            by_source.setdefault(r["source"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_source.values())
    summary = json.loads((small / "synth.json").read_text())
    assert summary["clips"] == 80 and summary["engines"]


def test_manifest_loader_reads_the_corpus(small):
    clips = loaders.detect(small)
    assert len(clips) == 80 and {c.label for c in clips} == set(corpus.LABELS)
    assert clips[0].read().dtype == np.int16


def test_same_seed_is_byte_identical_whatever_the_worker_count(small, tmp_path):
    again = tmp_path / "again"
    rc = datacli.main(["synth", "--out", str(again), "--n", "80", "--seed", "11", "--workers", "1", "--quiet"])
    assert rc == 0
    assert tree_digest(again) == tree_digest(small)


def test_other_seed_differs(small, tmp_path):
    other = tmp_path / "other"
    assert datacli.main(["synth", "--out", str(other), "--n", "80", "--seed", "12", "--quiet"]) == 0
    assert tree_digest(other) != tree_digest(small)


def test_user_negatives_and_voice_selection(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# my negatives\nbanana split\nhey jarvis please\n\nhay jarvis\n")
    out = tmp_path / "c"
    rc = datacli.main(["synth", "--out", str(out), "--n", "40", "--seed", "1", "--quiet",
                       "--voices", "espeak:en-us+f3,espeak:en-gb", "--negatives", str(words)])
    assert rc == 0
    rows = _rows(out)
    allowed = {"espeak:en-us+f3", "espeak:en-gb", "espeak:en-us", "espeak:en-gb+f3"}
    assert {r["voice"] for r in rows if r["voice"]} <= allowed
    texts = {r["text"] for r in rows}
    # "hey jarvis please" contains the phrase, "hay jarvis" sounds like it: neither is a negative.
    assert "hey jarvis please" not in texts and "hay jarvis" not in texts


def _assert_nothing_complete(out: Path) -> None:
    assert not (out / "manifest.csv").exists()
    assert no_partials(out.parent)


@pytest.mark.parametrize("argv, needle", [
    (["--phrase", "  "], "wake phrase is empty"),
    (["--engines", "espeak,festival"], "unknown TTS engine 'festival'"),
    (["--voices", "espeak:xx-yy"], "unknown voice 'espeak:xx-yy'"),
    (["--voices", "mbrola:mb-us1+f3"], "variant"),
    (["--n", "0"], "--n: 0 must be >= 1"),
    (["--negatives", "/nonexistent/words.txt"], "/nonexistent/words.txt"),
])
def test_bad_input_is_one_clear_line_and_no_output(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    rc = datacli.main(["synth", "--out", str(out), "--n", "10", "--quiet", *argv] if "--n" not in argv
                      else ["synth", "--out", str(out), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    _assert_nothing_complete(out)


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = datacli.main(["synth", "--out", str(blocker / "corpus"), "--n", "10", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{blocker} is not a directory" in err


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert datacli.main(["synth", "--out", str(out), "--n", "10", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()


def test_missing_tts_binaries_error_names_them(tmp_path, capsys, monkeypatch):
    for f in (tts.espeak_voices, tts.mbrola_voices, tts.pico_voices, tts.espeak_variants):
        f.cache_clear()
    monkeypatch.setenv("PATH", empty_path_dir(tmp_path))
    out = tmp_path / "out"
    rc = datacli.main(["synth", "--out", str(out), "--n", "10", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "espeak-ng not found on PATH" in err and "pico2wave not found" in err
    rc = datacli.main(["synth", "--out", str(out), "--n", "10", "--quiet", "--engines", "pico"])
    assert rc == 2 and "TTS engine pico: pico2wave not found on PATH" in capsys.readouterr().err
    _assert_nothing_complete(out)
    for f in (tts.espeak_voices, tts.mbrola_voices, tts.pico_voices, tts.espeak_variants):
        f.cache_clear()


def test_a_missing_engine_is_skipped_and_reported(tmp_path, monkeypatch, capsys, caplog):
    """With only espeak-ng on PATH, pico is skipped with a message saying so; the run completes."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink("/usr/bin/espeak-ng", bindir / "espeak-ng")
    monkeypatch.setenv("PATH", str(bindir))
    for f in (tts.espeak_voices, tts.mbrola_voices, tts.pico_voices, tts.espeak_variants):
        f.cache_clear()
    out = tmp_path / "out"
    rc = datacli.main(["synth", "--out", str(out), "--n", "20", "--quiet"])
    cap = capsys.readouterr()
    for f in (tts.espeak_voices, tts.mbrola_voices, tts.pico_voices, tts.espeak_variants):
        f.cache_clear()
    assert rc == 0
    assert "TTS engine skipped: pico: pico2wave not found on PATH" in cap.err + caplog.text
    assert "skipped: " in cap.out
    summary = json.loads((out / "synth.json").read_text())
    assert "pico" in summary["engines_skipped"] and "pico" not in summary["engines"]


def test_a_failure_midway_leaves_no_complete_looking_output(tmp_path, monkeypatch):
    out = tmp_path / "out"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(corpus, "write_manifest", boom)
    with pytest.raises(RuntimeError):
        synth(SynthConfig(phrase="hey jarvis", n=12, workers=1), out)
    assert not out.exists() and no_partials(tmp_path)


def test_sigterm_midway_removes_the_staging_directory(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sensors.datacli", "synth", "--out", str(out), "--n", "20000",
                             "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(".partial-" in p.name for p in tmp_path.iterdir()):  # wait until it is writing
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; no output was completed" in err
    assert not out.exists() and no_partials(tmp_path)
