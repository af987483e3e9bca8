from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sensors import loaders
from sensors.synth.errors import DataError

DATA = Path(__file__).resolve().parent / "data"


def test_speech_commands_layout_and_splits():
    clips = loaders.speech_commands(DATA / "speech_commands_mini")
    got = {(c.path.parent.name + "/" + c.path.name, c.label, c.split) for c in clips}
    assert ("yes/e5f6a7b8_nohash_0.wav", "yes", "validation") in got
    assert ("no/c9d0e1f2_nohash_0.wav", "no", "validation") in got
    assert ("hey_jarvis/e5f6a7b8_nohash_0.wav", "hey_jarvis", "test") in got
    assert ("yes/a1b2c3d4_nohash_0.wav", "yes", "train") in got
    assert ("_background_noise_/white_noise.wav", "_background_noise_", "train") in got
    assert not any(c.path.suffix == ".md" for c in clips)
    assert {c.meta.get("speaker") for c in clips if c.label == "yes"} == {"a1b2c3d4", "e5f6a7b8"}
    assert len(loaders.speech_commands(DATA / "speech_commands_mini", include_background=False)) == len(clips) - 1
    x = clips[0].read()
    assert x.dtype == np.int16 and x.ndim == 1


def test_speech_commands_without_lists_is_all_train(tmp_path, caplog):
    d = tmp_path / "sc"
    (d / "yes").mkdir(parents=True)
    (d / "yes" / "x_nohash_0.wav").write_bytes((DATA / "speech_commands_mini/yes/a1b2c3d4_nohash_0.wav").read_bytes())
    clips = loaders.speech_commands(d)
    assert [c.split for c in clips] == ["train"] and "validation_list.txt missing" in caplog.text


def test_folder_with_csv():
    clips = loaders.folder_csv(DATA / "folder_csv_mini" / "labels.csv")
    by_name = {c.path.name: c for c in clips}
    assert by_name["kitchen_01.wav"].label == "hey_jarvis" and by_name["kitchen_01.wav"].split == "train"
    assert by_name["kitchen_02.flac"].split == "validation"      # "val" is an alias
    assert by_name["lowrate.wav"].split == "train"                 # empty split: the default
    assert by_name["lowrate.wav"].meta == {"speaker": "you"}
    assert by_name["lowrate.wav"].read().size == 800               # 8 kHz resampled to 16 kHz
    assert loaders.detect(DATA / "folder_csv_mini") == clips


def test_our_manifest():
    clips = loaders.manifest(DATA / "manifest_mini")
    assert [(c.label, c.split) for c in clips] == [("confusable", "validation"), ("noise", "test"), ("wake", "train")]
    assert clips[2].meta["text"] == "hey jarvis" and clips[2].meta["engine"] == "espeak"
    assert loaders.detect(DATA / "manifest_mini") == clips
    assert {s: len(v) for s, v in loaders.by_split(clips).items()} == {"train": 1, "validation": 1, "test": 1}


@pytest.mark.parametrize("csv_text, needle", [
    ("file,label\na.wav,x\n", "missing column(s) path"),
    ("path,label\naudio/nothere.wav,x\n", "labels.csv:2: audio file 'audio/nothere.wav' not found"),
    ("path,label,split\naudio/kitchen_01.wav,x,holdout\n", "unknown split 'holdout'"),
    ("path,label\naudio/kitchen_01.wav,\n", "empty path or label"),
    ("path,label\n", "lists no clips"),
])
def test_bad_csv_names_file_and_line(tmp_path, csv_text, needle):
    d = tmp_path / "f"
    (d / "audio").mkdir(parents=True)
    (d / "audio" / "kitchen_01.wav").write_bytes((DATA / "folder_csv_mini/audio/kitchen_01.wav").read_bytes())
    (d / "labels.csv").write_text(csv_text)
    with pytest.raises(DataError, match="labels.csv") as e:
        loaders.folder_csv(d / "labels.csv")
    assert needle in str(e.value)


def test_incomplete_corpus_and_unknown_layout(tmp_path):
    (tmp_path / "clips").mkdir()
    with pytest.raises(DataError, match="not a known dataset layout"):
        loaders.detect(tmp_path)
    with pytest.raises(DataError, match="no manifest.csv"):
        loaders.manifest(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        loaders.speech_commands(tmp_path / "nope")
