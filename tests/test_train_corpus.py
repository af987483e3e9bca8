"""The training corpus plan: accented speakers (other-language voices saying a respelled phrase) and the
recipe checks around them. Planning draws no audio; one test renders through the real engines."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from cloud.train import corpus
from cloud.train.recipe import AccentSpec, CorpusSpec, load_recipe
from gate_core.errors import ConfigError
from sensors.synth import tts
from sensors.synth.errors import TTSError
from sensors.synth.tts import Voice

EN = [Voice("espeak", "en-us", "", "en-us"), Voice("mbrola", "mb-us1", "", "en")]
IT = Voice("pico", "it-IT", "", "it-IT")
DE = Voice("espeak", "de", "", "de")
RECIPE = Path(__file__).parents[1] / "datasets/recipes/hey_jarvis.yaml"
ACCENTS = [(IT, "ei giarvis"), (DE, "hey dscharvis")]


def _plan(seed: int = 7, **kw) -> list[tuple[str, tts.Utterance]]:
    return corpus.plan("hey jarvis", voices=EN, variants=["f3"], rng=np.random.default_rng(seed), n_pos=400,
                       n_conf=50, n_speech=300, n_cmd=20, rate=(130, 220), pitch=(25, 80), **kw)


def test_no_accents_plans_exactly_what_it_planned_before():
    # A recipe without accents must rebuild the same corpus (and so the same models) as before.
    assert _plan() == _plan(accents=(), accent_share=0.0) == _plan(accents=ACCENTS, accent_share=0.0)


def test_accent_share_goes_to_accent_voices_with_their_respelled_phrase():
    items = _plan(accents=ACCENTS, accent_share=0.25)
    pos = [u for k, u in items if k == "positive"]
    accented = [u for u in pos if u.voice.name in ("it-IT", "de")]
    assert 0.17 < len(accented) / len(pos) < 0.33
    assert {u.text for u in accented} == {"ei giarvis", "hey dscharvis"}
    assert all(u.text == "ei giarvis" for u in accented if u.voice.engine == "pico")
    # English voices still say the phrase itself (alone or after a few words).
    assert all(u.text.endswith("hey jarvis") for u in pos if u.voice.name not in ("it-IT", "de"))
    speech = [u for k, u in items if k == "speech"]
    foreign = [u for u in speech if u.voice.name in ("it-IT", "de")]
    assert 0.15 < len(foreign) / len(speech) < 0.35
    assert not any("jarvis" in u.text or "giarvis" in u.text for u in foreign)
    # Confusables and commands stay with the English voices.
    assert all(u.voice in EN or u.voice.name == "en-us" for k, u in items if k != "positive" and k != "speech")
    # espeak accent voices get the espeak variants like any espeak voice.
    assert any(u.voice.variant == "f3" for u in accented if u.voice.engine == "espeak")


def test_recipe_refuses_accent_voices_that_are_held_out_or_a_share_without_accents(tmp_path):
    with pytest.raises(ValueError, match="held out"):
        CorpusSpec(accents=[AccentSpec(voice="pico:en-GB", phrase="hey jarvis")], accent_share=0.1)
    with pytest.raises(ValueError, match="needs at least one"):
        CorpusSpec(accent_share=0.2)
    bad = tmp_path / "r.yaml"
    bad.write_text(RECIPE.read_text().replace("  workers: 2\n", "  workers: 2\n  accent_share: 0.95\n"))
    with pytest.raises(ConfigError, match=r"r.yaml: corpus.accent_share"):
        load_recipe(bad)


def test_accent_voices_resolves_installed_ones_and_says_why_it_skips_others():
    with pytest.raises(ValueError, match="festival:kal.*expected engine:name"):
        AccentSpec(voice="festival:kal", phrase="hey")
    with pytest.raises(TTSError, match="expected engine:name"):  # the corpus checks again (not via a recipe)
        corpus.accent_voices([SimpleNamespace(voice="pico", phrase="hey")])
    if tts.which("espeak") is None:
        pytest.skip("espeak-ng not installed")
    found, skipped = corpus.accent_voices([AccentSpec(voice="espeak:de", phrase="hey dscharvis"),
                                           AccentSpec(voice="espeak:xx-nowhere", phrase="hey")])
    assert found == [(Voice("espeak", "de", "", "de"), "hey dscharvis")]
    assert "xx-nowhere" in skipped["espeak:xx-nowhere"]


def _documented_accents() -> CorpusSpec:
    """The accents the shipped recipe documents (commented out, off by default), as a recipe would read them."""
    lines = [ln.replace("  # ", "  ", 1) for ln in RECIPE.read_text().splitlines()
             if ln.startswith(("  # accent_share:", "  # accents:", "  #   - {voice:"))]
    assert len(lines) >= 3, "the recipe no longer documents its accents"
    return CorpusSpec.model_validate(yaml.safe_load("\n".join(lines).replace("\n  ", "\n").lstrip()))


def test_documented_accents_are_valid_and_render_through_the_real_engines():
    spec = _documented_accents()
    assert spec.accent_share > 0 and len(spec.accents) >= 5
    found, skipped = corpus.accent_voices(spec.accents)
    if not found:
        pytest.skip(f"no accent voice installed: {skipped}")
    assert not {v.id for v, _ in found} & set(load_recipe(RECIPE).corpus.eval_voices)
    for v, text in {v.id: (v, t) for v, t in found}.values():
        audio = tts.render(tts.Utterance(text, v))
        assert 0.3 < audio.size / 16_000 < 3.0, (v.id, text)


def _cached(cache, what: str, recipe, make):
    """The render cache as a run uses it: keyed by the plan the recipe (and the voices here) make."""
    from cloud.train import data

    items = data.train_plan(recipe)[0] if what == "train" else data.eval_plan(recipe)
    return data.cached_renders(cache, what, items, make)


def test_eval_renders_do_not_depend_on_the_training_corpus(tmp_path):
    # A bigger training corpus, or accents, must meet the same held-out test: same cache entry, same plan.
    base = load_recipe(RECIPE)
    bigger = base.model_copy(update={"corpus": base.corpus.model_copy(update={"positives": 9000, "speech": 100,
                                                                             "accent_share": 0.5})})
    made = []
    first = _cached(tmp_path, "eval", base, lambda: made.append(1) or ["renders"])
    again = _cached(tmp_path, "eval", bigger, lambda: made.append(2) or ["other"])
    assert first == again == ["renders"] and made == [1]
    # ... while the training renders and a change of evaluation counts get their own entries.
    _cached(tmp_path, "train", bigger, lambda: made.append(3) or ["t"])
    fewer = base.model_copy(update={"evaluation": base.evaluation.model_copy(update={"speech_renders": 50})})
    _cached(tmp_path, "eval", fewer, lambda: made.append(4) or ["e"])
    assert made == [1, 3, 4]


def test_threshold_tuned_for_the_tiny_model_or_for_the_cascade():
    from cloud.train import evaluate, scenes
    from gate.kws.config import KwsConfig

    t = np.arange(0, 60, 0.03)
    post = np.zeros_like(t)
    post[(t >= 10.9) & (t < 11.3)] = 0.95   # the wake phrase, said 10-11 s
    post[(t >= 30.0) & (t < 30.4)] = 0.6    # a false wake
    scene = scenes.Scene("quiet_home", np.zeros(60 * 16_000, np.int16), [(10.0, 11.0)])
    scored = [[SimpleNamespace(posterior=float(p), t_s=float(x)) for p, x in zip(post, t, strict=True)]]
    cfg = KwsConfig(model_path="unused.tflite", feature_kind="logmel")

    class Rejects:  # a cloud verifier that rejects everything it is sent
        def verify(self, samples, fired_at_s):
            return False, 0.0

    # Alone, the node must stay quiet on the false wake: the threshold goes above it.
    assert evaluate.pick_threshold(cfg, [scene], scored, 0.0) == pytest.approx(0.61)
    # Behind a verifier that catches it, the lowest threshold will do, if the upload is allowed ...
    assert evaluate.pick_threshold(cfg, [scene], scored, 0.0, Rejects(), 60.0) == pytest.approx(0.30)
    # ... and not if the node may upload no false wake at all.
    assert evaluate.pick_threshold(cfg, [scene], scored, 0.0, Rejects(), 0.0) == pytest.approx(0.61)


def test_a_render_cache_entry_is_written_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "renders-x.pkl"
    corpus.save_renders(path, ["a", "b"])
    corpus.save_renders(path, ["c"])  # a second run on the same cache replaces it whole
    with path.open("rb") as f:
        assert corpus.load_renders(f) == ["c"]
    assert [p.name for p in path.parent.iterdir()] == ["renders-x.pkl"]


def test_cached_renders_are_not_reused_when_the_installed_voices_change(tmp_path, monkeypatch):
    recipe = load_recipe(RECIPE)
    voices = {"espeak": (EN[0], Voice("espeak", "en-gb", "", "en-gb"), Voice("espeak", "en-gb-x-gbcwmd", "", "en"))}
    monkeypatch.setattr(corpus, "engines", lambda names: tts.EngineSet(dict(voices), ("f3",), {}))
    made = []
    _cached(tmp_path, "train", recipe, lambda: made.append(1) or ["a"])
    assert _cached(tmp_path, "train", recipe, lambda: made.append(2) or ["b"]) == ["a"]
    voices["espeak"] = voices["espeak"][1:]  # a training voice was uninstalled: its renders are stale
    assert _cached(tmp_path, "train", recipe, lambda: made.append(3) or ["c"]) == ["c"]
    # A training voice installed since does not touch the evaluation renders: the held-out voice is the same.
    _cached(tmp_path, "eval", recipe, lambda: made.append(4) or ["e"])
    voices["espeak"] = voices["espeak"] + (Voice("espeak", "en-us", "", "en-us"),)
    _cached(tmp_path, "eval", recipe, lambda: made.append(5) or ["f"])
    assert made == [1, 3, 4]


def test_recipe_refuses_a_command_start_range_out_of_order(tmp_path):
    bad = tmp_path / "r.yaml"
    text = RECIPE.read_text()
    assert "\n  start_s: [-0.15, 0.7]\n" in text
    bad.write_text(text.replace("\n  start_s: [-0.15, 0.7]\n", "\n  start_s: [0.6, -0.1]\n"))
    with pytest.raises(ConfigError, match=r"r.yaml: commands.start_s: .*start_s \[0.6, -0.1\]"):
        load_recipe(bad)
    assert load_recipe(RECIPE).commands.start_s[0] <= load_recipe(RECIPE).commands.start_s[1]


def test_excluded_voices_are_neither_trained_on_nor_evaluated(monkeypatch):
    gb, held = Voice("espeak", "en-gb", "", "en-gb"), Voice("espeak", "en-gb-x-gbcwmd", "", "en")
    es = tts.EngineSet({"espeak": (EN[0], gb, held), "mbrola": (EN[1],)}, ("f3",), {})
    train, test = corpus.split_voices(es, [held.id], exclude=[gb.id])
    assert train == [EN[0], EN[1]] and test == [held]
    with pytest.raises(TTSError, match="nothing left to train on"):
        corpus.split_voices(es, [held.id], exclude=[EN[0].id, gb.id, EN[1].id])
    # The training plan speaks with the voices left; the evaluation plan is unchanged.
    from cloud.train import data

    monkeypatch.setattr(corpus, "engines", lambda names: es)
    recipe = load_recipe(RECIPE)
    fewer = recipe.model_copy(update={"corpus": recipe.corpus.model_copy(update={"exclude_voices": [gb.id]})})
    assert gb.id in {u.voice.id for _, u in data.train_plan(recipe)[0]}
    assert gb.id not in {u.voice.id for _, u in data.train_plan(fewer)[0]}
    assert data.eval_plan(fewer) == data.eval_plan(recipe)
    with pytest.raises(ValueError, match="either evaluated or excluded"):
        CorpusSpec(exclude_voices=["pico:en-GB"])


def _old_layout_pickle(monkeypatch) -> bytes:
    """A render cache as runs wrote it before SpeechRender: ``cloud.train.corpus.Render`` objects (frozen,
    slotted, four fields) whose kind says ``command:<name>`` for a command."""
    import pickle
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class Render:
        text: str
        voice_id: str
        kind: str
        audio: np.ndarray

    Render.__module__, Render.__qualname__ = "cloud.train.corpus", "Render"
    with monkeypatch.context() as m:
        m.setattr(corpus, "Render", Render, raising=False)
        old = [Render("hey jarvis", "espeak:en", "positive", np.arange(900, dtype=np.float32)),
               Render("lights on", "espeak:en", "command:lights_on", np.ones(900, np.float32)),
               Render("the cat", "pico:en-GB", "speech", np.zeros(900, np.float32))]
        content = pickle.dumps(old, protocol=pickle.HIGHEST_PROTOCOL)
    assert not hasattr(corpus, "Render") and b"Render" in content and b"SpeechRender" not in content
    return content


def test_renders_cached_in_the_old_layout_load_migrated_without_synthesis(tmp_path, monkeypatch):
    import pickle

    from cloud.train import data

    items = data.eval_plan(load_recipe(RECIPE))
    made = []
    data.cached_renders(tmp_path, "eval", items, lambda: made.append(1) or ["placeholder"])
    (path,) = tmp_path.glob("renders-eval-*.pkl")
    path.write_bytes(_old_layout_pickle(monkeypatch))
    got = data.cached_renders(tmp_path, "eval", items, lambda: made.append(2) or [])
    assert made == [1]  # read from the cache, not synthesised again
    assert all(type(r) is corpus.SpeechRender for r in got)
    assert [(r.kind, r.command, r.label) for r in got] == [("positive", None, "positive"),
                                                            ("command", "lights_on", "command:lights_on"),
                                                            ("speech", None, "speech")]
    assert got[1].text == "lights on" and got[1].voice_id == "espeak:en"
    assert np.array_equal(got[0].audio, np.arange(900, dtype=np.float32))
    # A plain pickle of the new layout round-trips; plain pickle cannot read the old one, load_renders can.
    again = pickle.loads(pickle.dumps(got, protocol=pickle.HIGHEST_PROTOCOL))
    assert [(r.text, r.voice_id, r.kind, r.command) for r in again] == [(r.text, r.voice_id, r.kind, r.command)
                                                                        for r in got]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(again, got, strict=True))
    with pytest.raises(AttributeError, match="Render"):
        pickle.loads(path.read_bytes())


def test_a_command_render_names_its_command_and_no_other_does():
    audio = np.zeros(900, np.float32)
    r = corpus.SpeechRender.of_label("stop", "espeak:en", "command:stop", audio)
    assert (r.kind, r.command, r.label) == ("command", "stop", "command:stop")
    assert corpus.SpeechRender.of_label("hey", "espeak:en", "positive_ctx", audio).command is None
    for kind, command in (("command", None), ("speech", "stop"), ("command", "")):
        with pytest.raises(ValueError, match=f"kind '{kind}' with command"):
            corpus.SpeechRender("x", "espeak:en", kind, audio, command)
    with pytest.raises(ValueError, match="kind 'command' with command ''"):
        corpus.SpeechRender.of_label("x", "espeak:en", "command:", audio)
