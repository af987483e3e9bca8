"""The data policy, enforced: training and tuning never use flite, festival, asterisk or alsa-utils data.

flite and the asterisk sound packages are evaluation only (cloud/crossengine.py); festival and the
alsa-utils sound files are reserved entirely, not even evaluated on. These tests fail when training code,
the training recipes or the evaluation's own code reach for what they may not.
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest

from cloud import crossengine as ce
from cloud.train import corpus
from cloud.train.data import eval_plan, train_plan
from cloud.train.recipe import load_recipe
from sensors.synth import tts

ROOT = Path(__file__).resolve().parents[1]
TRAINING_CODE = [ROOT / "cloud" / "train", ROOT / "sensors" / "synth"]
RECIPES = ROOT / "datasets" / "recipes"
# Whole words only: "tflite" (the model format) is not "flite"; "flite_voices" is.
EVAL_ONLY = re.compile(r"(?<![a-z0-9_])(flite|asterisk)(?![a-z0-9])", re.IGNORECASE)
RESERVED = re.compile(r"(?<![a-z0-9_])(festival|text2wave|alsa-utils|alsa_utils)(?![a-z0-9])|/usr/share/sounds/alsa",
                      re.IGNORECASE)
# In prose (a message, a docstring) only a path or a command line counts as a use.
PATHS = re.compile(r"/usr/(share|lib)/\S*(flite|festival|asterisk|sounds/alsa)\S*", re.IGNORECASE)
COMMANDS = re.compile(r"(?<![a-z0-9_])(flite|festival|text2wave)\s+-", re.IGNORECASE)
FORBIDDEN_ENGINES = ("flite", "festival")


def _string_body(token: str) -> str:
    return re.sub(r"^[a-zA-Z]*(\"\"\"|'''|\"|')", "", token).rstrip("\"'")


def _uses(path: Path, pattern: re.Pattern) -> list[str]:
    """Where ``path`` uses what ``pattern`` names: an identifier, a string that is a name, id, path or
    package (no spaces: "flite", f"flite:{v}", a file), or a path or command line inside prose. Comments,
    and prose that only states the policy ("no flite voices are trained on"), are not uses."""
    out = []
    for t in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if t.type == tokenize.NAME:
            used = bool(pattern.search(t.string))
        elif t.type == tokenize.STRING:
            body = _string_body(t.string)
            word = not any(c.isspace() for c in body)
            used = (word and bool(pattern.search(body))) or any(
                pattern.search(m.group(0)) for m in (*PATHS.finditer(body), *COMMANDS.finditer(body)))
        else:
            used = False
        if used:
            out.append(f"{path}:{t.start[0]}: {t.string.strip()[:80]}")
    return out


def _hits(paths: list[Path], pattern: re.Pattern) -> list[str]:
    return [h for p in paths for h in _uses(p, pattern)]


def _py(dirs: list[Path]) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*.py"))


SAMPLE = '''# flite voices are evaluation only
import tflite_runtime
V = 'flite:slt'
W = f"flite:{V}"
flite_voices = ()
CMD = ['flite', '-voice', 'kal']
SHELL = 'flite -voice kal -t hello'
MSG = 'no flite or asterisk speech and no festival voice is trained on'
def f():
    """Reads /usr/share/sounds/alsa/Front_Center.wav and /usr/share/asterisk/moh."""
'''


def test_the_scan_sees_names_ids_paths_and_commands_but_not_comments_or_policy_prose(tmp_path):
    f = tmp_path / "x.py"
    f.write_text(SAMPLE)
    assert [int(h.split(":")[1]) for h in _hits([f], EVAL_ONLY)] == [3, 4, 5, 6, 7, 10]
    assert [int(h.split(":")[1]) for h in _hits([f], RESERVED)] == [10]


def test_training_code_uses_no_evaluation_only_or_reserved_engine_or_file():
    files = _py(TRAINING_CODE)
    assert len(files) > 10
    assert _hits(files, EVAL_ONLY) == []
    assert _hits(files, RESERVED) == []


def test_training_code_never_imports_the_cross_engine_set():
    files = _py([ROOT / "cloud" / "train", ROOT / "sensors", ROOT / "gate"])
    assert _hits(files, re.compile(r"^crossengine$|cloud\.crossengine")) == []


def test_recipes_name_no_evaluation_only_or_reserved_engine():
    for p in sorted(RECIPES.glob("*.yaml")):
        text = "\n".join(line.split("#", 1)[0] for line in p.read_text(encoding="utf-8").splitlines())
        assert not EVAL_ONLY.search(text) and not RESERVED.search(text), p.name


def test_no_speech_engine_of_training_is_evaluation_only_or_reserved():
    assert {"espeak", "mbrola", "pico"} <= set(tts.ENGINES)
    assert not any(e.startswith(FORBIDDEN_ENGINES) for e in tts.ENGINES)
    assert not any(b.startswith(FORBIDDEN_ENGINES) or b == "text2wave" for b in tts.BINARIES.values())


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(RECIPES / "hey_jarvis.yaml")


def test_the_training_and_evaluation_plans_use_no_evaluation_only_or_reserved_voice(recipe):
    items, accents, _ = train_plan(recipe)
    voices = {u.voice for _, u in items} | {v for v, _ in accents}
    voices |= {u.voice for _, u in eval_plan(recipe)}
    assert voices
    for v in voices:
        assert v.engine in tts.ENGINES, v.id
        assert not v.id.lower().startswith(FORBIDDEN_ENGINES), v.id
    assert not any(v.startswith(FORBIDDEN_ENGINES) for v in recipe.corpus.eval_voices + recipe.corpus.exclude_voices)
    assert set(corpus.engines(recipe.corpus.engines).engines) <= set(tts.ENGINES)


def test_the_cross_engine_code_never_names_a_reserved_source():
    assert _hits([ROOT / "cloud" / "crossengine.py", ROOT / "cloud" / "compare.py"], RESERVED) == []


_SEEN: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _SEEN is None:
        return
    if event == "open" and isinstance(args[0], (str, bytes)):
        _SEEN.append(args[0] if isinstance(args[0], str) else args[0].decode(errors="replace"))
    elif event == "subprocess.Popen":
        argv = [args[1]] if isinstance(args[1], (str, bytes)) else list(args[1])
        _SEEN.append(f"exec {args[0] or argv[0]}")


sys.addaudithook(_audit)  # inert outside the test below


def test_building_a_cross_engine_scene_reads_only_flite_and_the_asterisk_sounds(monkeypatch):
    global _SEEN
    read = ce.sf.read

    def reading(path, *a, **k):  # libsndfile opens files in C, out of the audit hook's sight
        if _SEEN is not None:
            _SEEN.append(str(path))
        return read(path, *a, **k)

    monkeypatch.setattr(ce.sf, "read", reading)
    _SEEN = []
    try:
        human = ce.human_speech.__wrapped__(ce.HUMAN_SPEECH)  # uncached: every file is read here
        track = ce.music.__wrapped__(ce.MUSIC)
        renders = ce.synthesise(ce.plan("hey jarvis", seed=2, n_pos=2, n_conf=1, n_speech=2, n_cmd=2))
        ce.build_scene("music", minutes=1, rng=np.random.default_rng(0), renders=renders, human=human[:10])
    finally:
        seen, _SEEN = _SEEN, None
    assert track.size > 60 * ce.SR
    assert [p for p in seen if RESERVED.search(p) or "festival" in p.lower() or "/usr/share/sounds" in p] == []
    sounds = [p for p in seen if p.startswith("/usr/share/")]
    assert len(sounds) > 100
    assert all(p.startswith(("/usr/share/asterisk/sounds/", "/usr/share/asterisk/moh/")) for p in sounds)
    execs = [p for p in seen if p.startswith("exec ")]
    assert execs and all(p.split()[1] in ("flite", "/usr/bin/flite") for p in execs)
