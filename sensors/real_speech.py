"""Real human speech from the pocketsphinx 5.1.1 test data: negatives only, nobody says the wake phrase.

The FLAC files and ``MANIFEST.csv`` live in ``datasets/real_speech/`` (provenance and licences in
its README.md, rebuilt by its ``extract.py``). Every file is checked against the sha256 in the
manifest before it is decoded; a missing, altered or unreadable file raises
:class:`gate_core.errors.AudioInputError` naming the file, with the codes :mod:`sensors.wavfile` uses.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from gate_core.audio import SAMPLE_RATE
from gate_core.errors import AudioInputError

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "datasets" / "real_speech"
MANIFEST = "MANIFEST.csv"
FIELDS = ("file", "source_path", "seconds", "sha256_of_flac")


def manifest(folder: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The rows of ``MANIFEST.csv`` (file, source_path, seconds, sha256_of_flac), validated."""
    path = Path(DEFAULT_FOLDER if folder is None else folder) / MANIFEST
    if not path.is_file():
        raise AudioInputError(
            f"{path}: no such file (rebuild the folder with datasets/real_speech/extract.py)", code="audio_missing")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in FIELDS if c not in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AudioInputError(f"{path}: cannot read the manifest ({exc})", code="audio_unreadable") from exc
    if missing:
        raise AudioInputError(f"{path}: missing column(s) {', '.join(missing)}", code="audio_corrupt")
    if not rows:
        raise AudioInputError(f"{path}: lists no files", code="audio_empty")
    for line, row in enumerate(rows, start=2):
        name, sha = row["file"] or "", (row["sha256_of_flac"] or "").lower()
        if not name or Path(name).name != name or not name.endswith(".flac"):
            raise AudioInputError(f"{path}: line {line}: bad file name {name!r}", code="audio_corrupt")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise AudioInputError(f"{path}: line {line}: bad sha256 {row['sha256_of_flac']!r} for {name}",
                                  code="audio_corrupt")
        row["sha256_of_flac"] = sha
    return rows


def load(folder: str | os.PathLike | None = None) -> list[tuple[str, np.ndarray]]:
    """(file name, float32 mono 16 kHz samples in [-1, 1]) for every FLAC listed in MANIFEST.csv, in order."""
    base = Path(DEFAULT_FOLDER if folder is None else folder)
    out = []
    for row in manifest(base):
        out.append((row["file"], _read_checked(base / row["file"], row["sha256_of_flac"])))
    return out


def _read_checked(path: Path, sha256: str) -> np.ndarray:
    if not path.exists():
        raise AudioInputError(f"{path}: no such file (listed in {MANIFEST})", code="audio_missing")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AudioInputError(f"{path}: cannot open ({exc.strerror or exc})", code="audio_unreadable") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise AudioInputError(
            f"{path}: sha256 {got} does not match {MANIFEST} ({sha256}); the file is corrupt or was changed",
            code="audio_corrupt")
    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioInputError(f"{path}: not a readable audio file ({exc})", code="audio_corrupt") from exc
    if rate != SAMPLE_RATE:
        raise AudioInputError(f"{path}: sample rate is {rate} Hz, expected {SAMPLE_RATE} Hz", code="audio_rate")
    if x.shape[1] != 1:
        raise AudioInputError(f"{path}: {x.shape[1]} channels, expected mono", code="audio_corrupt")
    if x.shape[0] == 0:
        raise AudioInputError(f"{path}: contains no audio samples", code="audio_empty")
    return np.ascontiguousarray(x[:, 0])
