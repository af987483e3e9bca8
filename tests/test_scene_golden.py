"""Same seed, same bytes: SHA-256 of scenes, clips and noises built from fixed, generated inputs.

The shipped models' figures were measured on scenes built by this code, so the training scenes
(cloud/train/scenes.build), the training clips' augmentation (cloud/train/dataset.py), every noise,
reverb and level function, ``gate-data scenario`` renders and the cross-engine evaluation scenes
(cloud/crossengine.build_scene) must stay bit-identical for a seed. Inputs are numpy-generated
stand-ins for TTS renders, recorded speech and music (no TTS engine or sound package is needed). The digests were
computed with the numpy and scipy versions pinned in the venv: a different FFT or resampler build
may change the last bits of the floats, in which case these tests say so and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import numpy as np
import pytest
import soundfile as sf

from cloud import crossengine
from cloud.train import dataset, scenes
from cloud.train.corpus import SpeechRender
from cloud.train.recipe import AugmentSpec
from sensors import scenario
from sensors.synth import augment, confusables, noise, rooms, tts

SR = 16_000


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype.str}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _voiced(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Speech-like float32: a few harmonics of a gliding F0 under syllable-rate bursts, peak 0.5."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)), 0, None) ** 2
    x = x * env * np.hanning(n) + 0.01 * rng.standard_normal(n)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def _renders(kind: str, count: int, seed: int, seconds: tuple[float, float]) -> list[SpeechRender]:
    rng = np.random.default_rng(seed)
    return [SpeechRender(f"{kind} {i}", f"stub:voice{i % 3}", kind, _voiced(rng, rng.uniform(*seconds)))
            for i in range(count)]


POSITIVES = _renders("positive", 6, 1, (0.7, 1.0))
OTHERS = _renders("speech", 10, 2, (1.0, 3.0))
COMMANDS = [SpeechRender(r.text, r.voice_id, "command", r.audio, name)
            for r, name in zip(_renders("c", 4, 3, (0.4, 0.8)), ("lights_on", "lights_off", "stop", "up"),
                               strict=True)]
CONFUSABLES = _renders("confusable", 5, 4, (0.6, 1.0))
SPEECH = [r.audio for r in OTHERS]
X = _voiced(np.random.default_rng(5), 1.3)  # fixed input of the signal functions


def _scene(name: str, seed: int, **options) -> str:
    s = scenes.build(name, minutes=1.0, keywords_per_hour=180, rng=np.random.default_rng(seed),
                     positives=POSITIVES, others=OTHERS, commands=COMMANDS, **options)
    return _digest(s.audio, s.name, s.keywords, s.events, s.keyword_voices, s.keyword_commands, s.keyword_snr_db)


def _noises() -> str:
    rng = np.random.default_rng(6)
    n = 5000
    parts = [noise.coloured_noise(n, rng, e) for e in (0.0, 1.0, 2.0)]
    parts += [noise.clatter(n, rng), noise.clatter(n, rng, rate_hz=6.0), noise.mains_hum(n, rng),
              noise.babble_mix(n, rng, SPEECH), noise.babble_mix(n, rng, SPEECH, talkers=2),
              noise.babble_mix(n, rng, ())]
    parts += [augment.background(k, n, rng, SPEECH) for k in augment.TRAIN_BACKGROUNDS]
    parts += [augment.background("office_babble", n, rng)]
    return _digest(*parts, list(augment.TRAIN_BACKGROUNDS))


def _signal() -> str:
    rng = np.random.default_rng(7)
    noise_in = noise.coloured_noise(X.size, np.random.default_rng(8), 1.0)
    parts = [augment.reverb(X, rng) for _ in range(3)]
    parts += [augment.speed(X, rng, lo, hi) for lo, hi in ((0.85, 1.15), (1.0, 1.0), (0.9, 0.9), (1.1, 1.2))]
    parts += [augment.mix(X, noise_in, snr) for snr in (-5.0, 0.0, 17.5)]
    parts += [augment.set_peak(X, p) for p in (-3.0, -20.0)] + [augment.set_peak(np.zeros(10, np.float32), -3.0)]
    return _digest(*parts, augment.rms(X), augment.rms(noise_in))


def _clips() -> str:
    aug = AugmentSpec(copies=2)
    rng = np.random.default_rng(9)
    perturbed = [dataset.perturb(r.audio, rng, aug) for r in POSITIVES]
    wake = dataset.wake_clips(POSITIVES[:3] + CONFUSABLES[:2], clip_s=1.5, aug=aug, rng=rng, babble_pool=SPEECH,
                              noise_only=3)
    cmd = dataset.command_clips(COMMANDS + OTHERS[:1], ["lights_on", "lights_off", "stop", "up", "_unknown",
                                                        "_silence"], clip_s=1.0, aug=aug, rng=rng,
                                babble_pool=SPEECH, noise_only=2)
    return _digest(*perturbed, wake.audio, wake.labels, wake.kinds, cmd.audio, cmd.labels, cmd.kinds)


def _synth_noise() -> str:
    rng = np.random.default_rng(10)
    parts: list[object] = []
    for kind in noise.KINDS:
        x, params = noise.make(kind, rng, 2, 3000, speech=SPEECH)
        parts += [x, params]
    s = noise.NoiseStream("fan", rng)
    parts += [s.read(1000), s.read(777), s.params, noise.music(rng, 8000), noise.clicks(rng, 2, 2000)]
    return _digest(*parts)


def _synth_rooms() -> str:
    rng = np.random.default_rng(11)
    out: list[object] = []
    for rt in ((0.15, 0.8), (0.3, 0.3)):
        room = rooms.random_room(rng, rt60_s=rt)
        out += [room.describe(), rooms.rir(room, rng)]
    return _digest(*out)


def _synth_augment() -> str:
    rng = np.random.default_rng(12)
    cfg = augment.AugmentConfig(clip_s=1.0, rooms=4)
    rirs = [rooms.rir(rooms.random_room(rng, rt60_s=cfg.rt60_s), rng) for _ in range(cfg.rooms)]
    bank = augment.RirBank(rirs, [{"i": i} for i in range(len(rirs))], cfg.n_samples)
    utts = [POSITIVES[0].audio, None, OTHERS[0].audio, POSITIVES[1].audio] * 3
    b = augment.augment(utts, rng, cfg, rirs=bank, babble_speech=SPEECH, keep_whole=[True, True, False, True] * 3)
    return _digest(b.audio, b.info)


CASES: dict[str, Callable[[], str]] = {
    "scene_quiet_home": lambda: _scene("quiet_home", 20),
    "scene_noisy_kitchen": lambda: _scene("noisy_kitchen", 21, confusables=CONFUSABLES, confusables_per_hour=120),
    "scene_office_babble": lambda: _scene("office_babble", 22, talk_gap_s=3.0),
    "scene_training_stream": lambda: _scene("noisy_kitchen", 23, level_jitter_db=6.0, confusables=CONFUSABLES,
                                            confusables_per_hour=60, extra_talk=[c.audio for c in CONFUSABLES[:2]]),
    "train_noises": _noises,
    "train_signal": _signal,
    "train_clips": _clips,
    "synth_noise": _synth_noise,
    "synth_rooms": _synth_rooms,
    "synth_augment": _synth_augment,
}

DIGESTS = {
    "scene_noisy_kitchen": "9ed169f4c173a7d187a7996bc82f25afd81977bebe2e5c9bdb3159eff16c9038",
    "scene_office_babble": "5705e37b92708b4ab2782eae7516a6f2679cc18bad7d41485c8a9bf864c307c9",
    "scene_quiet_home": "49f2fbc3fb4e949be4feb1a9580a9da625993f43e552ea955799187425ad98c7",
    "scene_training_stream": "900d71d7399bd6c8f1b25eccccaa3dd1cd998af8f5a49cfac8e2f8347f44b1fb",
    "synth_augment": "b14df632c9c477302d2a36e8d469d165c01011459c3f8809f2f4d9e306eb4aed",
    "synth_noise": "6f713d302e22f4a704aebe68ced26e430b1efa18170e917cd355c68a6d0c782f",
    "synth_rooms": "19fbc96f23209a5f3bd87e60f688163dde1fc739070ddbd017ede1a17608a61c",
    "train_clips": "89958b8600b27e64cc1c5070a8d297465a01b9305181b8b025d74dbff956a05f",
    "train_noises": "f3d638a46db2e650ef7df18975e01435c6d0d1db6989da17c700d18aa240a52c",
    "train_signal": "80580619d0cf88e827bddedfcc195efa3ca42469c9c23b9388c4aca9165422b6",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_seed_same_bytes(case):
    assert CASES[case]() == DIGESTS[case]


# --- cross-engine evaluation scenes ------------------------------------------------------------

HUMAN = [_voiced(np.random.default_rng(13), s) for s in (1.2, 2.5, 3.4, 0.8, 4.0)]
MUSIC_TRACK = noise.music(np.random.default_rng(14), 20 * SR)
CROSSENGINE_RENDERS = POSITIVES + COMMANDS + CONFUSABLES + OTHERS

# (kind, minutes, seed, human speech, build_scene options)
CROSSENGINE_CASES = {
    "music_1min": ("music", 1.0, 30, HUMAN, {"keywords_per_hour": 180, "confusables_per_hour": 120}),
    "music_1.5min": ("music", 1.5, 31, HUMAN, {}),
    "noise_1min": ("noise", 1.0, 32, HUMAN, {"keywords_per_hour": 180, "confusables_per_hour": 120}),
    "noise_2min_no_human": ("noise", 2.0, 33, [], {}),
    "talk_1min": ("talk", 1.0, 34, HUMAN, {"keywords_per_hour": 180, "confusables_per_hour": 120}),
    "talk_1.5min": ("talk", 1.5, 35, HUMAN, {}),
}

CROSSENGINE_DIGESTS = {
    "music_1.5min": "d9448e21cf0a95bd3d15a4c31679bc003c5d841a5cfd78d8e05323b68fe5429e",
    "music_1min": "704c513248eff25e33d7cc78316d2068ee68b16922bd7e826195c4264eff0c79",
    "noise_1min": "902f17cbb976d6cc948fced5169479c17aaeabe4134afb809023d8ace1193157",
    "noise_2min_no_human": "34cbb8db95a8433850e715d60016edd2c885af33e7d80ee6612874f8194716e0",
    "talk_1.5min": "2656df4097dd310f12445f728faf8a8ac7b81ae381910d3500cd9d48805efe60",
    "talk_1min": "e1360c3019086e462b8911a47ee7b03a0c96ec75e2437d7b8c58b40b328e3763",
}


@pytest.mark.parametrize("case", sorted(CROSSENGINE_CASES))
def test_crossengine_scene_same_seed_same_bytes(case, monkeypatch):
    monkeypatch.setattr(crossengine, "music", lambda: MUSIC_TRACK)
    kind, minutes, seed, human, options = CROSSENGINE_CASES[case]
    s = crossengine.build_scene(kind, minutes=minutes, rng=np.random.default_rng(seed), renders=CROSSENGINE_RENDERS,
                                human=human, **options)
    got = _digest(s.audio, s.name, s.keywords, s.events, s.keyword_voices, s.keyword_commands, s.keyword_snr_db)
    assert got == CROSSENGINE_DIGESTS[case]


# --- gate-data scenario ---------------------------------------------------------------------

RECIPE = """\
name: golden
seed: 7
duration_s: 40
format: wav
floor_dbfs: -75
min_gap_s: 0.4
tts: {engines: [espeak], rate: [150, 190], pitch: [40, 60], p_variant: 0.5}
room: {p_reverb: 0.6, rt60_s: [0.2, 0.5]}
bed:
  - {kind: pink, level_dbfs: -55}
  - {kind: hum, level_dbfs: -60}
  - {kind: fan, level_dbfs: -58}
  - {kind: brown, level_dbfs: -62}
ambient:
  - {kind: music, count: 1, duration_s: [5, 7], level_dbfs: [-45, -42]}
  - {kind: tv, count: 1, duration_s: [4, 6], level_dbfs: [-44, -40]}
  - {kind: babble, count: 1, duration_s: [4, 5], level_dbfs: [-46, -43]}
  - {kind: clicks, count: 1, duration_s: [2, 3], level_dbfs: [-50, -48]}
  - {kind: white, count: 1, duration_s: [2, 3], level_dbfs: [-55, -50]}
events:
  - {kind: wake_command, count: 3, snr_choices: [5, 15]}
  - {kind: wake, count: 1, snr_db: [10, 20]}
  - {kind: command, count: 1, snr_db: [10, 20]}
  - {kind: confusable, count: 2, snr_db: [5, 15]}
  - {kind: speech, count: 2, snr_db: [5, 15]}
  - {kind: silence, count: 2, duration_s: [1.5, 2.5]}
"""

SCENARIO_DIGEST = "733c6964d8bd3cc93603cd2dda3c9fe0533d2b26dc3b7408982fcf763f17f8e4"


def _stub_render(u: tts.Utterance, *, trim: bool = True) -> np.ndarray:
    """A stand-in TTS: speech-like audio seeded by the utterance, longer for longer text and slower rates."""
    seed = int.from_bytes(hashlib.sha256(repr(u).encode()).digest()[:8], "little")
    return _voiced(np.random.default_rng(seed), 0.3 + len(u.text) * 0.06 * 170 / u.rate)


def test_scenario_render_same_seed_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(tts, "render", _stub_render)
    monkeypatch.setattr(confusables, "generate", lambda phrase, n: [
        confusables.Confusable(t, "stub", 0.1) for t in ("hey travis", "hey jar", "jarvis", "hey jervis")][:n])
    voices = (tts.Voice("espeak", "en-us", language="en"), tts.Voice("espeak", "en-gb", language="en"),
              tts.Voice("espeak", "en-sc", language="en"))
    es = tts.EngineSet({"espeak": voices}, ("m1", "f2", "klatt"), {})
    path = tmp_path / "golden.yaml"
    path.write_text(RECIPE)
    out = tmp_path / "out"
    result = scenario.render(scenario.load_recipe(path), out, engines=es)
    audio, fs = sf.read(out / "stream.wav", dtype="int16")
    assert fs == SR and result.path == out
    assert _digest(audio, (out / "labels.csv").read_text(), (out / "scenario.json").read_text()) == SCENARIO_DIGEST


def test_every_case_has_a_digest():
    assert set(CASES) == set(DIGESTS)
    assert set(CROSSENGINE_CASES) == set(CROSSENGINE_DIGESTS)
