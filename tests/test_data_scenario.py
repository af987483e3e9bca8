from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from data_helpers import needs_espeak, no_partials, tree_digest

from sensors import datacli, scenario
from sensors.scenario import LABEL_FIELDS, load_recipe, read_labels
from sensors.synth.errors import RecipeError

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "datasets" / "recipes"
FS = 16_000

SMALL = """\
name: small
seed: 4
duration_s: 40
format: {fmt}
floor_dbfs: {floor}
min_gap_s: 0.5
tts: {{engines: [espeak], rate: [160, 190]}}
room: {{p_reverb: {reverb}}}
bed: {bed}
ambient: {ambient}
events:
  - {{kind: wake_command, count: 3, snr_choices: {snr_hi}}}
  - {{kind: wake, count: 1, snr_db: {snr_hi}}}
  - {{kind: confusable, count: 2, snr_db: {snr_lo}}}
  - {{kind: speech, count: 2, snr_db: {snr_lo}}}
  - {{kind: silence, count: 2, duration_s: [2, 3]}}
"""


def _recipe(tmp_path: Path, name="small.yaml", **kw) -> Path:
    params = {"snr_hi": "[10, 20]", "snr_lo": "[5, 15]", "fmt": "wav", "floor": -80, "reverb": 0.5,
              "bed": "[{kind: pink, level_dbfs: -50}]",
              "ambient": "[{kind: music, count: 1, duration_s: [6, 8], level_dbfs: [-45, -42]}]"}
    params.update(kw)
    p = tmp_path / name
    p.write_text(SMALL.format(**params))
    return p


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    out = d / "out"
    assert datacli.main(["scenario", "--recipe", str(_recipe(d)), "--out", str(out), "--quiet"]) == 0
    return out


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20)


@needs_espeak
def test_labels_file_format_and_counts(scene):
    with (scene / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LABEL_FIELDS
    counts = {lab: sum(r["label"] == lab for r in rows) for lab in scenario.LABELS}
    assert counts["wake_command"] == 3 and counts["wake"] == 4 and counts["command"] == 3
    assert counts["confusable"] == 2 and counts["speech"] == 2 and counts["silence"] == 2 and counts["noise"] == 1
    for r in rows:
        a, b = int(r["start_sample"]), int(r["end_sample"])
        assert r["start_s"] == f"{a / FS:.7f}" and float(r["start_s"]) * FS == a  # exact to the sample
        assert a < b
    wc = [r for r in rows if r["label"] == "wake_command"]
    for r in wc:
        inner = [x for x in rows if x["event"] == r["event"] and x["label"] in ("wake", "command")]
        assert [x["label"] for x in inner] == ["wake", "command"]
        assert inner[0]["start_sample"] == r["start_sample"] and inner[1]["end_sample"] == r["end_sample"]
        assert r["text"] == f"hey jarvis, {inner[1]['text']}"
    summary = json.loads((scene / "scenario.json").read_text())
    x, sr = sf.read(scene / summary["audio"], dtype="int16")
    assert sr == FS and x.size == 40 * FS


@needs_espeak
def test_labelled_speech_is_where_the_energy_is(scene):
    x, _ = sf.read(scene / "stream.wav", dtype="float64")
    labels = read_labels(scene / "labels.csv")
    for lab in labels:
        seg = x[lab.start_sample:lab.end_sample]
        if lab.label == "silence":
            core = seg[int(0.1 * FS):-int(0.1 * FS)]
            assert _rms_db(core) < -70  # only the -80 dBFS floor is left
        elif lab.snr_db is not None and lab.label in ("wake", "wake_command", "confusable", "speech"):
            before = x[max(0, lab.start_sample - int(0.4 * FS)):lab.start_sample - int(0.05 * FS)]
            # Over the span, speech + background is above the background alone by about the SNR.
            expect = 10 * np.log10(1 + 10 ** (lab.snr_db / 10))
            assert _rms_db(seg) - _rms_db(before) > min(expect - 4, 6), lab


@needs_espeak
def test_keyword_times_are_sample_exact(tmp_path):
    """No bed, no reverb, (almost) no floor: each labelled span must start and end on the very
    samples where its speech crosses 50 dB below its peak, and nothing may sound outside spans."""
    # SNR is against the -120 dBFS floor, so 95-100 dB puts speech around -20 dBFS.
    rec = _recipe(tmp_path, floor=-120, reverb=0.0, bed="[]", ambient="[]", snr_hi="[95, 100]", snr_lo="[95, 100]")
    out = tmp_path / "exact"
    assert datacli.main(["scenario", "--recipe", str(rec), "--out", str(out), "--quiet"]) == 0
    x, _ = sf.read(out / "stream.wav", dtype="int16")
    a16 = np.abs(x.astype(np.int32))
    covered = np.zeros(x.size, bool)
    for lab in read_labels(out / "labels.csv"):
        if lab.label in ("wake", "command", "confusable", "speech"):
            a, b = lab.start_sample, lab.end_sample
            covered[a - 400:b + 400] = True  # the TTS's own quiet lead-in and tail around the span
            thr = a16[a:b].max() * 10 ** (-50 / 20)
            assert a16[a] >= thr - 1 and a16[b - 1] >= thr - 1, lab
            assert a16[a - 80:a].max() <= thr + 1 and a16[b:b + 80].max() <= thr + 1, lab
    assert not a16[~covered].any()  # digital silence outside the labelled events


@needs_espeak
def test_same_recipe_same_bytes(scene, tmp_path):
    out = tmp_path / "again"
    assert datacli.main(["scenario", "--recipe", str(_recipe(tmp_path)), "--out", str(out), "--quiet"]) == 0
    assert tree_digest(out) == tree_digest(scene)


def test_shipped_recipes_validate_and_eval_scenes_are_an_hour():
    names = {p.stem for p in RECIPES.glob("*.yaml")}
    assert {"demo", "quiet_home", "noisy_kitchen", "office_babble", "train_stream"} <= names
    for name in ("quiet_home", "noisy_kitchen", "office_babble"):
        r = load_recipe(RECIPES / f"{name}.yaml")
        assert r.duration_s >= 3600
        kinds = {e.kind for e in r.events}
        assert {"wake_command", "confusable", "speech", "silence"} <= kinds
    kitchen = load_recipe(RECIPES / "noisy_kitchen.yaml")
    assert {a.kind for a in kitchen.ambient} >= {"tv", "music"}
    assert "babble" in {a.kind for a in load_recipe(RECIPES / "office_babble.yaml").ambient}


def test_the_training_corpus_recipe_validates():
    from sensors.synth.corpus import SynthConfig
    from sensors.synth.recipe_io import load_model

    cfg = load_model(RECIPES / "train_default.yaml", SynthConfig)
    assert cfg.phrase == "hey jarvis" and cfg.n == 10_000


def test_bundled_demo_matches_its_recipe():
    demo = REPO / "datasets" / "demo"
    audio = demo / "stream.flac"
    assert audio.stat().st_size <= 5 * 1024 * 1024
    info = sf.info(str(audio))
    assert info.samplerate == FS and info.format == "FLAC" and 120 <= info.duration <= 180
    labels = read_labels(demo / "labels.csv")
    kinds = {lab.label for lab in labels}
    assert {"wake_command", "wake", "command", "confusable", "speech", "noise", "silence"} <= kinds
    assert sum(lab.label == "wake_command" for lab in labels) >= 3
    summary = json.loads((demo / "scenario.json").read_text())
    assert summary["recipe"] == json.loads(load_recipe(RECIPES / "demo.yaml").model_dump_json())


@pytest.mark.parametrize("text, needle", [
    ("name: x\nduration_s: 10\nevents:\n  - {kind: wake_command, snr_db: [20, 5]}\n",
     "field events.0.snr_db: lower bound 20.0 is above upper bound 5.0 (got [20, 5])"),
    ("name: x\nduration_s: 10\nevents:\n  - {kind: jump, count: 1}\n", "field events.0.kind"),
    ("name: x\nduration_s: 10\nbed:\n  - {kind: pink, level_dbfs: loud}\n", "field bed.0.level_dbfs"),
    ("name: x\nduration_s: 10\nsnr: 5\n", "field snr: unknown field"),
    ("name: x\n", "field duration_s: required field missing"),
    ("name: x\nduration_s: 10\nwake_phrase: ''\n", "field wake_phrase: the wake phrase is empty"),
    ("name: x\nduration_s: 10\nevents: [\n  {kind: wake\n", "YAML syntax error at line"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_bad_recipes_name_file_field_and_value(tmp_path, capsys, text, needle):
    rec = tmp_path / "bad.yaml"
    rec.write_text(text)
    out = tmp_path / "out"
    assert datacli.main(["scenario", "--recipe", str(rec), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and str(rec) in err and len(err.splitlines()) == 1
    assert not out.exists() and no_partials(tmp_path)


def test_yaml_error_gives_line_and_column(tmp_path):
    rec = tmp_path / "bad.yaml"
    rec.write_text("name: x\nduration_s: 10\nbed: [\n  {kind: pink, level_dbfs: -50}\n  oops: 3\n")
    with pytest.raises(RecipeError, match=r"line \d+, column \d+"):
        load_recipe(rec)


def test_missing_recipe(tmp_path, capsys):
    assert datacli.main(["scenario", "--recipe", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err


@needs_espeak
def test_overfull_recipe_is_refused_without_output(tmp_path, capsys):
    rec = tmp_path / "full.yaml"
    rec.write_text("name: full\nduration_s: 3\ntts: {engines: [espeak]}\nevents:\n  - {kind: speech, count: 6}\n")
    out = tmp_path / "out"
    assert datacli.main(["scenario", "--recipe", str(rec), "--out", str(out), "--quiet"]) == 2
    assert "lower the event rates or raise duration_s" in capsys.readouterr().err
    assert not out.exists() and no_partials(tmp_path)
