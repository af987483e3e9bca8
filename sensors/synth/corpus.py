"""``gate-data synth``: a labelled corpus of augmented one-second clips from synthetic speech.

Speech synthesis is the slow part, so a few distinct utterances are rendered once (one per
voice, variant, rate, pitch and text) and each is augmented many times. Both stages run in a
process pool; every random draw comes from a generator seeded by (seed, stage, index), so the
output is byte-identical whatever the number of workers or the order jobs finish in.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, field_validator

from gate_core.audio import SAMPLE_RATE
from gate_core.strict import Strict
from gate_core.vocabulary import normalise, wake_phrase
from sensors.synth import confusables, rooms, tts
from sensors.synth.augment import AugmentConfig, RirBank, augment
from sensors.synth.errors import DataError, TTSError
from sensors.synth.recipe_io import IntRange
from sensors.synth.staging import check_output, staged
from sensors.synth.words import default_negatives

log = logging.getLogger(__name__)

LABELS = ("wake", "confusable", "speech", "noise")
SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.csv"
SUMMARY = "synth.json"
MANIFEST_FIELDS = ("path", "label", "split", "text", "engine", "voice", "rate", "pitch", "source",
                   "snr_db", "noise", "rt60_s", "band", "gain_db", "shift_s", "duration_s", "augmentation")
# Share of renders per engine for speech labels. mbrola, pico and RHVoice have few voices but sound
# far more natural than formant espeak, so they get more than their head-count. Normalised over the
# engines present, so a run without RHVoice splits exactly as before it was added.
ENGINE_WEIGHTS = {"espeak": 0.5, "mbrola": 0.35, "pico": 0.15, "rhvoice": 0.15}


class SynthConfig(Strict):
    phrase: str
    n: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    seed: int = 0
    fractions: dict[str, Annotated[float, Field(ge=0)]] = {"wake": 0.4, "confusable": 0.3, "speech": 0.2, "noise": 0.1}
    reuse: Annotated[float, Field(ge=1)] = 8.0
    engines: list[str] | None = None
    voices: list[str] | None = None
    language: str = "en"
    rate: IntRange = (140, 220)
    pitch: IntRange = (20, 80)
    n_confusables: Annotated[int, Field(ge=0)] = 40
    negatives: list[str] = []
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    batch: Annotated[int, Field(ge=1, le=4096)] = 200
    augment: AugmentConfig = AugmentConfig()

    @field_validator("phrase")
    @classmethod
    def _phrase(cls, v: str) -> str:
        return wake_phrase(v)

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        bad = set(v) - set(LABELS)
        if bad:
            raise ValueError(f"unknown label(s) {sorted(bad)} (known: {', '.join(LABELS)})")
        if sum(v.values()) <= 0:
            raise ValueError("must not all be zero")
        return v

    @field_validator("split")
    @classmethod
    def _split(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(v) - 1) > 1e-6 or min(v) < 0:
            raise ValueError("train, validation and test fractions must be >= 0 and sum to 1")
        return v

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 80 <= v[0] <= v[1] <= 450:
            raise ValueError("need 80 <= low <= high <= 450 words per minute")
        return v

    @field_validator("pitch")
    @classmethod
    def _pitch(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] <= v[1] <= 99:
            raise ValueError("need 0 <= low <= high <= 99")
        return v


@dataclass(frozen=True, slots=True)
class Render:
    index: int
    label: str
    utterance: tts.Utterance
    split: str
    max_samples: int | None  # keywords must fit whole in the clip; the rate is raised if needed


def label_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding, so the counts add up to exactly ``n``."""
    total = sum(fractions.get(lab, 0.0) for lab in LABELS)
    exact = {lab: n * fractions.get(lab, 0.0) / total for lab in LABELS}
    counts = {lab: int(math.floor(x)) for lab, x in exact.items()}
    for lab in sorted(LABELS, key=lambda k: (counts[k] - exact[k], LABELS.index(k)))[: n - sum(counts.values())]:
        counts[lab] += 1
    return counts


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) from a hash of ``parts``: the same on every machine and Python run."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64


def split_of(key: str, seed: int, split: Sequence[float]) -> str:
    u = stable_unit("split", seed, key)
    return SPLITS[0] if u < split[0] else SPLITS[1] if u < split[0] + split[1] else SPLITS[2]


def texts_for(cfg: SynthConfig) -> dict[str, list[str]]:
    phrase = cfg.phrase
    conf = [c.text for c in confusables.generate(phrase, cfg.n_confusables)] if cfg.n_confusables else []
    user = [normalise(t) for t in cfg.negatives if normalise(t)]
    speech = list(dict.fromkeys(user + list(default_negatives())))
    # A "negative" that contains the phrase (or sounds exactly like it) would teach the model to
    # ignore its own keyword.
    sounds = tts.phonemize([phrase] + speech) if speech else None
    keep = []
    for i, t in enumerate(speech):
        same_sound = sounds is not None and phrase and sounds[i + 1].replace(" ", "") == sounds[0].replace(" ", "")
        if f" {phrase} " in f" {t} " or same_sound:
            log.warning("negative %r dropped: it contains or sounds like the wake phrase", t)
            continue
        keep.append(t)
    conf_set = set(conf)
    return {"wake": [phrase], "confusable": conf, "speech": [t for t in keep if t not in conf_set]}


def plan_renders(cfg: SynthConfig, es: tts.EngineSet, counts: dict[str, int]) -> list[Render]:
    rng = np.random.default_rng([cfg.seed, 1])
    texts = texts_for(cfg)
    engines = es.engines
    w = np.array([ENGINE_WEIGHTS[e] for e in engines])
    w /= w.sum()
    voice_cycle = {e: list(es.voices[e]) for e in engines}
    for e in engines:
        rng.shuffle(voice_cycle[e])
    variants = [""] + list(es.variants)
    rng.shuffle(variants)
    used = {e: 0 for e in engines}
    n_var = 0
    renders: list[Render] = []
    clip_n = cfg.augment.n_samples - 2 * int(cfg.augment.margin_s * SAMPLE_RATE)
    for label in ("wake", "confusable", "speech"):
        if counts[label] == 0:
            continue
        pool = list(texts[label])
        if not pool:
            raise DataError(f"no {label} texts to synthesise (set its fraction to 0 or supply some)", code="text_empty")
        rng.shuffle(pool)
        n_r = max(1, math.ceil(counts[label] / cfg.reuse))
        # Every engine gets its share by largest remainder, then the order is shuffled.
        per_engine = _share(n_r, engines, w)
        order = [e for e in engines for _ in range(per_engine[e])]
        rng.shuffle(order)
        for k, e in enumerate(order):
            voice = voice_cycle[e][used[e] % len(voice_cycle[e])]
            used[e] += 1
            if e == "espeak" and variants:
                voice = tts.Voice(voice.engine, voice.name, variants[n_var % len(variants)], voice.language)
                n_var += 1
            u = tts.Utterance(pool[k % len(pool)], voice, int(rng.integers(cfg.rate[0], cfg.rate[1] + 1)),
                              int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1)))
            renders.append(Render(len(renders), label, u, split_of(voice.id, cfg.seed, cfg.split),
                                  clip_n if label == "wake" else None))
    return renders


def _share(n: int, engines: Sequence[str], w: np.ndarray) -> dict[str, int]:
    exact = n * w
    out = {e: int(x) for e, x in zip(engines, exact, strict=True)}
    rest = sorted(range(len(engines)), key=lambda i: -(exact[i] - int(exact[i])))
    for i in rest[: n - sum(out.values())]:
        out[engines[i]] += 1
    return out


def _render_one(r: Render) -> tuple[int, np.ndarray | None, int, str]:
    """Worker: synthesise, raising the rate until a keyword fits. (index, audio, rate, error)."""
    u = r.utterance
    for _ in range(4):
        try:
            x = tts.render(u)
        except TTSError as exc:
            return r.index, None, u.rate, str(exc)
        if r.max_samples is None or x.size <= r.max_samples:
            return r.index, x, u.rate, ""
        u = tts.Utterance(u.text, u.voice, min(450, int(math.ceil(u.rate * x.size / r.max_samples * 1.05))), u.pitch)
    return r.index, None, u.rate, f"{u.voice.id}: {u.text!r} does not fit the clip even at rate {u.rate}"


def _render_chunk(chunk: list[Render]) -> list[tuple[int, np.ndarray | None, int, str]]:
    return [_render_one(r) for r in chunk]


@dataclass(frozen=True, slots=True)
class Job:
    batch_index: int
    clip_ids: list[int]
    labels: list[str]
    sources: list[int]          # render index, or -1 for noise-only clips
    stage: str
    seed: int


_W: dict[str, object] = {}


def _worker_init(stage: str, cfg_json: str) -> None:
    cfg = SynthConfig.model_validate_json(cfg_json)
    work = Path(stage) / ".work"
    bank = np.load(work / "bank.npy", mmap_mode="r")
    offsets = np.load(work / "offsets.npy")
    rir_bank = np.load(work / "rirs.npy")
    rir_len = np.load(work / "rir_len.npy")
    meta = json.loads((work / "meta.json").read_text())
    rirs = RirBank([rir_bank[i, :rir_len[i]] for i in range(len(rir_len))], meta["rooms"], cfg.augment.n_samples)
    babble = [np.asarray(bank[offsets[i]:offsets[i + 1]]) for i in meta["babble"]]
    _W.update(cfg=cfg, bank=bank, offsets=offsets, rirs=rirs, babble=babble,
              renders=meta["renders"])


def _utt(i: int) -> np.ndarray:
    off = _W["offsets"]
    return np.asarray(_W["bank"][off[i]:off[i + 1]], dtype=np.float32)


def _augment_job(job: Job) -> list[dict[str, object]]:
    cfg: SynthConfig = _W["cfg"]  # type: ignore[assignment]
    renders: list[dict[str, object]] = _W["renders"]  # type: ignore[assignment]
    rng = np.random.default_rng([job.seed, 2, job.batch_index])
    utts = [_utt(s) if s >= 0 else None for s in job.sources]
    b = augment(utts, rng, cfg.augment, rirs=_W["rirs"],  # type: ignore[arg-type]
                babble_speech=_W["babble"], keep_whole=[lab == "wake" for lab in job.labels])  # type: ignore[arg-type]
    rows = []
    stage = Path(job.stage)
    for j, cid in enumerate(job.clip_ids):
        label, src, info = job.labels[j], job.sources[j], b.info[j]
        rel = f"clips/{label}/{cid:07d}.wav"
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wav_bytes(b.audio[j]))
        r = renders[src] if src >= 0 else None
        rows.append({
            "path": rel, "label": label,
            "split": r["split"] if r else split_of(f"noise-{cid}", cfg.seed, cfg.split),
            "text": r["text"] if r else "", "engine": r["engine"] if r else "", "voice": r["voice"] if r else "",
            "rate": r["rate"] if r else "", "pitch": r["pitch"] if r else "", "source": src if r else "",
            "snr_db": "" if info.get("snr_db") is None else info["snr_db"],
            "noise": info.get("noise", {}).get("kind", ""),
            "rt60_s": info["room"]["rt60_s"] if "room" in info else "",
            "band": info.get("band", {}).get("kind", ""),
            "gain_db": info["gain_db"], "shift_s": info.get("shift_s", ""),
            "duration_s": cfg.augment.clip_s, "augmentation": json.dumps(info, sort_keys=True, separators=(",", ":")),
        })
    return rows


@contextmanager
def _pool(workers: int, **kwargs: Any) -> Iterator[ProcessPoolExecutor]:
    """A process pool that, on error or interrupt, drops its queued jobs instead of running them
    all to completion first (what ``with ProcessPoolExecutor()`` would do)."""
    # fork starts workers without re-importing numpy and scipy; spawn is the portable fallback.
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, **kwargs)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# progress(stage, advanced, total): the CLI turns it into tqdm bars; the library never prints.
Progress = Callable[[str, int, int], None]


def synth(cfg: SynthConfig, out: Path, *, force: bool = False, progress: Progress | None = None,
          engines: tts.EngineSet | None = None) -> dict[str, object]:
    """Build the corpus in ``out``. Returns the summary also written to ``out/synth.json``."""
    check_output(Path(out), force=force)  # before the slow engine discovery
    es = engines or tts.discover(cfg.engines, language=cfg.language)
    if cfg.voices:
        es = tts.select_voices(es, cfg.voices)
    for reason in es.skipped.values():
        log.warning("TTS engine skipped: %s", reason)
    counts = label_counts(cfg.n, cfg.fractions)
    renders = plan_renders(cfg, es, counts)
    with staged(Path(out), force=force) as stage:
        work = stage / ".work"
        work.mkdir()
        audio: dict[int, np.ndarray] = {}
        rates: dict[int, int] = {}
        failures: list[str] = []
        if progress:
            progress("tts", 0, len(renders))
        with _pool(cfg.workers) as pool:
            chunks = [renders[i:i + 16] for i in range(0, len(renders), 16)]
            for res in pool.map(_render_chunk, chunks):
                for idx, x, rate, err in res:
                    if x is None:
                        failures.append(err)
                    else:
                        audio[idx] = x
                        rates[idx] = rate
                if progress:
                    progress("tts", len(res), len(renders))
            ok = [r for r in renders if r.index in audio]
            for f in failures[:5]:
                log.warning("render dropped: %s", f)
            for label in ("wake", "confusable", "speech"):
                if counts[label] and not any(r.label == label for r in ok):
                    raise TTSError(f"every {label} render failed; first error: {failures[0] if failures else '?'}")
            # Bank: renders concatenated in index order, so workers can map it read-only.
            order = [r.index for r in ok]
            new_index = {old: new for new, old in enumerate(order)}
            offsets = np.zeros(len(order) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([audio[i].size for i in order])
            np.save(work / "bank.npy", np.concatenate([audio[i] for i in order]).astype(np.float32))
            np.save(work / "offsets.npy", offsets)
            rng_rooms = np.random.default_rng([cfg.seed, 3])
            room_list = [rooms.random_room(rng_rooms, rt60_s=cfg.augment.rt60_s) for _ in range(cfg.augment.rooms)]
            rir_list = [rooms.rir(rm, rng_rooms) for rm in room_list]
            rir_len = np.array([h.size for h in rir_list])
            rir_bank = np.zeros((len(rir_list), int(rir_len.max())), dtype=np.float32)
            for i, h in enumerate(rir_list):
                rir_bank[i, :h.size] = h
            np.save(work / "rirs.npy", rir_bank)
            np.save(work / "rir_len.npy", rir_len)
            render_meta = [{"text": r.utterance.text, "engine": r.utterance.voice.engine, "voice": r.utterance.voice.id,
                            "rate": rates[r.index], "pitch": r.utterance.pitch, "split": r.split, "label": r.label}
                           for r in ok]
            babble = [new_index[r.index] for r in ok if r.label != "wake"][:200]
            (work / "meta.json").write_text(json.dumps({"rooms": [rm.describe() for rm in room_list],
                                                        "babble": babble, "renders": render_meta}))
            jobs = _plan_clips(cfg, counts, ok, new_index, str(stage))
        rows: list[dict[str, object]] = []
        if progress:
            progress("augment", 0, cfg.n)
        with _pool(cfg.workers, initializer=_worker_init, initargs=(str(stage), cfg.model_dump_json())) as pool:
            for batch_rows in pool.map(_augment_job, jobs):
                rows.extend(batch_rows)
                if progress:
                    progress("augment", len(batch_rows), cfg.n)
        rows.sort(key=lambda r: str(r["path"]))
        for p in sorted(work.iterdir()):
            p.unlink()
        work.rmdir()
        summary = _summary(cfg, es, counts, renders, ok, failures, rows)
        (stage / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        write_manifest(stage / MANIFEST, rows)  # last: its presence marks a complete dataset
    return summary


def _plan_clips(cfg: SynthConfig, counts: dict[str, int], ok: list[Render], new_index: dict[int, int],
                stage: str) -> list[Job]:
    rng = np.random.default_rng([cfg.seed, 4])
    plan: list[tuple[str, int]] = []
    for label in LABELS:
        if label == "noise":
            plan += [("noise", -1)] * counts[label]
            continue
        srcs = [new_index[r.index] for r in ok if r.label == label]
        plan += [(label, srcs[j % len(srcs)]) for j in range(counts[label])] if srcs else []
    perm = rng.permutation(len(plan))
    plan = [plan[i] for i in perm]
    jobs = []
    for b0 in range(0, len(plan), cfg.batch):
        part = plan[b0:b0 + cfg.batch]
        jobs.append(Job(b0 // cfg.batch, list(range(b0, b0 + len(part))), [p[0] for p in part],
                        [p[1] for p in part], stage, cfg.seed))
    return jobs


def _summary(cfg: SynthConfig, es: tts.EngineSet, counts: dict[str, int], renders: list[Render],
             ok: list[Render], failures: list[str], rows: list[dict[str, object]]) -> dict[str, object]:
    by_label: dict[str, int] = {}
    by_split: dict[str, int] = {}
    for r in rows:
        by_label[str(r["label"])] = by_label.get(str(r["label"]), 0) + 1
        by_split[str(r["split"])] = by_split.get(str(r["split"]), 0) + 1
    voices_used = sorted({r.utterance.voice.id for r in ok})
    return {
        # workers changes speed, never bytes, so it is left out: same data, same summary.
        "config": json.loads(cfg.model_dump_json(exclude={"workers"})),
        "clips": len(rows), "labels": by_label, "splits": by_split,
        "renders": len(ok), "renders_failed": len(failures), "failures": failures[:20],
        "engines": {e: [v.id for v in es.voices[e]] for e in es.engines},
        "espeak_variants": list(es.variants), "engines_skipped": es.skipped,
        "voices_used": len(voices_used), "sample_rate": SAMPLE_RATE,
    }


def wav_bytes(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A canonical 44-byte-header PCM16 mono WAV. Written by hand because libsndfile's per-file
    open/flush costs more than the augmentation of a clip, and the bytes must not vary."""
    data = np.ascontiguousarray(x, dtype="<i2").tobytes()
    header = b"".join([b"RIFF", (36 + len(data)).to_bytes(4, "little"), b"WAVEfmt ",
                       (16).to_bytes(4, "little"), (1).to_bytes(2, "little"), (1).to_bytes(2, "little"),
                       sample_rate.to_bytes(4, "little"), (sample_rate * 2).to_bytes(4, "little"),
                       (2).to_bytes(2, "little"), (16).to_bytes(2, "little"), b"data", len(data).to_bytes(4, "little")])
    return header + data


def write_manifest(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in MANIFEST_FIELDS})
