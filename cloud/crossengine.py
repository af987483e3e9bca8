"""Cross-engine evaluation set: speakers of a TTS engine the models never trained on (flite), the human
speech prompts and the music-on-hold of the asterisk sound packages, in long labelled scenes.

Evaluation only. The flite voices and the asterisk sounds may never choose a threshold, an epoch, a
recipe setting or a model, so no training code imports this module (tests/test_crossengine.py checks).
Everything random comes from the seed: the same seed renders the same speech and builds the same scenes.

Scenes (``KINDS``): ``music`` (music-on-hold under the talk), ``noise`` (the project's generated noises,
a new one every minute) and ``talk`` (babble and twice the other talk). Each wake phrase is followed by a
command, at about 60 per hour, and gets an SNR drawn from 0-30 dB, measured over its speech against the
background at its place (``Scene.keyword_snr_db``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from cloud.train.corpus import SpeechRender, load_renders, random_sentence, save_renders
from cloud.train.scenes import Scene
from gate_core import metrics
from gate_core.audio import float_to_int16
from gate_core.errors import GateError
from gate_core.vocabulary import COMMANDS
from sensors.scenes import Slots, blocks, overlay
from sensors.synth import augment, confusables, noise
from sensors.synth.tts import trim_silence
from sensors.wavfile import resample

log = logging.getLogger(__name__)
SR = 16_000
ENGINE = "flite"
VOICES = ("kal16", "awb", "rms", "slt", "kal")   # kal is the 8 kHz diphone voice; awb_time only tells the time
STRETCHES = (0.85, 1.0, 1.2)                    # flite duration_stretch: faster, as built, slower
HUMAN_SPEECH = Path("/usr/share/asterisk/sounds/en_US_f_Allison")  # asterisk-core-sounds-en-wav, 8 kHz
MUSIC = Path("/usr/share/asterisk/moh")                           # asterisk-moh-opsound-wav, 8 kHz
HUMAN_MAX_S = 15.0
KINDS = ("music", "noise", "talk")
SNR_DB = (0.0, 30.0)
SNR_BANDS = ((0.0, 10.0), (10.0, 20.0), (20.0, 30.0))
CHUNK_S = 60
# Background RMS per minute, dBFS: low enough that a phrase at 30 dB SNR rarely clips.
BACKGROUND_DB = (-54.0, -42.0)
NOISES = ("quiet_home", "noisy_kitchen", "pink", "brown", "fan", "hum")
TIMEOUT_S = 30.0


class CrossEngineError(GateError):
    """flite or an asterisk sound package that is missing or fails."""

    code = "crossengine"


@dataclass(frozen=True, slots=True)
class FliteUtterance:
    label: str      # the render's kind, or command:<name> (SpeechRender.label)
    text: str
    voice: str      # a flite voice name (VOICES)
    stretch: float  # flite duration_stretch

    @property
    def voice_id(self) -> str:
        return f"{ENGINE}:{self.voice}"


def _rng(seed: int, step: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, "crossengine:" + step))])


def near_misses(phrase: str) -> list[str]:
    """The confusables the training corpus draws from (the same generator and the same filter):
    edits that keep the first word, the last word alone, the phrase without it, and its start."""
    words = phrase.split()
    near = [c.text for c in confusables.generate(phrase, n=120)
            if len(words) == 1 or c.text.split()[0] == words[0] or len(c.text.split()) == 1]
    near = near or [words[-1]]
    return near + ([words[-1], " ".join(words[:-1]), f"{words[0]} {words[-1][:3]}"] if len(words) > 1 else [])


def plan(phrase: str, *, seed: int, n_pos: int = 200, n_conf: int = 100, n_speech: int = 200,
         n_cmd: int = 150, voices: Sequence[str] = VOICES,
         stretches: Sequence[float] = STRETCHES) -> list[FliteUtterance]:
    """What flite says, in which voice and how fast: every draw made here, from ``seed``."""
    rng = _rng(seed, "plan")
    near = near_misses(phrase)
    cmds = [(c.name, p) for c in COMMANDS for p in c.phrases]

    def utt(label: str, text: str) -> FliteUtterance:
        return FliteUtterance(label, text, voices[int(rng.integers(len(voices)))],
                              float(stretches[int(rng.integers(len(stretches)))]))

    out = [utt("positive", phrase) for _ in range(n_pos)]
    out += [utt("confusable", near[int(rng.integers(len(near)))]) for _ in range(n_conf)]
    out += [utt("speech", random_sentence(rng)) for _ in range(n_speech)]
    for _ in range(n_cmd):
        name, p = cmds[int(rng.integers(len(cmds)))]
        out.append(utt(f"command:{name}", p))
    return out


@cache
def flite_version() -> str:
    try:
        r = subprocess.run(["flite", "--version"], capture_output=True, timeout=TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise CrossEngineError("flite is not installed (apt-get install flite; deploy/debian-packages.txt)",
                               code="flite_missing") from None
    return r.stdout.decode(errors="replace").strip().splitlines()[-1]


def render(u: FliteUtterance) -> np.ndarray:
    """``u`` spoken by flite as float32 mono at 16 kHz, silence trimmed."""
    flite_version()
    fd, path = tempfile.mkstemp(prefix="gate-flite-", suffix=".wav")
    os.close(fd)
    try:
        r = subprocess.run(["flite", "-voice", u.voice, "--setf", f"duration_stretch={u.stretch}",
                            "-t", u.text, "-o", path], capture_output=True, timeout=TIMEOUT_S, check=False)
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace").strip().splitlines()
            raise CrossEngineError(f"{u.voice_id} failed on {u.text!r}: {err[0] if err else f'exit {r.returncode}'}")
        try:
            x, sr = sf.read(path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise CrossEngineError(f"{u.voice_id} returned unreadable audio for {u.text!r}: {exc}") from exc
    finally:
        os.unlink(path)
    return trim_silence(resample(x.mean(axis=1), int(sr), SR))


def synthesise(items: Sequence[FliteUtterance], *, workers: int = 2) -> list[SpeechRender]:
    """Every item rendered, in order (renders under 50 ms are dropped)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        audio = list(pool.map(render, items))
    return [SpeechRender.of_label(u.text, u.voice_id, u.label, a) for u, a in zip(items, audio, strict=True)
            if a.size > 800]


def cached_renders(cache_dir: Path | None, items: Sequence[FliteUtterance], *, workers: int = 2) -> list[SpeechRender]:
    """``synthesise``, kept in ``cache_dir`` keyed by the plan and the flite version, so that a rerun of
    the same plan reads the renders back and anything that changes what would be said renders anew."""
    if cache_dir is None:
        return synthesise(items, workers=workers)
    key_src = [flite_version()] + [[u.label, u.text, u.voice, u.stretch] for u in items]
    key = hashlib.sha256(json.dumps(key_src).encode()).hexdigest()[:16]
    path = cache_dir / f"renders-crossengine-{key}.pkl"
    if path.is_file():
        with path.open("rb") as f:
            return load_renders(f)
    renders = synthesise(items, workers=workers)
    save_renders(path, renders)
    return renders


def _read_8k(path: Path) -> np.ndarray:
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise CrossEngineError(f"{path}: unreadable audio: {exc}", code="audio_corrupt") from exc
    return resample(x.mean(axis=1), int(sr), SR)


def _wavs(root: Path, package: str) -> list[Path]:
    files = sorted(root.rglob("*.wav")) if root.is_dir() else []
    if not files:
        raise CrossEngineError(f"{root}: no WAV files (apt-get install {package}; deploy/debian-packages.txt)",
                               code="sounds_missing")
    return files


@cache
def human_speech(root: Path = HUMAN_SPEECH) -> tuple[np.ndarray, ...]:
    """The asterisk prompts (one woman's recorded voice, 8 kHz) at 16 kHz, silence trimmed; tones, beeps,
    the silence files and the few long tutorials (over ``HUMAN_MAX_S``) left out."""
    out = []
    for p in _wavs(root, "asterisk-core-sounds-en-wav"):
        rel = p.relative_to(root).as_posix()
        if rel.startswith("silence/") or "tone" in p.stem or "beep" in p.stem:
            continue
        x = trim_silence(_read_8k(p))
        if SR // 4 <= x.size <= HUMAN_MAX_S * SR and np.max(np.abs(x)) > 1e-3:
            out.append(x)
    return tuple(out)


@cache
def music(root: Path = MUSIC) -> np.ndarray:
    """The music-on-hold tracks at 16 kHz, one after another (float32)."""
    return np.concatenate([_read_8k(p) for p in _wavs(root, "asterisk-moh-opsound-wav")])


def _music_chunk(track: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of the tracks from a random place, wrapping around (looped), unit RMS."""
    a = int(rng.integers(track.size))
    idx = (a + np.arange(n)) % track.size
    x = track[idx]
    return (x / (augment.rms(x))).astype(np.float32)


def _noise_chunk(n: int, rng: np.random.Generator) -> np.ndarray:
    kind = NOISES[int(rng.integers(len(NOISES)))]
    if kind in ("fan", "hum"):
        x = noise.make(kind, rng, 1, n)[0][0] + 0.1 * noise.coloured_noise(n, rng, 1.0)
    else:
        x = augment.background(kind, n, rng)
    return (x / augment.rms(x)).astype(np.float32)


def background(kind: str, n: int, rng: np.random.Generator, talk: Sequence[np.ndarray]) -> np.ndarray:
    """The scene's background, a minute at a time, each minute at its own level (float32)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cross-engine scene kind {kind!r} (known: {', '.join(KINDS)})")
    out = np.zeros(n, np.float32)
    track = music() if kind == "music" else None
    for a, b in blocks(n, CHUNK_S * SR):
        if track is not None:
            x = _music_chunk(track, b - a, rng) + 0.05 * noise.coloured_noise(b - a, rng, 1.0)
        elif kind == "noise":
            x = _noise_chunk(b - a, rng)
        else:
            x = augment.background("office_babble", b - a, rng, talk)
        out[a:b] = x / augment.rms(x) * 10 ** (rng.uniform(*BACKGROUND_DB) / 20)
    return out


def _speech_rms(x: np.ndarray) -> float:
    """RMS over the speech itself: the 10 ms frames within 30 dB of the loudest (pauses left out)."""
    n = x.size // 160
    if n == 0:
        return augment.rms(x)
    e = np.mean(np.square(x[: n * 160].reshape(n, 160), dtype=np.float64), axis=1)
    return float(np.sqrt(np.mean(e[e >= e.max() * 1e-3])))


def build_scene(kind: str, *, minutes: float, rng: np.random.Generator, renders: Sequence[SpeechRender],
                human: Sequence[np.ndarray], keywords_per_hour: float = 60.0,
                confusables_per_hour: float = 20.0) -> Scene:
    """A long labelled scene of ``renders`` (flite) and ``human`` speech over a ``kind`` background.

    Wake phrases and near-misses sit in 8 s slots (sensors.scenes.Slots), so that each is heard on its
    own; every wake phrase is followed by a command 0.2-0.6 s after it, at the phrase's gain. Other talk
    (flite sentences and the human prompts, half each) fills the rest, about a third of the time (half in
    ``talk`` scenes); unlike the training scenes' talk, an utterance may start up to 1 s before the end
    and is cut there."""
    positives = [r for r in renders if r.kind == "positive"]
    commands = [r for r in renders if r.kind == "command"]
    near = [r for r in renders if r.kind == "confusable"]
    speech = [r.audio for r in renders if r.kind == "speech"]
    if not positives or not commands or not speech:
        raise CrossEngineError("cross-engine renders need wake phrases, commands and other speech")
    seconds = int(minutes * 60)
    if seconds < 30:
        raise CrossEngineError(f"minutes={minutes}: a scene needs at least 0.5 minutes")
    n = seconds * SR
    out = background(kind, n, rng, speech + list(human))
    bg = out.copy()
    events: list[tuple[str, float, float]] = []

    def put(x: np.ndarray, at: int, what: str, snr_db: float) -> tuple[int, int, float, float]:
        """``x`` at sample ``at``, scaled to ``snr_db`` over the background under it (peak at most -1 dBFS);
        returns the span, the SNR as placed, and the gain."""
        if rng.random() < 0.5:
            x = augment.reverb(x, rng)
        x = x[: n - at]  # the part the scene holds: its level is measured over that
        floor = augment.rms(bg[at:at + x.size])
        gain = floor * 10 ** (snr_db / 20) / _speech_rms(x)
        gain = min(gain, 10 ** (-1 / 20) / (float(np.max(np.abs(x))) + 1e-12))
        at, end = overlay(out, x, at, gain=gain)
        events.append((what, at / SR, end / SR))
        return at, end, 20 * np.log10(gain * _speech_rms(x) / floor), gain

    keywords: list[tuple[float, float]] = []
    voices: list[str] = []
    said: list[str] = []
    snrs: list[float] = []
    slots = Slots(seconds)
    n_kw = min(slots.starts.size, max(1, int(round(keywords_per_hour * minutes / 60))))
    for s in np.sort(rng.choice(slots.starts, size=n_kw, replace=False)):
        kw = positives[int(rng.integers(len(positives)))]
        a, b, snr, gain = put(kw.audio, int(s * SR), "positive", rng.uniform(*SNR_DB))
        keywords.append((a / SR, b / SR))
        voices.append(kw.voice_id)
        snrs.append(round(float(snr), 2))
        cmd = commands[int(rng.integers(len(commands)))]
        said.append(cmd.command)
        c0, c1 = overlay(out, cmd.audio, b + int(rng.uniform(0.2, 0.6) * SR), gain=gain)
        if c1 > c0:
            events.append(("command", c0 / SR, c1 / SR))
        slots.take(s)
    free = slots.free()
    n_conf = min(len(free), int(round(confusables_per_hour * minutes / 60))) if near else 0
    for sec in (rng.choice(free, size=n_conf, replace=False) if n_conf else []):
        put(near[int(rng.integers(len(near)))].audio, int(sec * SR), "confusable", rng.uniform(*SNR_DB))
        slots.take(sec)
    # Other talk never overlaps a wake phrase's or near-miss's slot, however long the utterance.
    gap = 3.0 if kind == "talk" else 6.0
    t = 0.0
    while t < seconds - 5:
        t += rng.exponential(gap)
        if human and rng.random() < 0.5:
            x, what = human[int(rng.integers(len(human)))], "human_speech"
        else:
            x, what = speech[int(rng.integers(len(speech)))], "speech"
        sec = int(t)
        if sec >= seconds - 1 or slots.reaches(sec, int(np.ceil(x.size / SR)) + 2):
            continue
        _, b, _, _ = put(x, int(t * SR), what, rng.uniform(*SNR_DB))
        t = b / SR
    return Scene(f"{ENGINE}_{kind}", float_to_int16(out), keywords,
                 sorted(events, key=lambda e: e[1]), voices, said, keyword_snr_db=snrs)


def build_scenes(phrase: str, *, seed: int, minutes: float, cache_dir: Path | None = None,
                 kinds: Sequence[str] = KINDS, workers: int = 2, **plan_options) -> list[Scene]:
    """The cross-engine set: one scene of ``minutes`` per kind (default 3 x 60 min), from ``seed``."""
    renders = cached_renders(cache_dir, plan(phrase, seed=seed, **plan_options), workers=workers)
    human = human_speech()
    return [build_scene(k, minutes=minutes, rng=_rng(seed, "scene:" + k), renders=renders, human=human)
            for k in kinds]


def snr_band(snr_db: float) -> str:
    for lo, hi in SNR_BANDS:
        if snr_db < hi or hi == SNR_BANDS[-1][1]:
            return f"{lo:g}-{hi:g} dB"
    raise AssertionError(snr_db)  # pragma: no cover - the last band takes everything above


def breakdown(scenes: Sequence[Scene], detections: Sequence[Sequence[float]]) -> dict:
    """Keywords, hits and miss rate per speaking voice and per SNR band (``detections[i]`` are the fire
    times on ``scenes[i]``); every wake phrase is in exactly one row of each table."""
    voices: list[dict] = []
    bands: dict[str, list[int]] = {f"{lo:g}-{hi:g} dB": [0, 0] for lo, hi in SNR_BANDS}
    for s, times in zip(scenes, detections, strict=True):
        if len(s.keyword_snr_db) != len(s.keywords):
            raise ValueError(f"scene {s.name}: {len(s.keyword_snr_db)} SNRs for {len(s.keywords)} wake phrases")
        voices.append(metrics.by_voice(times, s.keywords, s.keyword_voices))
        m = metrics.span_assign(times, s.keywords)
        hit = np.zeros(len(s.keywords), bool)
        hit[m[m >= 0]] = True
        for snr, h in zip(s.keyword_snr_db, hit, strict=True):
            k = bands[snr_band(snr)]
            k[0] += 1
            k[1] += int(h)
    return {"by_voice": metrics.voice_table(metrics.merge_breakdowns(voices)),
            "by_snr": metrics.voice_table({b: (k, h) for b, (k, h) in bands.items()})}
