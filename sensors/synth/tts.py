"""Speech engines driven through their command-line tools: espeak-ng, mbrola (through espeak-ng),
pico2wave and RHVoice (RHVoice-test). Every render comes back as float32 mono at 16 kHz with silence trimmed, so
callers can place an utterance to the sample.

The engines are found on PATH when asked (never at import) and each voice is probed once, because
espeak-ng lists every mbrola voice it knows whether or not its diphone database is installed.
RHVoice voices are read from their installed ``voice.info`` files: RHVoice-test silently falls
back to its default voice when asked for one it does not have, so a probe could not tell.

espeak voices also take random variants (``espeak:en-us+rv0042-s7``, see espeak_variants): files
generated from a seed, rendered through a linked copy of espeak-ng's data directory.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from gate_core.audio import SAMPLE_RATE
from sensors.synth import espeak_variants as randvar
from sensors.synth.errors import TTSError
from sensors.wavfile import resample

ENGINES = ("espeak", "mbrola", "pico", "rhvoice")
BINARIES = {"espeak": "espeak-ng", "mbrola": "mbrola", "pico": "pico2wave", "rhvoice": "RHVoice-test"}
INSTALL_HINT = {
    "espeak": "apt-get install espeak-ng",
    "mbrola": "apt-get install mbrola mbrola-us1 (Debian contrib/non-free: deploy/enable-debian-nonfree.sh)",
    "pico": "apt-get install libttspico-utils (Debian non-free: deploy/enable-debian-nonfree.sh)",
    "rhvoice": "apt-get install rhvoice rhvoice-english (Debian non-free: deploy/enable-debian-nonfree.sh)",
}
PICO_LANGS = ("en-US", "en-GB", "de-DE", "es-ES", "fr-FR", "it-IT")
RHVOICE_VOICE_DIRS = ("/usr/share/RHVoice/voices", "/usr/local/share/RHVoice/voices")
# RHVoice's slt, bdl and clb are CMU ARCTIC speakers, the same people flite and festival ship voices
# of (cmu_us_slt, cmu_us_bdl, cmu_us_clb). No flite or festival speaker may be trained on, so these
# voices are never listed, planned or rendered, whatever a recipe or command line asks.
RHVOICE_EXCLUDED = frozenset({"slt", "bdl", "clb"})
# RHVoice language names (voice.info) to the language tags the other engines use.
RHVOICE_LANGS = {"English": "en", "Russian": "ru", "Ukrainian": "uk", "Polish": "pl", "Brazilian-Portuguese": "pt-BR",
                 "Esperanto": "eo", "Kyrgyz": "ky", "Macedonian": "mk", "Tatar": "tt", "Albanian": "sq",
                 "Georgian": "ka", "Uzbek": "uz", "Czech": "cs", "Slovak": "sk"}
RHVOICE_PERCENT = (50, 200)  # RHVoice-test's -r and -t are percentages, clamped by it to this range
DEFAULT_RATE = 175  # espeak-ng words per minute; pico speed is scaled from it
DEFAULT_PITCH = 50  # espeak-ng 0..99
TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True, order=True)
class Voice:
    engine: str
    name: str
    variant: str = ""
    language: str = ""

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}" + (f"+{self.variant}" if self.variant else "")


@dataclass(frozen=True, slots=True)
class Utterance:
    """What to say, in which voice, how fast and how high."""

    text: str
    voice: Voice
    rate: int = DEFAULT_RATE
    pitch: int = DEFAULT_PITCH


def _known(engine: str) -> None:
    if engine not in ENGINES:
        raise TTSError(f"unknown TTS engine {engine!r} (known: {', '.join(ENGINES)})", code="engine_unknown")


def which(engine: str) -> str | None:
    """The engine's binary on PATH. mbrola runs through espeak-ng, so it needs both."""
    _known(engine)
    if engine == "mbrola" and shutil.which("espeak-ng") is None:
        return None
    return shutil.which(BINARIES[engine])


def missing_reason(engine: str) -> str:
    binary = "espeak-ng" if engine == "mbrola" and shutil.which("espeak-ng") is None else BINARIES[engine]
    return f"{engine}: {binary} not found on PATH (install: {INSTALL_HINT[engine]})"


def _run(cmd: Sequence[str], *, text_input: str | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(list(cmd), input=None if text_input is None else text_input.encode(),
                              capture_output=True, timeout=TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise TTSError(f"{cmd[0]} not found on PATH", code="tts_missing") from exc
    except subprocess.TimeoutExpired as exc:
        raise TTSError(f"{cmd[0]} timed out after {TIMEOUT_S:.0f} s", code="tts_failed") from exc


def _espeak_list(selector: str) -> list[tuple[str, str]]:
    """(language, file) rows of ``espeak-ng --voices=SELECTOR``."""
    out = _run(["espeak-ng", f"--voices={selector}"]).stdout.decode(errors="replace")
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5:
            rows.append((parts[1], parts[4]))
    return rows


@cache
def espeak_voices(language: str = "en") -> tuple[Voice, ...]:
    """espeak-ng's own (formant) voices whose language starts with ``language``; mbrola ones excluded."""
    if which("espeak") is None:
        return ()
    seen: dict[str, Voice] = {}
    for lang, file in _espeak_list(""):
        if file.startswith("mb/") or not _lang_match(lang, language):
            continue
        seen.setdefault(lang, Voice("espeak", lang, "", lang))
    return tuple(sorted(seen.values()))


@cache
def espeak_variants() -> tuple[str, ...]:
    """Variant names (``+f3``, ``+croak``...): they change formants, breathiness and pitch range."""
    if which("espeak") is None:
        return ()
    return tuple(sorted({file.split("/", 1)[1] for _, file in _espeak_list("variant") if "/" in file}))


@cache
def mbrola_voices(language: str = "en") -> tuple[Voice, ...]:
    """mbrola voices espeak-ng knows for ``language`` whose diphone database is actually installed."""
    if which("mbrola") is None:
        return ()
    found = []
    for lang, file in _espeak_list("mb"):
        name = file.split("/", 1)[-1]
        if _lang_match(lang, language) and _probe(["espeak-ng", "-v", name, "--stdout", "a"]):
            found.append(Voice("mbrola", name, "", lang))
    return tuple(sorted(found))


@cache
def pico_voices(language: str = "en") -> tuple[Voice, ...]:
    if which("pico") is None:
        return ()
    return tuple(Voice("pico", lang, "", lang) for lang in PICO_LANGS if _lang_match(lang, language))


def _voice_info(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in text.splitlines()) if _}


def rhvoice_excluded(name: str) -> bool:
    """True for RHVoice's CMU ARCTIC voices, which training never uses (RHVOICE_EXCLUDED says why)."""
    return name.lower() in RHVOICE_EXCLUDED


@cache
def rhvoice_voices(language: str = "en") -> tuple[Voice, ...]:
    """Installed RHVoice voices for ``language``, RHVOICE_EXCLUDED left out. Named by their directory."""
    if which("rhvoice") is None:
        return ()
    found: dict[str, Voice] = {}
    for d in RHVOICE_VOICE_DIRS:
        base = Path(d)
        if not base.is_dir():
            continue
        for vdir in sorted(base.iterdir()):
            info = _voice_info(vdir / "voice.info")
            if not info or rhvoice_excluded(vdir.name):
                continue
            lang = RHVOICE_LANGS.get(info.get("language", ""), info.get("language", "").lower())
            if _lang_match(lang, language):
                found.setdefault(vdir.name, Voice("rhvoice", vdir.name, "", lang))
    return tuple(sorted(found.values()))


def installed_voices(engine: str, language: str = "en") -> tuple[Voice, ...]:
    """The installed voices of one engine for ``language`` (a prefix; "" means every language)."""
    _known(engine)
    return {"espeak": espeak_voices, "mbrola": mbrola_voices, "pico": pico_voices,
            "rhvoice": rhvoice_voices}[engine](language)


def _lang_match(lang: str, prefix: str) -> bool:
    lang, prefix = lang.lower(), prefix.lower()
    return prefix in ("", "*") or lang == prefix or lang.startswith(prefix + "-")


def _probe(cmd: Sequence[str]) -> bool:
    try:
        r = _run(cmd)
    except TTSError:
        return False
    return r.returncode == 0 and len(r.stdout) > 100


@dataclass(frozen=True, slots=True)
class EngineSet:
    """The voices available for a run, and the engines that had to be skipped (with why)."""

    voices: dict[str, tuple[Voice, ...]]
    variants: tuple[str, ...]
    skipped: dict[str, str]
    random_variants: tuple[str, ...] = ()  # espeak_variants names, for training plans that ask for them

    @property
    def engines(self) -> tuple[str, ...]:
        return tuple(e for e in ENGINES if self.voices.get(e))

    def all_voices(self) -> tuple[Voice, ...]:
        return tuple(v for e in self.engines for v in self.voices[e])


def discover(engines: Iterable[str] | None = None, *, language: str = "en", strict: bool = False) -> EngineSet:
    """Find usable voices. ``engines=None`` means all, skipping missing ones; an engine named
    explicitly (or ``strict``) must be present, else TTSError names the missing binary."""
    explicit = engines is not None
    wanted = list(dict.fromkeys(engines)) if explicit else list(ENGINES)
    for e in wanted:
        _known(e)
    voices: dict[str, tuple[Voice, ...]] = {}
    skipped: dict[str, str] = {}
    for e in wanted:
        if which(e) is None:
            if explicit or strict:
                raise TTSError(f"TTS engine {missing_reason(e)}", code="tts_missing")
            skipped[e] = missing_reason(e)
            continue
        found = installed_voices(e, language)
        if not found:
            reason = f"{e}: no installed voice for language {language!r}"
            if explicit or strict:
                raise TTSError(f"TTS engine {reason}", code="voice_unknown")
            skipped[e] = reason
            continue
        voices[e] = found
    if not voices:
        raise TTSError("no TTS engine available: " + "; ".join(skipped.values()), code="tts_missing")
    return EngineSet(voices, espeak_variants() if "espeak" in voices else (), skipped)


def select_voices(es: EngineSet, wanted: Sequence[str]) -> EngineSet:
    """Keep only the voices named in ``wanted`` (``engine:name[+variant]`` or a bare name)."""
    by_id: dict[str, Voice] = {}
    for v in es.all_voices():
        by_id[v.id] = v
        by_id.setdefault(v.name, v)
    picked: dict[str, list[Voice]] = {}
    variants: list[str] = []
    for w in wanted:
        base, _, variant = w.partition("+")
        v = by_id.get(base) or by_id.get(w)
        if v is None:
            known = ", ".join(sorted(x.id for x in es.all_voices()))
            raise TTSError(f"unknown voice {w!r} (available: {known})", code="voice_unknown")
        if variant:
            if v.engine != "espeak" or (variant not in es.variants and not randvar.is_random(variant)):
                raise TTSError(f"unknown voice variant {w!r}: variants apply to espeak voices only "
                               f"(known: {', '.join(es.variants)}, or random ones like "
                               f"{randvar.name(0, 42)})", code="voice_unknown")
            variants.append(variant)
        picked.setdefault(v.engine, [])
        if v not in picked[v.engine]:
            picked[v.engine].append(v)
    return EngineSet({e: tuple(vs) for e, vs in picked.items()}, tuple(dict.fromkeys(variants)), es.skipped)


def render(u: Utterance, *, trim: bool = True) -> np.ndarray:
    """Synthesise ``u`` as float32 mono at 16 kHz. Raises TTSError naming the engine and voice."""
    text = " ".join(u.text.split())
    if not text:
        raise TTSError("empty text to synthesise", code="text_empty")
    v = u.voice
    _known(v.engine)
    if v.engine in ("espeak", "mbrola"):
        name = v.name + (f"+{v.variant}" if v.variant else "")
        # espeak-ng silently ignores a variant it cannot find, so a random one is written first.
        path = []
        if randvar.is_random(v.variant):
            if v.engine != "espeak":
                raise TTSError(f"{v.id}: random variants apply to espeak voices only", code="voice_unknown")
            path = ["--path", str(randvar.ensure(v.variant))]
        # Text goes on stdin so a phrase starting with '-' is never taken for an option.
        r = _run(["espeak-ng", *path, "-v", name, "-s", str(int(u.rate)), "-p", str(int(u.pitch)), "--stdout"],
                 text_input=text)
        data = r.stdout
    elif v.engine == "rhvoice":
        _check_rhvoice(v)
        # Rate and pitch from espeak's scale as for pico; RHVoice clamps both to 50..200 %.
        lo, hi = RHVOICE_PERCENT
        speed = min(hi, max(lo, int(round(100 * u.rate / DEFAULT_RATE))))
        pitch = min(hi, max(lo, int(round(100 + 1.2 * (u.pitch - DEFAULT_PITCH)))))
        r = _run(["RHVoice-test", "-p", v.name, "-r", str(speed), "-t", str(pitch), "-o", "-"], text_input=text)
        data = r.stdout
    elif v.engine == "pico":
        speed = int(round(100 * u.rate / DEFAULT_RATE))
        pitch = int(round(100 + 1.2 * (u.pitch - DEFAULT_PITCH)))
        markup = f'<speed level="{speed}"><pitch level="{pitch}">{_xml_escape(text)}</pitch></speed>'
        # pico2wave can only write to a named .wav file, not to stdout.
        fd, path = tempfile.mkstemp(prefix="gate-pico-", suffix=".wav")
        os.close(fd)
        try:
            r = _run(["pico2wave", "-l", v.name, "-w", path, markup])
            with open(path, "rb") as f:
                data = f.read()
        finally:
            os.unlink(path)
    else:  # pragma: no cover - _known() admits only the engines above
        raise AssertionError(v.engine)
    if r.returncode != 0 or len(data) <= 44:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise TTSError(f"{v.id} failed on {text!r}: {err[0] if err else f'exit {r.returncode}'}")
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise TTSError(f"{v.id} returned unreadable audio for {text!r}: {exc}") from exc
    y = resample(x.mean(axis=1), int(sr), SAMPLE_RATE)
    return trim_silence(y) if trim else y


def _check_rhvoice(v: Voice) -> None:
    if rhvoice_excluded(v.name):
        raise TTSError(f"{v.id} is excluded: a CMU ARCTIC speaker, kept out of the speech data "
                       f"(excluded: {', '.join(sorted(RHVOICE_EXCLUDED))})", code="voice_unknown")
    known = {x.name for x in rhvoice_voices("")}
    if v.name not in known:
        raise TTSError(f"unknown RHVoice voice {v.name!r} (installed: {', '.join(sorted(known)) or 'none'})",
                       code="voice_unknown")


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def trim_silence(x: np.ndarray, *, threshold_db: float = -40.0, frame: int = 160, margin: int = 160) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``threshold_db`` below the loudest frame.

    The TTS engines pad with variable silence; trimming makes the utterance span known, which is
    what lets scenario labels be sample-accurate and SNR be measured over speech only.
    """
    n = x.shape[0] // frame
    if n == 0:
        return x.astype(np.float32)
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-20)
    loud = np.nonzero(20 * np.log10(e / e.max()) > threshold_db)[0]
    if loud.size == 0:
        return x.astype(np.float32)
    a = max(0, loud[0] * frame - margin)
    b = min(x.shape[0], (loud[-1] + 1) * frame + margin)
    return np.ascontiguousarray(x[a:b], dtype=np.float32)


def speech_bounds(x: np.ndarray, *, rel_db: float = -50.0) -> tuple[int, int]:
    """[first, last + 1) of the samples within ``rel_db`` of the peak: where the speech is, to the
    sample, for labels. Falls back to the whole array for silence."""
    a = np.abs(x)
    peak = float(a.max()) if a.size else 0.0
    if peak <= 0:
        return 0, int(x.size)
    idx = np.nonzero(a >= peak * 10 ** (rel_db / 20))[0]
    return int(idx[0]), int(idx[-1]) + 1


def phonemize(texts: Sequence[str], *, voice: str = "en-us") -> list[str] | None:
    """espeak-ng's phoneme strings (its ASCII alphabet, stress marks dropped), or None without espeak.

    One process for the whole list: paragraphs (blank-line separated) come back one per line.
    """
    if which("espeak") is None or not texts:
        return None if which("espeak") is None else []
    clean = [" ".join("".join(c if c.isalnum() or c == "'" else " " for c in t).split()) or "_" for t in texts]
    r = _run(["espeak-ng", "-q", "-x", "-v", voice], text_input="\n\n".join(clean) + "\n")
    lines = [ln.strip() for ln in r.stdout.decode(errors="replace").splitlines() if ln.strip()]
    if r.returncode != 0 or len(lines) != len(clean):
        lines = []
        for t in clean:
            rr = _run(["espeak-ng", "-q", "-x", "-v", voice], text_input=t)
            lines.append(" ".join(rr.stdout.decode(errors="replace").split()))
    return [ln.replace("'", "").replace(",", "").replace("_:", "").strip() for ln in lines]
