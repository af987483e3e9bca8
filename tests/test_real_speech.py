from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gate_core.errors import AudioInputError
from sensors import real_speech

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "datasets" / "real_speech"
EXTRACT = FOLDER / "extract.py"
# The pocketsphinx 5.1.1 sdist; CI does not have it, so the rebuild test skips there.
TARBALL = Path(os.environ.get("REAL_SPEECH_TARBALL", "/tmp/psx/ps.tar.gz"))
N_FILES = 19


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "real_speech"
    dst.mkdir()
    for p in FOLDER.iterdir():
        if p.suffix == ".flac" or p.name == "MANIFEST.csv":
            shutil.copyfile(p, dst / p.name)
    return dst


def _rewrite_manifest(folder: Path, edit) -> None:
    path = folder / "MANIFEST.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    edit(rows)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=real_speech.FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def test_loads_every_file_as_16k_float_speech():
    rows = real_speech.manifest()
    clips = real_speech.load()
    assert len(clips) == len(rows) == N_FILES
    assert [name for name, _ in clips] == [r["file"] for r in rows]
    assert sorted(p.name for p in FOLDER.glob("*.flac")) == sorted(r["file"] for r in rows)
    total = 0.0
    for (name, x), row in zip(clips, rows, strict=True):
        info = sf.info(str(FOLDER / name))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16_000, 1, "PCM_16", "FLAC"), name
        assert x.dtype == np.float32 and x.ndim == 1, name
        assert x.size / 16_000 == pytest.approx(float(row["seconds"]), abs=1e-7), name
        assert float(np.abs(x).max()) <= 1.0, name
        rms_dbfs = 10 * np.log10(float(np.mean(x.astype(np.float64) ** 2)))
        assert rms_dbfs > -40 and float(np.abs(x).max()) > 0.05, f"{name} is (nearly) silent: {rms_dbfs:.1f} dBFS"
        total += x.size / 16_000
    assert total > 20
    assert sum(p.stat().st_size for p in FOLDER.glob("*.flac")) < 2_000_000


def test_default_folder_is_the_repo_dataset():
    assert real_speech.DEFAULT_FOLDER == FOLDER


def test_corrupted_file_names_the_file(tmp_path):
    folder = _copy(tmp_path)
    victim = folder / "librivox_0890.flac"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(AudioInputError) as err:
        real_speech.load(folder)
    assert err.value.code == "audio_corrupt"
    assert str(victim) in str(err.value) and "sha256" in str(err.value)


def test_manifest_sha_mismatch_names_the_file(tmp_path):
    folder = _copy(tmp_path)

    def edit(rows):
        rows[3]["sha256_of_flac"] = "0" * 64

    _rewrite_manifest(folder, edit)
    name = real_speech.manifest(folder)[3]["file"]
    with pytest.raises(AudioInputError) as err:
        real_speech.load(folder)
    assert err.value.code == "audio_corrupt"
    assert str(folder / name) in str(err.value) and "0" * 64 in str(err.value)


def test_undecodable_file_with_matching_sha_is_reported(tmp_path):
    folder = _copy(tmp_path)
    victim = folder / "goforward.flac"
    victim.write_bytes(b"not a flac file at all")

    def edit(rows):
        for r in rows:
            if r["file"] == victim.name:
                r["sha256_of_flac"] = hashlib.sha256(victim.read_bytes()).hexdigest()

    _rewrite_manifest(folder, edit)
    with pytest.raises(AudioInputError) as err:
        real_speech.load(folder)
    assert err.value.code == "audio_corrupt" and str(victim) in str(err.value)


def test_missing_file_and_missing_manifest(tmp_path):
    folder = _copy(tmp_path)
    (folder / "chan3.flac").unlink()
    with pytest.raises(AudioInputError) as err:
        real_speech.load(folder)
    assert err.value.code == "audio_missing" and str(folder / "chan3.flac") in str(err.value)
    (folder / "MANIFEST.csv").unlink()
    with pytest.raises(AudioInputError) as err:
        real_speech.load(folder)
    assert err.value.code == "audio_missing" and str(folder / "MANIFEST.csv") in str(err.value)


def _extract(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXTRACT), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_extract_refuses_missing_or_wrong_tarball(tmp_path):
    missing = tmp_path / "pocketsphinx-5.1.1.tar.gz"
    r = _extract(missing, "--out", tmp_path / "out")
    assert r.returncode == 1 and str(missing) in r.stderr and "pip download" in r.stderr
    wrong = tmp_path / "wrong.tar.gz"
    wrong.write_bytes(b"not the sdist")
    r = _extract(wrong, "--out", tmp_path / "out")
    assert r.returncode == 1 and str(wrong) in r.stderr and "sha256" in r.stderr
    assert not (tmp_path / "out").exists()


def test_extract_rebuilds_the_folder_byte_identically(tmp_path):
    if not TARBALL.is_file():
        pytest.skip(f"{TARBALL} not present (set REAL_SPEECH_TARBALL to the pocketsphinx-5.1.1 sdist to run this)")
    out = tmp_path / "out"
    r = _extract(TARBALL, "--out", out)
    assert r.returncode == 0, r.stderr
    built = sorted(p.name for p in out.iterdir())
    committed = sorted(p.name for p in FOLDER.iterdir() if p.suffix == ".flac" or p.name == "MANIFEST.csv")
    assert built == committed
    for name in built:
        assert (out / name).read_bytes() == (FOLDER / name).read_bytes(), name
