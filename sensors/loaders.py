"""Labelled clip lists from the layouts people actually have:

* Google Speech Commands v2: ``ROOT/<word>/<speaker>_nohash_<n>.wav`` with
  ``validation_list.txt`` and ``testing_list.txt`` (paths relative to ROOT); every file in
  neither list is training data. ``_background_noise_/`` holds long noise recordings.
* A folder of audio files with a CSV: columns ``path`` (relative to the CSV) and ``label``,
  optionally ``split``; extra columns are kept as metadata.
* Our own ``gate-data synth`` output (``manifest.csv``, see sensors.synth.corpus).

Every loader returns :class:`Clip` records sorted by path, checks that the files exist, and
raises DataError naming the file and line of anything malformed. Audio is read only on demand
(:meth:`Clip.read`), as 16 kHz mono int16 whatever the file's rate.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sensors.synth.errors import DataError
from sensors.wavfile import read_audio

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
BACKGROUND = "_background_noise_"
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                  "valid": "validation", "dev": "validation", "test": "test", "testing": "test"}


@dataclass(frozen=True, slots=True)
class Clip:
    path: Path
    label: str
    split: str
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def read(self) -> np.ndarray:
        return read_audio(self.path)


def _split_name(value: str, where: str) -> str:
    s = _SPLIT_ALIASES.get(value.strip().lower())
    if s is None:
        raise DataError(f"{where}: unknown split {value!r} (use one of {', '.join(SPLITS)})", code="split_invalid")
    return s


def _read_list(path: Path) -> set[str]:
    if not path.exists():
        log.warning("%s missing: its files count as training data", path)
        return set()
    return {ln.strip().replace("\\", "/") for ln in path.read_text().splitlines() if ln.strip()}


def speech_commands(root: str | Path, *, include_background: bool = True) -> list[Clip]:
    """Clips of a Speech Commands (v1/v2) tree; label = folder name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a Speech Commands root)", code="dataset_missing")
    val = _read_list(root / "validation_list.txt")
    test = _read_list(root / "testing_list.txt")
    clips: list[Clip] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name == BACKGROUND and not include_background:
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            rel = f"{d.name}/{f.name}"
            split = "validation" if rel in val else "test" if rel in test else "train"
            meta = {"speaker": f.name.split("_nohash_")[0]} if "_nohash_" in f.name else {}
            clips.append(Clip(f, d.name, split, meta))
    if not clips:
        raise DataError(f"{root}: no audio files in <word>/ folders (not a Speech Commands layout)",
                        code="dataset_empty")
    known = {f"{c.path.parent.name}/{c.path.name}" for c in clips}
    for name, lst in (("validation_list.txt", val), ("testing_list.txt", test)):
        missing = sorted(lst - known)
        if missing:
            log.warning("%s: %d listed files not found (first: %s)", root / name, len(missing), missing[0])
    return clips


def folder_csv(csv_path: str | Path, *, default_split: str = "train") -> list[Clip]:
    """Clips listed in a CSV with ``path`` and ``label`` columns (paths relative to the CSV)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such CSV file", code="dataset_missing")
    base = csv_path.parent
    clips: list[Clip] = []
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in ("path", "label") if c not in cols]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} (has: {', '.join(cols) or 'none'})",
                            code="csv_invalid")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            if not (row.get("path") or "").strip() or not (row.get("label") or "").strip():
                raise DataError(f"{where}: empty path or label", code="csv_invalid")
            p = (base / row["path"].strip()).resolve()
            if not p.is_file():
                raise DataError(f"{where}: audio file {row['path']!r} not found", code="audio_missing")
            split = _split_name(row["split"], where) if (row.get("split") or "").strip() else default_split
            meta = {k: v for k, v in row.items() if k not in ("path", "label", "split") and k is not None}
            clips.append(Clip(p, row["label"].strip(), split, meta))
    if not clips:
        raise DataError(f"{csv_path}: lists no clips", code="dataset_empty")
    return sorted(clips, key=lambda c: str(c.path))


def manifest(root: str | Path) -> list[Clip]:
    """Clips of a ``gate-data synth`` corpus. A directory without manifest.csv is incomplete."""
    root = Path(root)
    m = root / "manifest.csv" if root.is_dir() else root
    if not m.is_file():
        raise DataError(f"{root}: no manifest.csv (not a complete gate-data corpus)", code="dataset_incomplete")
    clips = folder_csv(m)
    for c in clips:
        if c.split not in SPLITS:
            raise DataError(f"{m}: clip {c.path} has split {c.split!r}", code="split_invalid")
    return clips


def detect(path: str | Path) -> list[Clip]:
    """Pick the loader from the layout: a manifest, a Speech Commands tree, or a CSV file."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".csv":
        return manifest(p) if p.name == "manifest.csv" else folder_csv(p)
    if p.is_dir():
        if (p / "manifest.csv").is_file():
            return manifest(p)
        if (p / "validation_list.txt").exists() or (p / "testing_list.txt").exists():
            return speech_commands(p)
        csvs = sorted(p.glob("*.csv"))
        if len(csvs) == 1:
            return folder_csv(csvs[0])
    raise DataError(f"{p}: not a known dataset layout (Speech Commands root, folder with one CSV, or "
                    f"gate-data corpus with manifest.csv)", code="dataset_unknown")


def by_split(clips: list[Clip]) -> dict[str, list[Clip]]:
    out: dict[str, list[Clip]] = {s: [] for s in SPLITS}
    for c in clips:
        out.setdefault(c.split, []).append(c)
    return out
