"""More training speakers: RHVoice as a fourth engine (without its CMU ARCTIC speakers), random
espeak-ng variants drawn from a seed, and WORLD voice transformation; and the recipe fields for them."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from cloud.train import corpus, dataset
from cloud.train.recipe import AccentSpec, AugmentSpec, CorpusSpec, load_recipe
from gate_core.errors import ConfigError
from sensors.synth import espeak_variants as randvar
from sensors.synth import tts, voicex
from sensors.synth.errors import TTSError
from sensors.synth.tts import Utterance, Voice

RECIPE = Path(__file__).parents[1] / "datasets/recipes/hey_jarvis.yaml"
ALAN = Voice("rhvoice", "alan", "", "en")
EN_US = Voice("espeak", "en-us", "", "en-us")


def _rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))))


@pytest.fixture(autouse=True)
def _variant_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(randvar.ENV_ROOT, str(tmp_path / "variants"))


# --- RHVoice ------------------------------------------------------------------------------------

def test_rhvoice_renders_are_deterministic_16k_and_follow_rate_and_pitch():
    a = tts.render(Utterance("hey jarvis", ALAN))
    b = tts.render(Utterance("hey jarvis", ALAN))
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert 0.4 * 16_000 < a.size < 1.5 * 16_000  # "hey jarvis" at 16 kHz (RHVoice writes 24 kHz)
    fast = tts.render(Utterance("hey jarvis", ALAN, rate=300))
    high = tts.render(Utterance("hey jarvis", ALAN, pitch=90))
    assert fast.size < 0.8 * a.size
    assert not np.array_equal(high[: a.size], a[: high.size])
    lo, hi = tts.speech_bounds(a)
    assert lo <= 400 and a.size - hi <= 400


def test_rhvoice_cmu_arctic_speakers_are_installed_here_but_never_listed_planned_or_rendered():
    assert tts.RHVOICE_EXCLUDED == {"slt", "bdl", "clb"}
    assert all((Path(tts.RHVOICE_VOICE_DIRS[0]) / n / "voice.info").is_file() for n in tts.RHVOICE_EXCLUDED)
    es = tts.discover(["rhvoice"], language="")
    names = {v.name for v in es.voices["rhvoice"]}
    assert {"alan", "evgeniy-eng", "lyubov"} <= names and not names & tts.RHVOICE_EXCLUDED
    assert {v.name for v in tts.discover(None).voices["rhvoice"]} == {"alan", "evgeniy-eng", "lyubov"}
    for name in sorted(tts.RHVOICE_EXCLUDED):
        with pytest.raises(TTSError, match=f"rhvoice:{name} is excluded: a CMU ARCTIC speaker"):
            tts.render(Utterance("hey jarvis", Voice("rhvoice", name)))
        with pytest.raises(TTSError, match=f"unknown voice 'rhvoice:{name}'"):
            tts.select_voices(es, [f"rhvoice:{name}"])
        with pytest.raises(ValueError, match="CMU ARCTIC"):
            AccentSpec(voice=f"rhvoice:{name}", phrase="hey jarvis")
        with pytest.raises(TTSError, match="CMU ARCTIC"):
            corpus.accent_voices([SimpleNamespace(voice=f"rhvoice:{name}", phrase="hey jarvis")])
        with pytest.raises(ValueError, match="CMU ARCTIC"):
            CorpusSpec(eval_voices=[f"rhvoice:{name.upper()}"])
    # A recipe training on every engine: RHVoice speaks, its CMU ARCTIC voices never do.
    from cloud.train import data

    recipe = load_recipe(RECIPE)
    c = recipe.corpus.model_copy(update={"engines": ["espeak", "mbrola", "pico", "rhvoice"], "positives": 300,
                                         "confusables": 50, "speech": 100, "command_renders": 50})
    used = {u.voice for _, u in data.train_plan(recipe.model_copy(update={"corpus": c}))[0]}
    assert {v.name for v in used if v.engine == "rhvoice"} == {"alan", "evgeniy-eng", "lyubov"}


def test_a_bad_rhvoice_voice_name_is_a_tts_error_naming_it():
    # RHVoice-test itself falls back to its default voice without a word; the engine wrapper must not.
    with pytest.raises(TTSError, match=r"unknown RHVoice voice 'nobody' \(installed: .*alan"):
        tts.render(Utterance("hey jarvis", Voice("rhvoice", "nobody")))


def test_other_language_rhvoice_voices_read_respelled_phrases_as_accents():
    found, skipped = corpus.accent_voices([AccentSpec(voice="rhvoice:anna", phrase="хэй джарвис"),
                                           AccentSpec(voice="rhvoice:magda", phrase="hej dżarwis"),
                                           AccentSpec(voice="rhvoice:nobody", phrase="hey")])
    assert [(v.id, v.language) for v, _ in found] == [("rhvoice:anna", "ru"), ("rhvoice:magda", "pl")]
    assert "nobody" in skipped["rhvoice:nobody"]
    x = tts.render(Utterance(found[0][1], found[0][0]))
    assert 0.3 < x.size / 16_000 < 2.0


# --- random espeak-ng variants --------------------------------------------------------------------

def test_random_variant_files_are_a_function_of_seed_and_index_within_human_ranges():
    assert randvar.names(3, 7) == ("rv0000-s7", "rv0001-s7", "rv0002-s7")
    assert randvar.names(2, 7) == randvar.names(3, 7)[:2]  # variant i does not depend on how many
    assert randvar.parse("rv0042-s7") == (7, 42) and randvar.parse("f3") is None
    assert randvar.variant_text(7, 3) == randvar.variant_text(7, 3) != randvar.variant_text(8, 3)
    texts = [randvar.variant_text(1, i) for i in range(300)]
    assert len(set(texts)) == 300
    bases, scales = [], []
    for t in texts:
        bases.append(int(re.search(r"^pitch (\d+) (\d+)$", t, re.M).group(1)))
        scales += [int(f) for f in re.findall(r"^formant [1-3] (\d+) ", t, re.M)]
    assert 75 <= min(bases) and max(bases) <= 300 and min(scales) >= 85 and max(scales) <= 135
    assert sum(b < 140 for b in bases) > 90 and sum(b > 150 for b in bases) > 90  # men and women


def test_random_variants_are_written_once_and_render_deterministically_and_differently(tmp_path):
    assert corpus.with_random_variants(corpus.engines(["pico"]), 4, 11).random_variants == ()
    es = corpus.with_random_variants(corpus.engines(["espeak"]), 4, 11)
    assert es.random_variants == randvar.names(4, 11) and "espeak" in es.engines
    vdir = randvar.data_dir(11, 0) / "espeak-ng-data" / "voices" / "!v"
    written = {n: (vdir / n).read_text() for n in es.random_variants}
    assert written == {n: randvar.variant_text(11, i) for i, n in enumerate(es.random_variants)}
    plain = tts.render(Utterance("hey jarvis", EN_US))
    renders = [tts.render(Utterance("hey jarvis", Voice("espeak", "en-us", n, "en-us"))) for n in es.random_variants]
    assert np.array_equal(renders[0], tts.render(Utterance("hey jarvis", Voice("espeak", "en-us", "rv0000-s11"))))
    sigs = {r.tobytes() for r in renders} | {plain.tobytes()}
    assert len(sigs) == 5
    # A variant not written yet is created from its name alone, in any process.
    assert tts.render(Utterance("hey", Voice("espeak", "en-us", "rv0099-s11"))).size > 1000
    assert (randvar.data_dir(11, 99) / "espeak-ng-data" / "voices" / "!v" / "rv0099-s11").read_text() == \
        randvar.variant_text(11, 99)
    assert tts.select_voices(tts.discover(["espeak"]), ["espeak:en-us+rv0001-s3"]).variants == ("rv0001-s3",)
    with pytest.raises(TTSError, match="random variants apply to espeak voices only"):
        tts.render(Utterance("hey", Voice("mbrola", "mb-us1", "rv0001-s3")))


def test_random_variants_set_the_pitch_in_every_group_of_files():
    # espeak-ng lists at most 349 voices of a data directory and quietly speaks with a default voice
    # when the one asked for is past that: each directory copy holds one group of variants only.
    import subprocess

    import pyworld as pw

    names = randvar.write(randvar.GROUP + 6, 2)
    top = randvar.ensure(names[-1])
    assert top != randvar.ensure(names[0])
    listing = subprocess.run(["espeak-ng", "--path", str(top), "--voices=variant"], capture_output=True, check=True)
    assert b"maximum number" not in listing.stderr + listing.stdout
    base = {n: int(re.search(r"^pitch (\d+)", randvar.variant_text(2, i), re.M).group(1)) for i, n in enumerate(names)}
    low = min(names[randvar.GROUP:], key=base.get)
    high = max(names[: randvar.GROUP], key=base.get)

    def median_f0(variant: str) -> float:
        x = tts.render(Utterance("hey jarvis turn on the lights", Voice("espeak", "en-us", variant)))
        f0, _ = pw.dio(x.astype(np.float64), 16_000, frame_period=5.0)
        return float(np.median(f0[f0 > 0]))

    for v in (low, high):
        assert 1.0 * base[v] < median_f0(v) < 1.8 * base[v], (v, base[v])


def test_the_plan_gives_random_variants_their_share_and_is_unchanged_without_them():
    voices = [EN_US, Voice("mbrola", "mb-us1", "", "en")]
    rv = randvar.names(500, 3)

    def plan(**kw):
        return corpus.plan("hey jarvis", voices=voices, variants=["f3"], rng=np.random.default_rng(5), n_pos=400,
                           n_conf=50, n_speech=300, n_cmd=20, rate=(130, 220), pitch=(25, 80), **kw)

    assert plan() == plan(random_variants=(), random_variant_share=0.75) == plan(random_variants=rv,
                                                                               random_variant_share=0.0)
    items = plan(random_variants=rv, random_variant_share=0.75)
    esp = [u.voice for _, u in items if u.voice.engine == "espeak"]
    share = sum(randvar.is_random(v.variant) for v in esp) / len(esp)
    assert 0.68 < share < 0.82
    assert len({v.id for v in esp if randvar.is_random(v.variant)}) > 150  # hundreds of distinct speakers
    assert all(not v.variant for _, u in items if (v := u.voice).engine == "mbrola")


# --- WORLD voice transformation ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return tts.render(Utterance("hey jarvis turn on the lights", EN_US))


def _centroid(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / 16_000)
    return float((spec * f).sum() / spec.sum())


def test_world_transform_keeps_length_and_level_and_is_deterministic_from_the_rng(speech):
    y = voicex.transform(speech, np.random.default_rng(3))
    assert y.dtype == np.float32 and y.size == speech.size
    assert abs(_rms_db(y) - _rms_db(speech)) < 0.5
    assert np.array_equal(y, voicex.transform(speech, np.random.default_rng(3)))
    assert not np.allclose(y, voicex.transform(speech, np.random.default_rng(4)))
    # The envelope warp moves energy up for a shorter vocal tract (alpha > 1), down for a longer one.
    up = voicex.apply(speech, voicex.VoiceTransform(0.0, 1.0, 1.18, 0.0))
    down = voicex.apply(speech, voicex.VoiceTransform(0.0, 1.0, 0.87, 0.0))
    assert _centroid(up) > 1.1 * _centroid(down)
    quiet = np.zeros(800, np.float32)
    assert np.array_equal(voicex.transform(quiet, np.random.default_rng(0)), quiet)


def test_world_transform_shifts_f0_by_the_semitones_asked():
    import pyworld as pw

    x = tts.render(Utterance("aaah", EN_US, rate=120))

    def median_f0(a: np.ndarray) -> float:
        f0, _ = pw.dio(a.astype(np.float64), 16_000, frame_period=5.0)
        return float(np.median(f0[f0 > 0]))

    up = voicex.apply(x, voicex.VoiceTransform(5.0, 1.0, 1.0, 0.0))
    assert median_f0(up) / median_f0(x) == pytest.approx(2 ** (5 / 12), rel=0.06)


def test_perturb_draws_nothing_without_world_and_transforms_with_it(speech):
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    off = AugmentSpec(speed_prob=0.0)
    assert dataset.perturb(speech, rng, off) is speech and rng.bit_generator.state == state
    on = AugmentSpec(speed_prob=0.0, world_prob=1.0, world_alpha=(1.1, 1.15))
    y = dataset.perturb(speech, np.random.default_rng(1), on)
    assert y.size == speech.size and not np.allclose(y, speech)
    assert np.array_equal(y, dataset.perturb(speech, np.random.default_rng(1), on))


def test_channel_share_draws_nothing_when_off_and_filters_the_clip_when_on(speech):
    from cloud.train.dataset import _dress
    x = np.pad(speech, (4000, 4000))
    off = AugmentSpec(reverb_prob=0.0)
    rng = np.random.default_rng(2)
    base = _dress(x, rng, off, [])
    state = rng.bit_generator.state
    on = AugmentSpec(reverb_prob=0.0, channel_prob=1.0)
    rng_on = np.random.default_rng(2)
    y = _dress(x, rng_on, on, [])
    assert y.shape == base.shape and not np.allclose(y, base)
    assert rng_on.bit_generator.state != state  # the channel drew its kind and edges
    assert np.array_equal(_dress(x, np.random.default_rng(2), off, []), base)


# --- recipe fields ------------------------------------------------------------------------------------

def test_the_shipped_recipe_leaves_every_new_speaker_source_off():
    r = load_recipe(RECIPE)
    assert r.corpus.random_variants == 0 and r.augment.world_prob == 0.0
    assert "rhvoice" not in r.corpus.engines


@pytest.mark.parametrize(("section", "line", "message"), [
    ("augment", "world_alpha: [1.2, 0.9]", r"augment.world_alpha: .*world_alpha \[1.2, 0.9\]: need 0.7 <= low"),
    ("augment", "world_prob: 1.5", r"augment.world_prob: .*less than or equal to 1"),
    ("augment", "world_f0_semitones: [-20, 3]", r"augment.world_f0_semitones: .*need -12.0 <= low"),
    ("augment", "world_aperiodicity_db: [3, -3]", r"augment.world_aperiodicity_db: .*\[3.0, -3.0\]"),
    ("augment", "backgrounds: [pink, jazz]", r"augment.backgrounds: .*unknown background kind\(s\) \['jazz'\]"),
    ("augment", "channel_prob: -0.1", r"augment.channel_prob: .*greater than or equal to 0"),
    ("corpus", "random_variants: -1", r"corpus.random_variants: .*greater than or equal to 0"),
    ("corpus", "random_variant_share: 2", r"corpus.random_variant_share: .*less than or equal to 1"),
    ("corpus", "engines: [flite]", r"corpus.engines.0: .*'espeak', 'mbrola', 'pico' or 'rhvoice'"),
    ("corpus", "{engines: [pico], random_variants: 10}", r"corpus: .*random_variants 10 needs the espeak engine"),
    ("corpus", 'accents: [{voice: "rhvoice:slt", phrase: "hey jarvis"}]', r"corpus.accents.0.voice: .*CMU ARCTIC"),
])
def test_recipe_refuses_bad_speaker_fields_naming_file_and_field(tmp_path, section, line, message):
    data = yaml.safe_load(RECIPE.read_text())
    for k, v in yaml.safe_load(line).items():
        data[section][k] = v
    bad = tmp_path / "r.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"r.yaml: " + message) as exc:
        load_recipe(bad)
    assert "Traceback" not in str(exc.value)
