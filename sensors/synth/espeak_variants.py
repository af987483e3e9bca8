"""Random espeak-ng voice variants: thousands of pseudo-speakers drawn from a seed.

A variant file (espeak-ng's ``voices/!v/NAME``) sets the pitch base and range, the frequency, height
and width of each formant (as percentages of the language voice's), breathiness, flutter, roughness
and the spectral tone. Each random variant draws one speaker: a vocal-tract length (every formant
frequency scaled together, then jittered per formant) and a pitch register, from ranges of adult
men, adult women and children.

espeak-ng reads variants only from its data directory, so the variants live in copies of that
directory made of symbolic links (about 120, no data copied) plus the generated files, and the
render passes ``--path`` to one. espeak-ng lists at most 349 voices and variants from a data
directory, and past that renders without the variant's pitch, without a word (with 200 random
variants in one copy, 40 of them all came out at the same median F0), so each copy holds GROUP
random variants and none of the stock variants or mbrola voices: random
variants are for espeak voices only. Variant ``rv0042-s7`` is the 43rd variant of seed 7: its
file is a pure function of (seed, index), so any process can recreate it from its name alone, and
a cached render keyed by the voice id can never stand for another seed's voice.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

from sensors.synth.errors import TTSError

PREFIX = "rv"
# Bumped whenever the draws below change: the files of another generator live in another directory.
# Voice ids do not carry it, so renders cached by voice id (cloud.train.pipeline) predate a bump.
GENERATOR = 1
ENV_ROOT = "GATE_ESPEAK_VARIANTS"  # overrides the cache directory (default ~/.cache/gate/espeak-variants)
GROUP = 64  # random variants per data-directory copy
ESPEAK_LIST_LIMIT = 349  # espeak-ng's N_VOICES_LIST - 1
_NAME = re.compile(r"^rv(\d{4,})-s(\d+)$")

# (share, espeak pitch base Hz, vocal-tract factor on formant frequencies). The base is the floor
# of the intonation: a render's median F0 comes out 1.1-1.6 times above it. Adult male F0 is around
# 85-155 Hz, adult female 165-255 Hz, children's 250 Hz and above; formants of women are some 15%
# above men's and children's higher again (shorter vocal tracts).
KINDS = {
    "male": (0.45, (75.0, 130.0), (0.90, 1.03)),
    "female": (0.45, (140.0, 215.0), (1.04, 1.17)),
    "child": (0.10, (200.0, 260.0), (1.15, 1.28)),
}


def name(seed: int, index: int) -> str:
    return f"{PREFIX}{index:04d}-s{seed}"


def names(n: int, seed: int) -> tuple[str, ...]:
    """The first ``n`` variant names of ``seed``: variant i is the same whatever ``n``."""
    if n < 0 or seed < 0:
        raise TTSError(f"random variants: need n >= 0 and seed >= 0, got n={n}, seed={seed}", code="voice_unknown")
    return tuple(name(seed, i) for i in range(n))


def parse(variant: str) -> tuple[int, int] | None:
    """(seed, index) of a random variant's name, or None for any other name (stock variants)."""
    m = _NAME.match(variant)
    return (int(m.group(2)), int(m.group(1))) if m else None


def is_random(variant: str) -> bool:
    return parse(variant) is not None


def variant_text(seed: int, index: int) -> str:
    """The espeak-ng variant file of variant ``index`` of ``seed``."""
    rng = np.random.default_rng([GENERATOR, seed, index])
    kinds = list(KINDS)
    kind = kinds[int(rng.choice(len(kinds), p=[KINDS[k][0] for k in kinds]))]
    _, base_hz, vtl = KINDS[kind]
    base = rng.uniform(*base_hz)
    top = base * rng.uniform(1.2, 1.6)  # espeak's second pitch value: the top of the intonation range
    k = rng.uniform(*vtl)
    lines = ["language variant", f"name {name(seed, index)}", f"gender {'male' if kind == 'male' else 'female'}",
             "", f"pitch {round(base)} {round(top)}"]
    for n in range(9):
        # Formants 1-3 carry the vowel and speaker identity: they get the widest per-formant jitter.
        jitter = rng.uniform(0.95, 1.05) if 1 <= n <= 3 else rng.uniform(0.98, 1.02)
        height = rng.uniform(80, 120) if n <= 3 else rng.uniform(60, 130)
        width = rng.uniform(80, 140)
        lines.append(f"formant {n} {round(100 * k * jitter)} {round(height)} {round(width)}")
    if rng.random() < 0.4:  # breathy: the noise added to each formant
        b = np.sort(rng.integers(0, 6, 7))
        lines.append("breath 0 " + " ".join(str(int(x)) for x in b))
    lines.append(f"flutter {int(rng.integers(0, 41))}")
    lines.append(f"roughness {int(rng.integers(0, 5))}")
    # Spectral tilt around espeak's default (600 170 1200 135 2000 110): brighter or duller voices.
    tilt = rng.uniform(-25, 25)
    lines.append(f"tone 600 {round(170 - tilt)} 1200 {round(135 + rng.uniform(-15, 15))} 2000 {round(110 + tilt)}")
    return "\n".join(lines) + "\n"


def root() -> Path:
    base = os.environ.get(ENV_ROOT) or str(Path.home() / ".cache" / "gate" / "espeak-variants")
    return Path(base) / f"g{GENERATOR}"


@cache
def system_data() -> Path:
    """espeak-ng's own data directory, as ``espeak-ng --version`` reports it."""
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, timeout=10, check=False).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise TTSError("espeak-ng not found on PATH (random variants need it)", code="tts_missing") from exc
    m = re.search(r"Data at:\s*(\S.*)$", out.decode(errors="replace").strip(), re.M)
    if not m or not Path(m.group(1).strip()).is_dir():
        raise TTSError("espeak-ng did not report its data directory (espeak-ng --version)", code="tts_missing")
    return Path(m.group(1).strip())


@cache
def _language_voices(sysdata: Path) -> int:
    return sum(1 for p in (sysdata / "lang").rglob("*") if p.is_file())


def data_dir(seed: int, index: int, base: Path | None = None) -> Path:
    """The directory to pass as ``espeak-ng --path`` for variant ``index`` of ``seed``: links to
    espeak-ng's data with its own ``voices/!v`` for this group of GROUP variants. Built once, atomically."""
    sysdata = system_data()
    if _language_voices(sysdata) + GROUP > ESPEAK_LIST_LIMIT:
        raise TTSError(f"espeak-ng at {sysdata} has {_language_voices(sysdata)} language voices: with {GROUP} "
                       f"random variants that is over the {ESPEAK_LIST_LIMIT} voices it can list", code="tts_failed")
    tag = hashlib.sha256(str(sysdata).encode()).hexdigest()[:8]
    top = (base or root()) / f"data-{tag}" / f"s{seed}-g{index // GROUP}"
    if (top / "espeak-ng-data" / "phontab").exists():
        return top
    top.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=top.parent))
    try:
        data = tmp / "espeak-ng-data"
        (data / "voices" / "!v").mkdir(parents=True)
        for p in sysdata.iterdir():
            if p.name != "voices":
                (data / p.name).symlink_to(p)
        try:
            tmp.rename(top)
        except OSError:  # another process built it first
            if not (top / "espeak-ng-data" / "phontab").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return top


def ensure(variant: str, base: Path | None = None) -> Path:
    """Write ``variant``'s file if it is not there yet; returns the ``--path`` directory to render with."""
    parsed = parse(variant)
    if parsed is None:
        raise TTSError(f"{variant!r} is not a random variant name (expected like {name(0, 42)})",
                       code="voice_unknown")
    top = data_dir(*parsed, base)
    path = top / "espeak-ng-data" / "voices" / "!v" / variant
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(prefix=".v-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(variant_text(*parsed))
        os.replace(tmp, path)
    return top


def write(n: int, seed: int, base: Path | None = None) -> tuple[str, ...]:
    """Make sure the first ``n`` variants of ``seed`` exist on disk; their names."""
    out = names(n, seed)
    for v in out:
        ensure(v, base)
    return out
