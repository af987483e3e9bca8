"""Synthetic speech for training and evaluation, through the data side's TTS tools (sensors.synth).

Every render is drawn from a seeded generator before any process runs, so the corpus is the same
whatever the number of workers. Voices are split once: ``eval_voices`` speak only in evaluation.

Speakers come from four engines (espeak-ng with its stock variants, mbrola through it, pico2wave and
RHVoice), from random espeak-ng variants (pseudo-speakers drawn from a seed, training only:
``with_random_variants``) and, at augmentation time, from WORLD voice transformation (cloud.train.dataset).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from gate_core.vocabulary import COMMANDS
from sensors.synth import confusables, tts
from sensors.synth import espeak_variants as randvar
from sensors.synth.errors import TTSError
from sensors.synth.tts import EngineSet, Utterance, Voice, discover, render

log = logging.getLogger(__name__)

# Everyday words for background sentences: enough variety of phones that the models meet most of
# English, without needing a text corpus on disk.
WORDS = (
    "the a and to of in is it you that he was for on are with as I his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find any new work part take get place made live "
    "where after back little only round man year came show every good me give our under name very "
    "through just form sentence great think say help low line differ turn cause much mean before move "
    "right boy old too same tell does set three want air well also play small end put home read hand "
    "port large spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth father "
    "jar service travel harvest garden jersey charge guard hey hello okay purse nervous carve marvel"
).split()


COMMAND = "command"


@dataclass(frozen=True, slots=True)
class SpeechRender:
    """One synthesised utterance. ``kind``: positive | positive_ctx | confusable | speech | command; a
    command render names its command (gate_core.vocabulary) in ``command``, no other render has one.

    A plan (``plan``) labels its utterances with one string, ``label``: the kind, or ``command:<name>``.
    Renders cached before the command had its own field were pickled as ``Render`` objects with that
    label for a kind: ``load_renders`` reads them as SpeechRenders (``__setstate__`` splits the label)."""

    text: str
    voice_id: str
    kind: str
    audio: np.ndarray  # float32, 16 kHz, silence-trimmed
    command: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == COMMAND) != (self.command is not None) or self.command == "":
            raise ValueError(f"render {self.text!r} ({self.voice_id}): kind {self.kind!r} with command "
                             f"{self.command!r}; a command render names its command and no other render does")

    @classmethod
    def of_label(cls, text: str, voice_id: str, label: str, audio: np.ndarray) -> SpeechRender:
        """A render of a plan item labelled ``label`` (a kind, or ``command:<name>``)."""
        kind, command = _split_label(label)
        return cls(text, voice_id, kind, audio, command)

    @property
    def label(self) -> str:
        """The plan's label of this render: its kind, or ``command:<name>``."""
        return f"{COMMAND}:{self.command}" if self.kind == COMMAND else self.kind

    def __setstate__(self, state) -> None:
        if len(state) == 4:  # a cached Render: (text, voice_id, label, audio)
            text, voice_id, label, audio = state
            kind, command = _split_label(label)
            state = (text, voice_id, kind, audio, command)
        for name, value in zip(("text", "voice_id", "kind", "audio", "command"), state, strict=True):
            object.__setattr__(self, name, value)


def _split_label(label: str) -> tuple[str, str | None]:
    kind, sep, command = label.partition(":")
    return (kind, command) if sep and kind == COMMAND else (label, None)


class _RenderUnpickler(pickle.Unpickler):
    """Reads renders cached by either layout: the old ``Render`` class is read as ``SpeechRender``."""

    def find_class(self, module: str, name: str):
        if (module, name) == (__name__, "Render"):
            return SpeechRender
        return super().find_class(module, name)


def load_renders(f: BinaryIO):
    """What ``pickle.dump`` wrote of renders (a list of them), old-layout ones migrated."""
    return _RenderUnpickler(f).load()


def save_renders(path: Path, renders) -> None:
    """Pickle ``renders`` to ``path`` atomically: a reader (another run on the same cache) sees the
    whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        pickle.dump(renders, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def split_voices(es: EngineSet, eval_voices: Sequence[str],
                 exclude: Sequence[str] = ()) -> tuple[list[Voice], list[Voice]]:
    """(training voices, evaluation voices); voices in ``exclude`` are in neither."""
    held, unused = set(eval_voices), set(eval_voices) | set(exclude)
    voices = list(es.all_voices())
    train = [v for v in voices if v.id not in unused]
    test = [v for v in voices if v.id in held]
    if not train:
        raise TTSError("every available voice is held out for evaluation or excluded; nothing left to train on")
    return train, test or train[:1]


def random_sentence(rng: np.random.Generator, lo: int = 3, hi: int = 12) -> str:
    n = int(rng.integers(lo, hi + 1))
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def accent_voices(specs: Sequence) -> tuple[list[tuple[Voice, str]], dict[str, str]]:
    """Resolve the recipe's accents (``voice``, respelled ``phrase``) to installed voices of any
    language. An engine or voice missing here is skipped, with the reason; a malformed id is an error."""
    found: list[tuple[Voice, str]] = []
    skipped: dict[str, str] = {}
    for a in specs:
        engine, _, name = a.voice.partition(":")
        if engine not in tts.ENGINES or not name:
            raise TTSError(f"accent voice {a.voice!r}: expected engine:name with engine one of "
                           f"{', '.join(tts.ENGINES)}", code="voice_unknown")
        if engine == "rhvoice" and tts.rhvoice_excluded(name):
            raise TTSError(f"accent voice {a.voice!r}: a CMU ARCTIC speaker, kept out of the speech data: "
                           "never used", code="voice_unknown")
        if tts.which(engine) is None:
            skipped[a.voice] = tts.missing_reason(engine)
            continue
        v = next((v for v in tts.installed_voices(engine, "") if v.name == name), None)
        if v is None:
            skipped[a.voice] = f"{engine} has no installed voice {name!r}"
            continue
        found.append((v, a.phrase))
    for vid, why in skipped.items():
        log.warning("accent voice %s skipped: %s", vid, why)
    return found, skipped


def plan(phrase: str, *, voices: Sequence[Voice], variants: Sequence[str], rng: np.random.Generator,
         n_pos: int, n_conf: int, n_speech: int, n_cmd: int, rate: tuple[int, int],
         pitch: tuple[int, int], accents: Sequence[tuple[Voice, str]] = (),
         accent_share: float = 0.0, random_variants: Sequence[str] = (),
         random_variant_share: float = 0.0) -> list[tuple[str, Utterance]]:
    """(label, utterance) pairs for a corpus: the label is the render's kind, or ``command:<name>``
    (SpeechRender.label). Espeak voices get a random variant half the time.

    ``accents`` are (voice, respelled phrase) pairs of other-language voices: ``accent_share`` of the
    wake phrases and of the other speech go to them (accented speakers, and talk in other languages).
    ``random_variant_share`` of the espeak renders speak with one of ``random_variants`` (generated
    pseudo-speakers) instead; without them the plan draws exactly what it drew before."""
    words = phrase.split()
    # Edits of the first word only ("bey jarvis") are within how people say the phrase anyway;
    # rejecting them would cost misses, so only edits that keep the first word are negatives.
    near = [c.text for c in confusables.generate(phrase, n=120)
            if len(words) == 1 or c.text.split()[0] == words[0] or len(c.text.split()) == 1]
    near = near or [words[-1]]
    # Parts of the phrase and the phrase inside other words are the hardest negatives of all.
    near += [words[-1], " ".join(words[:-1]), f"{words[0]} {words[-1][:3]}"] if len(words) > 1 else []
    cmds = [(c.name, p) for c in COMMANDS for p in c.phrases]

    def accented() -> tuple[Voice, str] | None:
        if not accents or accent_share <= 0 or rng.random() >= accent_share:
            return None  # draws nothing without accents: corpora without them are unchanged
        return accents[int(rng.integers(len(accents)))]

    def utt(text: str, v: Voice | None = None) -> Utterance:
        v = v or voices[int(rng.integers(len(voices)))]
        if (v.engine == "espeak" and random_variants and random_variant_share > 0
                and rng.random() < random_variant_share):
            v = Voice(v.engine, v.name, random_variants[int(rng.integers(len(random_variants)))], v.language)
        elif v.engine == "espeak" and variants and rng.random() < 0.5:
            v = Voice(v.engine, v.name, variants[int(rng.integers(len(variants)))], v.language)
        return Utterance(text, v, rate=int(rng.integers(rate[0], rate[1] + 1)),
                         pitch=int(rng.integers(pitch[0], pitch[1] + 1)))

    out: list[tuple[str, Utterance]] = []
    for _ in range(n_pos):
        # Sometimes inside a sentence: the wake word rarely comes alone in real speech.
        # Words before it only: the render then ends where the phrase ends, which places the label.
        if acc := accented():
            out.append(("positive", utt(acc[1], acc[0])))
        elif rng.random() < 0.8:
            out.append(("positive", utt(phrase)))
        else:
            out.append(("positive_ctx", utt(f"{random_sentence(rng, 1, 4)} {phrase}")))
    for _ in range(n_conf):
        out.append(("confusable", utt(near[int(rng.integers(len(near)))])))
    for _ in range(n_speech):
        acc = accented()
        out.append(("speech", utt(random_sentence(rng), acc[0] if acc else None)))
    for _ in range(n_cmd):
        name, p = cmds[int(rng.integers(len(cmds)))]
        out.append((f"{COMMAND}:{name}", utt(p)))
    return out


def synthesise(items: Sequence[tuple[str, Utterance]], *, workers: int = 2,
               desc: str = "synth") -> list[SpeechRender]:
    """Render every (label, utterance) item (in order); a voice that fails on one text is logged and skipped."""
    def one(item: tuple[str, Utterance]) -> SpeechRender | None:
        label, u = item
        try:
            return SpeechRender.of_label(u.text, u.voice.id, label, render(u))
        except TTSError as exc:
            log.warning("skipped: %s", exc)
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(tqdm(pool.map(one, items), total=len(items), desc=desc, unit="utt", leave=False))
    return [r for r in done if r is not None and r.audio.size > 800]


def engines(names: Sequence[str]) -> EngineSet:
    """The installed voices of the named engines (missing engines are skipped, all missing is an error)."""
    es = discover(None)
    voices = {e: v for e, v in es.voices.items() if e in names}
    if not voices:
        raise TTSError(f"none of the engines {list(names)} is available ({es.skipped})", code="tts_missing")
    return EngineSet(voices, es.variants if "espeak" in voices else (), es.skipped)


def with_random_variants(es: EngineSet, n: int, seed: int) -> EngineSet:
    """``es`` with ``n`` random espeak variants of ``seed`` written to disk and named in ``random_variants``
    (for ``plan``); unchanged when ``n`` is 0 or espeak is not among its engines (logged)."""
    if n and "espeak" not in es.engines:
        log.warning("random_variants %d skipped: espeak is not among the available engines", n)
    if not n or "espeak" not in es.engines:
        return es
    return EngineSet(es.voices, es.variants, es.skipped, randvar.write(n, seed))
