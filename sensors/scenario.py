"""``gate-data scenario``: long 16 kHz streams with keywords at known, sample-exact times.

A recipe (YAML, :class:`ScenarioRecipe`) describes three layers:
  * the **bed**: stationary noise (pink, hum, fan...) for the whole stream, plus a white
    self-noise floor that is always there;
  * **ambient** events: non-stationary noise (music, TV-like speech, babble, clicks) on their
    own timeline, free to overlap the foreground;
  * **foreground** events, never overlapping each other: "wake word + command", the wake word
    alone, commands alone, confusables, other speech, and silence stretches (where bed and
    ambient duck away, leaving the floor).

Foreground speech is scaled to its SNR against the background actually present under it. The
stream is rendered block by block in two passes, so memory stays bounded for hours of audio:
pass 1 regenerates the background only to measure its power under each labelled span, pass 2
regenerates it identically (same seeds) and adds the scaled speech. Labels go to ``labels.csv``
(see LABEL_FIELDS), written last. A speech span runs from the first to the last sample of the
dry utterance within 50 dB of its peak (sample-exact); reverb tails ring on past ``end_s``.
Blocks and the mixing of every sound into them are sensors/scenes.py's, which the training
pipeline's in-memory scenes (cloud/train/scenes.py) are built with too.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import soundfile as sf
from pydantic import Field, field_validator
from scipy import signal

from gate_core.audio import SAMPLE_RATE, float_to_int16
from gate_core.cliutil import read_json
from gate_core.errors import AudioInputError
from gate_core.strict import Strict
from gate_core.vocabulary import WAKE_PHRASE, command_phrases, normalise, wake_phrase
from sensors.scenes import blocks, overlap, overlay
from sensors.synth import confusables, noise, rooms, tts
from sensors.synth.augment import fft_convolve_rows
from sensors.synth.errors import RecipeError
from sensors.synth.recipe_io import IntRange, Range, load_model
from sensors.synth.staging import check_output, staged
from sensors.synth.words import COMMON_WORDS, PHRASES, default_negatives

log = logging.getLogger(__name__)

LABELS = ("wake", "command", "wake_command", "confusable", "speech", "noise", "silence")
LABEL_FIELDS = ("start_s", "end_s", "label", "kind", "text", "snr_db", "level_dbfs", "start_sample",
                "end_sample", "voice", "event")
BLOCK_S = 30
MAX_DURATION_S = 24 * 3600


class TTSSettings(Strict):
    engines: list[Literal["espeak", "mbrola", "pico", "rhvoice"]] | None = None
    voices: list[str] | None = None
    language: str = "en"
    rate: IntRange = (140, 200)
    pitch: IntRange = (30, 70)
    p_variant: Annotated[float, Field(ge=0, le=1)] = 0.5


class RoomSettings(Strict):
    p_reverb: Annotated[float, Field(ge=0, le=1)] = 0.5
    rt60_s: Range = (0.2, 0.6)

    @field_validator("rt60_s")
    @classmethod
    def _rt(cls, v: Range) -> Range:
        if v[0] <= 0.05:
            raise ValueError("must be above 0.05 s")
        return v


class BedLayer(Strict):
    kind: Literal["white", "pink", "brown", "hum", "fan"]
    level_dbfs: Annotated[float, Field(le=0, ge=-120)]


class Ambient(Strict):
    kind: Literal["music", "tv", "babble", "clicks", "white", "pink", "brown", "hum", "fan"]
    rate_per_hour: Annotated[float, Field(ge=0)] = 0.0
    count: Annotated[int, Field(ge=0)] | None = None
    duration_s: Range = (10.0, 60.0)
    level_dbfs: Range = (-40.0, -30.0)

    @field_validator("duration_s")
    @classmethod
    def _dur(cls, v: Range) -> Range:
        if v[0] <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("level_dbfs")
    @classmethod
    def _level(cls, v: Range) -> Range:
        if v[1] > 0:
            raise ValueError("must be <= 0 dBFS")
        return v


class Event(Strict):
    kind: Literal["wake_command", "wake", "command", "confusable", "speech", "silence"]
    rate_per_hour: Annotated[float, Field(ge=0)] = 0.0
    count: Annotated[int, Field(ge=0)] | None = None
    snr_db: Range = (0.0, 20.0)
    snr_choices: list[float] | None = None
    duration_s: Range = (2.0, 8.0)   # silence only
    pause_s: Range = (0.15, 0.5)     # wake_command: between the wake word and the command

    @field_validator("snr_choices")
    @classmethod
    def _choices(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not v:
            raise ValueError("must not be empty (omit it to use snr_db)")
        return v

    @field_validator("duration_s", "pause_s")
    @classmethod
    def _positive(cls, v: Range) -> Range:
        if v[0] < 0:
            raise ValueError("must not be negative")
        return v


class ScenarioRecipe(Strict):
    name: str
    description: str = ""
    seed: int = 0
    duration_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S)]
    wake_phrase: str = WAKE_PHRASE
    format: Literal["flac", "wav"] = "flac"
    floor_dbfs: Annotated[float, Field(le=-30, ge=-120)] = -80.0
    min_gap_s: Annotated[float, Field(ge=0)] = 0.5
    tts: TTSSettings = TTSSettings()
    room: RoomSettings = RoomSettings()
    bed: list[BedLayer] = []
    ambient: list[Ambient] = []
    events: list[Event] = []
    negatives: list[str] = []
    n_confusables: Annotated[int, Field(ge=1)] = 30

    @field_validator("wake_phrase")
    @classmethod
    def _phrase(cls, v: str) -> str:
        return wake_phrase(v)

    @property
    def n_samples(self) -> int:
        return int(round(self.duration_s * SAMPLE_RATE))


def load_recipe(path: Path) -> ScenarioRecipe:
    return load_model(Path(path), ScenarioRecipe)


# --- planning -------------------------------------------------------------------------------

@dataclass(slots=True)
class Span:
    label: str
    kind: str
    text: str
    a: int                       # absolute sample index, set at placement
    b: int
    voice: str = ""
    event: int = -1
    snr_db: float | None = None
    level_dbfs: float | None = None
    bg_energy: float = 0.0       # pass 1: background energy under [a, b)


@dataclass(slots=True)
class Foreground:
    kind: str
    audio: np.ndarray            # speech (with its reverb tail), or zeros for silence
    parts: list[tuple[str, str, int, int]]   # (label, text, start, end) relative to audio[0]
    voice: str
    snr_db: float
    start: int = 0
    gain: float = 0.0
    spans: list[Span] = field(default_factory=list)


@dataclass(slots=True)
class AmbientEvent:
    index: int
    spec: Ambient
    start: int
    length: int
    level_dbfs: float


def _snr(e: Event, rng: np.random.Generator) -> float:
    if e.snr_choices:
        return float(e.snr_choices[int(rng.integers(len(e.snr_choices)))])
    return float(rng.uniform(*e.snr_db))


def _count(rate: float, count: int | None, duration_s: float) -> int:
    return count if count is not None else int(round(rate * duration_s / 3600))


class Speaker:
    """Draws voices and renders text, caching renders (a scene repeats its commands)."""

    def __init__(self, recipe: ScenarioRecipe, es: tts.EngineSet) -> None:
        self.r, self.es = recipe, es
        self.voices = es.all_voices()
        self._cache: dict[tts.Utterance, np.ndarray] = {}

    def utterance(self, text: str, rng: np.random.Generator, voice: tts.Voice | None = None) -> tts.Utterance:
        t = self.r.tts
        if voice is None:
            voice = self.voices[int(rng.integers(len(self.voices)))]
            if voice.engine == "espeak" and self.es.variants and rng.random() < t.p_variant:
                voice = tts.Voice(voice.engine, voice.name, str(rng.choice(self.es.variants)), voice.language)
        return tts.Utterance(text, voice, int(rng.integers(t.rate[0], t.rate[1] + 1)),
                             int(rng.integers(t.pitch[0], t.pitch[1] + 1)))

    def say(self, u: tts.Utterance) -> np.ndarray:
        if u not in self._cache:
            self._cache[u] = tts.render(u)
        return self._cache[u]


def _reverb(x: np.ndarray, rng: np.random.Generator, room: RoomSettings) -> np.ndarray:
    if rng.random() >= room.p_reverb:
        return x
    h = rooms.rir(rooms.random_room(rng, rt60_s=room.rt60_s), rng)
    padded = np.concatenate([x, np.zeros(h.size, np.float32)])
    return fft_convolve_rows(padded[None, :], h[None, :])[0]


def plan_foreground(recipe: ScenarioRecipe, speaker: Speaker) -> list[Foreground]:
    rng = np.random.default_rng([recipe.seed, 10])
    kinds: list[tuple[Event, int]] = []
    for i, e in enumerate(recipe.events):
        kinds += [(e, i)] * _count(e.rate_per_hour, e.count, recipe.duration_s)
    order = rng.permutation(len(kinds))
    phrase = recipe.wake_phrase
    commands = list(command_phrases())
    confs = [c.text for c in confusables.generate(phrase, recipe.n_confusables)]
    pool = [normalise(x) for x in recipe.negatives] + list(PHRASES) + list(default_negatives())
    others = [t for t in dict.fromkeys(pool) if t and f" {phrase} " not in f" {t} "]
    out: list[Foreground] = []
    for k in order:
        e, _ = kinds[k]
        if e.kind == "silence":
            n = int(rng.uniform(*e.duration_s) * SAMPLE_RATE)
            out.append(Foreground("silence", np.zeros(n, np.float32), [("silence", "", 0, n)], "", math.nan))
            continue
        snr = _snr(e, rng)
        if e.kind == "wake_command":
            u = speaker.utterance(phrase, rng)
            cmd = commands[int(rng.integers(len(commands)))]
            w = speaker.say(u)
            c = speaker.say(speaker.utterance(cmd, rng, voice=u.voice))  # one speaker says both
            gap = int(rng.uniform(*e.pause_s) * SAMPLE_RATE)
            dry = np.concatenate([w, np.zeros(gap, np.float32), c])
            (w0, w1), (c0, c1) = tts.speech_bounds(w), tts.speech_bounds(c)
            off = w.size + gap
            parts = [("wake_command", f"{phrase}, {cmd}", w0, off + c1), ("wake", phrase, w0, w1),
                     ("command", cmd, off + c0, off + c1)]
        else:
            text = {"wake": lambda: phrase, "command": lambda: commands[int(rng.integers(len(commands)))],
                    "confusable": lambda: confs[int(rng.integers(len(confs)))],
                    "speech": lambda: others[int(rng.integers(len(others)))]}[e.kind]()
            u = speaker.utterance(text, rng)
            dry = speaker.say(u)
            parts = [(e.kind, text, *tts.speech_bounds(dry))]
        out.append(Foreground(e.kind, _reverb(dry, rng, recipe.room), parts, u.voice.id, snr))
    return out


def place(recipe: ScenarioRecipe, fg: list[Foreground]) -> None:
    """Spread the foreground over the stream with random gaps of at least ``min_gap_s``."""
    rng = np.random.default_rng([recipe.seed, 11])
    total = recipe.n_samples
    busy = sum(f.audio.size for f in fg)
    min_gap = int(recipe.min_gap_s * SAMPLE_RATE)
    free = total - busy - (len(fg) + 1) * min_gap
    if free < 0:
        raise RecipeError(
            f"recipe {recipe.name!r}: the events need {busy / SAMPLE_RATE + (len(fg) + 1) * recipe.min_gap_s:.1f} s "
            f"but duration_s is {recipe.duration_s:g}; lower the event rates or raise duration_s",
            code="recipe_overfull")
    w = rng.dirichlet(np.ones(len(fg) + 1)) if fg else np.ones(1)
    extra = np.floor(np.cumsum(w) * free).astype(np.int64)
    gaps = np.diff(np.concatenate([[0], extra])) + min_gap
    pos = 0
    for i, f in enumerate(fg):
        pos += int(gaps[i])
        f.start = pos
        # kind is the event a span belongs to: a "wake" span of kind wake_command is followed by a command.
        f.spans = [Span(lab, f.kind, text, pos + a, pos + b, f.voice, i, None if f.kind == "silence" else f.snr_db)
                   for lab, text, a, b in f.parts]
        pos += f.audio.size


def plan_ambient(recipe: ScenarioRecipe) -> list[AmbientEvent]:
    rng = np.random.default_rng([recipe.seed, 12])
    out: list[AmbientEvent] = []
    for spec in recipe.ambient:
        for _ in range(_count(spec.rate_per_hour, spec.count, recipe.duration_s)):
            n = min(int(rng.uniform(*spec.duration_s) * SAMPLE_RATE), recipe.n_samples)
            start = int(rng.integers(0, recipe.n_samples - n + 1))
            out.append(AmbientEvent(len(out), spec, start, n, float(rng.uniform(*spec.level_dbfs))))
    return out


# --- rendering ------------------------------------------------------------------------------

class Background:
    """Bed + ambient + floor, reproducible block by block: each pass builds a fresh instance."""

    def __init__(self, recipe: ScenarioRecipe, ambient: list[AmbientEvent], silences: list[tuple[int, int]],
                 speech_pool: list[np.ndarray]) -> None:
        self.r = recipe
        self.beds = [(noise.NoiseStream(b.kind, np.random.default_rng([recipe.seed, 30, i])), 10 ** (b.level_dbfs / 20))
                     for i, b in enumerate(recipe.bed)]
        self.floor = noise.NoiseStream("white", np.random.default_rng([recipe.seed, 31]))
        self.floor_amp = 10 ** (recipe.floor_dbfs / 20)
        self.ambient = ambient
        self.silences = silences
        self.speech_pool = speech_pool
        self._cache: dict[int, np.ndarray] = {}

    def block(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(ducked background, floor) for samples [a, b)."""
        n = b - a
        x = np.zeros(n, np.float64)
        for stream, amp in self.beds:
            x += amp * stream.read(n)[0]
        for ev in self.ambient:
            if ev.start < b and ev.start + ev.length > a:
                overlay(x, self._render(ev), ev.start, offset=a)
            elif ev.start + ev.length <= a:
                self._cache.pop(ev.index, None)
        x *= self._duck(a, b)
        return x, self.floor_amp * self.floor.read(n)[0].astype(np.float64)

    def _duck(self, a: int, b: int) -> np.ndarray:
        env = np.ones(b - a)
        ramp = int(0.05 * SAMPLE_RATE)  # 50 ms fades: no clicks at the edges of a silence
        for s0, s1 in self.silences:
            if s0 - ramp < b and s1 + ramp > a:
                t = np.arange(a, b)
                d = np.minimum(np.clip((s0 - t) / ramp, 0, 1) + np.clip((t - s1) / ramp, 0, 1), 1)
                env = np.minimum(env, d)
        return env

    def _render(self, ev: AmbientEvent) -> np.ndarray:
        if ev.index in self._cache:
            return self._cache[ev.index]
        rng = np.random.default_rng([self.r.seed, 20, ev.index])
        kind, n = ev.spec.kind, ev.length
        if kind == "music":
            y = noise.music(rng, n)
        elif kind in ("tv", "babble"):
            y = self._speech_chain(rng, n, talkers=1 if kind == "tv" else int(rng.integers(4, 9)))
            if kind == "tv":  # a TV's small speaker: no bass, no top
                y = signal.sosfilt(signal.butter(4, [180, 5000], "bandpass", fs=SAMPLE_RATE, output="sos"), y)
                y = _reverb(y.astype(np.float32), rng, self.r.room)[:n]
        elif kind == "clicks":
            y = noise.clicks(rng, 1, n)[0]
        else:
            y = noise.NoiseStream(kind, rng).read(n)[0]
        y = np.asarray(y, np.float64)
        y /= max(float(np.sqrt(np.mean(y ** 2))), 1e-12)
        fade = np.minimum(1, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.2 * SAMPLE_RATE))
        y = y * fade * 10 ** (ev.level_dbfs / 20)
        self._cache[ev.index] = y
        return y

    def _speech_chain(self, rng: np.random.Generator, n: int, *, talkers: int) -> np.ndarray:
        """Talkers chaining utterances drawn from a fixed pool: TV and babble cost no TTS of their
        own, however many hours they fill."""
        return noise.chain_talkers(np.zeros(n), rng, self.speech_pool, talkers, start_s=0.5, gap_s=(0.1, 0.6))


SPEECH_POOL = 64  # utterances behind every TV and babble event of a scene


def speech_pool(recipe: ScenarioRecipe, speaker: Speaker) -> list[np.ndarray]:
    """Rendered, unit-RMS utterances of everyday sentences in random voices, for TV and babble."""
    if not any(a.kind in ("tv", "babble") for a in recipe.ambient):
        return []
    rng = np.random.default_rng([recipe.seed, 13])
    words = [w for w in COMMON_WORDS if w not in ("jervis", "travis", "harvey", "davis", "mavis", "avis")]
    texts = list(PHRASES) + [" ".join(rng.choice(words, size=int(rng.integers(4, 9)))) for _ in range(40)]
    pool = []
    for _ in range(SPEECH_POOL):
        u = speaker.say(speaker.utterance(texts[int(rng.integers(len(texts)))], rng))
        pool.append((u / max(float(np.sqrt(np.mean(u ** 2))), 1e-9)).astype(np.float32))
    return pool


@dataclass(slots=True)
class ScenarioResult:
    path: Path
    labels: list[Span]
    summary: dict[str, object]


ProgressFn = Callable[[str, int, int], None]


def render(recipe: ScenarioRecipe, out: Path, *, force: bool = False, progress: ProgressFn | None = None,
           engines: tts.EngineSet | None = None) -> ScenarioResult:
    check_output(Path(out), force=force)
    es = engines or tts.discover(recipe.tts.engines, language=recipe.tts.language)
    if recipe.tts.voices:
        es = tts.select_voices(es, recipe.tts.voices)
    for reason in es.skipped.values():
        log.warning("TTS engine skipped: %s", reason)
    speaker = Speaker(recipe, es)
    with staged(Path(out), force=force) as stage:
        fg = plan_foreground(recipe, speaker)
        place(recipe, fg)
        amb = plan_ambient(recipe)
        silences = [(f.start, f.start + f.audio.size) for f in fg if f.kind == "silence"]
        pool = speech_pool(recipe, speaker)
        spans = [s for f in fg for s in f.spans]
        N = recipe.n_samples
        block = BLOCK_S * SAMPLE_RATE

        if progress:
            progress("measure", 0, N)
        # Pass 1: background energy under every labelled span.
        bg = Background(recipe, amb, silences, pool)
        for a, b in blocks(N, block):
            x, fl = bg.block(a, b)
            total = x + fl
            for s in spans:
                lo, hi = overlap(a, b, s.a, s.b)
                if hi > lo:
                    s.bg_energy += float(np.sum(total[lo - a:hi - a] ** 2))
            if progress:
                progress("measure", b - a, N)
        for f in fg:
            if f.kind == "silence":
                continue
            main = f.spans[0]
            lo, hi = main.a - f.start, main.b - f.start
            ps = float(np.mean(f.audio[lo:hi].astype(np.float64) ** 2))
            pb = main.bg_energy / max(main.b - main.a, 1)
            f.gain = math.sqrt(pb * 10 ** (f.snr_db / 10) / max(ps, 1e-20))
            peak = float(np.max(np.abs(f.audio))) * f.gain
            if peak > 0.7:  # headroom for the background on top; SNR is then what we got
                f.gain *= 0.7 / peak
            for s in f.spans:
                seg = f.audio[s.a - f.start:s.b - f.start].astype(np.float64) * f.gain
                p_s = float(np.mean(seg ** 2))
                p_b = s.bg_energy / max(s.b - s.a, 1)
                s.snr_db = round(10 * math.log10(max(p_s, 1e-30) / max(p_b, 1e-30)), 3)
                s.level_dbfs = round(10 * math.log10(max(p_s, 1e-30)), 3)

        # Pass 2: the stream itself.
        if progress:
            progress("render", 0, N)
        bg = Background(recipe, amb, silences, pool)
        audio_name = f"stream.{recipe.format}"
        clipped = 0
        with sf.SoundFile(str(stage / audio_name), "w", SAMPLE_RATE, 1, subtype="PCM_16",
                          format=recipe.format.upper()) as snd:
            for a, b in blocks(N, block):
                x, fl = bg.block(a, b)
                y = x + fl
                for f in fg:
                    if f.kind != "silence":
                        overlay(y, f.audio, f.start, offset=a, gain=f.gain)
                clipped += int(np.count_nonzero(np.abs(y) >= 1.0))
                snd.write(float_to_int16(y))
                if progress:
                    progress("render", b - a, N)
        if clipped:
            log.warning("%d samples clipped at full scale; lower the ambient or bed levels", clipped)

        labels = spans + [Span("speech" if ev.spec.kind in ("tv", "babble") else "noise", ev.spec.kind, "",
                               ev.start, ev.start + ev.length, "", -1, None, round(ev.level_dbfs, 3))
                          for ev in amb]
        labels.sort(key=lambda s: (s.a, s.b, LABELS.index(s.label)))
        summary = {
            "recipe": json.loads(recipe.model_dump_json()), "audio": audio_name, "sample_rate": SAMPLE_RATE,
            "duration_s": N / SAMPLE_RATE, "n_samples": N, "clipped_samples": clipped,
            "events": {lab: sum(1 for s in labels if s.label == lab) for lab in LABELS},
            "engines": {e: len(es.voices[e]) for e in es.engines}, "engines_skipped": es.skipped,
        }
        (stage / "scenario.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        write_labels(stage / "labels.csv", labels)  # last: its presence marks a complete scenario
    return ScenarioResult(Path(out), labels, summary)


def _fmt_time(sample: int) -> str:
    # 1/16000 s = 62.5 us: seven decimals represent every sample time exactly.
    return f"{sample / SAMPLE_RATE:.7f}"


def write_labels(path: Path, labels: list[Span]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LABEL_FIELDS)
        for s in labels:
            w.writerow([_fmt_time(s.a), _fmt_time(s.b), s.label, s.kind, s.text,
                        "" if s.snr_db is None else s.snr_db, "" if s.level_dbfs is None else s.level_dbfs,
                        s.a, s.b, s.voice, "" if s.event < 0 else s.event])


@dataclass(frozen=True, slots=True)
class Label:
    start_s: float
    end_s: float
    label: str
    kind: str
    text: str
    snr_db: float | None
    start_sample: int
    end_sample: int


_READ_FIELDS = ("start_s", "end_s", "label", "kind", "text", "snr_db", "start_sample", "end_sample")


def read_labels(path: Path) -> list[Label]:
    """The labels of a scenario; a RecipeError naming the file, line and field of a malformed row."""
    from gate_core.cliutil import read_csv

    labels = []
    for line, r in read_csv(Path(path), _READ_FIELDS, "scenario labels file"):
        field = ""
        try:
            field = "start_s"
            start = _finite(r["start_s"])
            field = "end_s"
            end = _finite(r["end_s"])
            field = "snr_db"
            snr = _finite(r["snr_db"]) if r["snr_db"] else None
            field = "start_sample"
            a = int(r["start_sample"])
            field = "end_sample"
            b = int(r["end_sample"])
        except ValueError:
            raise RecipeError(f"{path}:{line}: {field}: not a number: {r[field]!r}", code="labels_invalid") from None
        if not 0 <= start <= end or not 0 <= a <= b:
            raise RecipeError(f"{path}:{line}: a label must have 0 <= start <= end", code="labels_invalid")
        if r["label"] not in LABELS:
            raise RecipeError(f"{path}:{line}: label: {r['label']!r} is not one of {', '.join(LABELS)}",
                              code="labels_invalid")
        labels.append(Label(start, end, r["label"], r["kind"], r["text"], snr, a, b))
    return labels


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(text)
    return v


__all__ = ["LABELS", "LABEL_FIELDS", "ScenarioRecipe", "load_recipe", "read_labels", "render", "write_labels"]


def scenario_inputs(directory: Path) -> tuple[Path, list]:
    """(audio file, labels) of a ``gate-data scenario`` directory (scenario.json + labels.csv)."""
    meta_path, labels_path = directory / "scenario.json", directory / "labels.csv"
    for p in (meta_path, labels_path):
        if not p.is_file():
            raise AudioInputError(f"{directory}: not a complete scenario (no {p.name})", code="scenario_incomplete")
    meta = read_json(meta_path, "scenario description (JSON)")
    if not isinstance(meta, dict) or not isinstance(meta.get("audio"), str) or not meta["audio"]:
        raise AudioInputError(f"{meta_path}: audio: missing or not a file name", code="scenario_invalid")
    audio = directory / meta["audio"]
    if not audio.is_file():
        raise AudioInputError(f"{meta_path}: audio: {audio} is not a file", code="scenario_incomplete")
    return audio, read_labels(labels_path)
