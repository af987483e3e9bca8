#!/usr/bin/env python3
"""Rebuild datasets/real_speech/ from the pocketsphinx 5.1.1 source distribution.

    python datasets/real_speech/extract.py pocketsphinx-5.1.1.tar.gz [--out DIR]

Reads the listed test recordings straight out of the tarball (nothing is unpacked to disk and
nothing is downloaded), converts each to 16 kHz mono 16-bit FLAC and writes MANIFEST.csv. The
tarball's sha256 is checked first. With the package versions named in README.md the output is
byte-identical to the committed files. Needs only numpy, scipy and soundfile.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import sys
import tarfile
import tempfile
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

TARBALL_NAME = "pocketsphinx-5.1.1.tar.gz"
TARBALL_URL = ("https://files.pythonhosted.org/packages/61/e7/"
               "13e0e787ff467218de880310d79cba14424f13b87171ac44af0bde1e428c/pocketsphinx-5.1.1.tar.gz")
TARBALL_SHA256 = "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
FETCH_HINT = (f"fetch it with `pip download --no-deps --no-binary :all: pocketsphinx==5.1.1` "
              f"or `curl -LO {TARBALL_URL}`")

RATE = 16_000
ROOT = "pocketsphinx-5.1.1/"
# (output file, member inside the tarball, sample rate of a headerless .raw; None: read the WAV header).
# .raw files are 16-bit little-endian mono. Rates: goforward/something/dhd.2934z are decoded at
# -samprate 16000 by pocketsphinx's own tests; numbers.raw is not used by any test, its rate is
# inferred (see README.md); vad/test-audio.raw is 8 kHz (test/unit/test_vad.c, cython/test/vad_test.py).
SOURCES: list[tuple[str, str, int | None]] = [
    *[(f"librivox_{n}.flac", f"test/data/librivox/sense_and_sensibility_01_austen_64kb-{n}.wav", None)
      for n in ("0870", "0880", "0890", "0920", "0930")],
    *[(f"cards_{n}.flac", f"test/data/cards/{n}.wav", None) for n in ("001", "002", "003", "004", "005")],
    ("forever_input_2.flac", "test/data/forever/input_2_16k.wav", None),
    ("forever_input_4.flac", "test/data/forever/input_4_16k.wav", None),
    ("goforward.flac", "test/data/goforward.raw", 16_000),
    ("numbers.flac", "test/data/numbers.raw", 16_000),
    ("something.flac", "test/data/something.raw", 16_000),
    ("tidigits_dhd_2934z.flac", "test/data/tidigits/dhd.2934z.raw", 16_000),
    ("chan3.flac", "test/regression/chan3.wav", None),  # 11025 Hz; chan3.raw/.sph/.2chan.wav hold the same samples
    ("vad_leak_test.flac", "test/data/vad/leak-test.wav", None),  # 8000 Hz
    ("vad_test_audio.flac", "test/data/vad/test-audio.raw", 8_000),
]
MANIFEST_FIELDS = ("file", "source_path", "seconds", "sha256_of_flac")


class ExtractError(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_tarball(path: Path) -> None:
    if not path.exists():
        raise ExtractError(f"{path}: no such file; {FETCH_HINT}")
    if not path.is_file():
        raise ExtractError(f"{path}: not a file; {FETCH_HINT}")
    got = sha256_file(path)
    if got != TARBALL_SHA256:
        raise ExtractError(f"{path}: sha256 is {got}, expected {TARBALL_SHA256} ({TARBALL_NAME} from PyPI); "
                           f"{FETCH_HINT}")


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """Same rule as gate_core.audio.float_to_int16."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def decode(data: bytes, member: str, raw_rate: int | None) -> np.ndarray:
    """The member's audio as 16 kHz mono int16."""
    if raw_rate is not None:
        if len(data) % 2:
            raise ExtractError(f"{member}: odd byte count {len(data)} for 16-bit raw audio")
        x, rate = np.frombuffer(data, dtype="<i2").astype(np.int16), raw_rate
    else:
        try:
            y, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise ExtractError(f"{member}: not readable audio ({exc})") from exc
        if y.shape[1] != 1:
            raise ExtractError(f"{member}: {y.shape[1]} channels, expected mono")
        x = y[:, 0]
    if x.size == 0:
        raise ExtractError(f"{member}: no samples")
    if rate == RATE:
        return np.ascontiguousarray(x)
    g = gcd(int(rate), RATE)
    y = signal.resample_poly(x.astype(np.float64) / 32768.0, RATE // g, int(rate) // g)
    return float_to_int16(y)


def encode_flac(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(tarball: Path, out: Path) -> list[dict[str, str]]:
    check_tarball(tarball)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tarfile.open(tarball, "r:gz") as tar:
        for name, member, raw_rate in SOURCES:
            path_in_tar = ROOT + member
            try:
                f = tar.extractfile(path_in_tar)
            except KeyError:
                f = None
            if f is None:
                raise ExtractError(f"{tarball}: has no regular file {path_in_tar}")
            x = decode(f.read(), path_in_tar, raw_rate)
            flac = encode_flac(x)
            write_atomic(out / name, flac)
            rows.append({"file": name, "source_path": path_in_tar, "seconds": f"{x.size / RATE:.7f}",
                         "sha256_of_flac": hashlib.sha256(flac).hexdigest()})
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(out / "MANIFEST.csv", text.getvalue().encode("utf-8"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tarball", type=Path, help=f"{TARBALL_NAME} (sha256 {TARBALL_SHA256})")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="output folder (default: the folder holding this script)")
    args = ap.parse_args(argv)
    try:
        rows = build(args.tarball, args.out)
    except ExtractError as exc:
        print(f"extract.py: error: {exc}", file=sys.stderr)
        return 1
    total = sum(float(r["seconds"]) for r in rows)
    print(f"wrote {len(rows)} FLAC files ({total:.2f} s) and MANIFEST.csv to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
