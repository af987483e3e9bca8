"""cloud.score_models: the side-by-side sweep of candidate tiny models (real shipped model, generated scene)."""

import argparse
import itertools

import numpy as np
import pytest

from cloud import score_models
from cloud.train.scenes import Scene
from gate.kws.config import KwsConfig
from gate.kws.stage import default_model_path

SR = 16_000


def _scene() -> Scene:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(40 * SR) * 300).astype(np.int16)
    return Scene(name="noise", audio=audio, keywords=[(10.0, 10.8), (25.0, 25.8)])


def test_sweep_alone_equals_a_check_that_passes_everything_and_a_rejecting_check_leaves_nothing():
    cfg = KwsConfig(model_path=str(default_model_path("logmel")), feature_kind="logmel")
    scenes = [_scene()]
    passes = score_models.sweep(cfg, scenes, lambda i, t: True)
    rejects = score_models.sweep(cfg, scenes, lambda i, t: False)
    assert [r["threshold"] for r in passes] == sorted(r["threshold"] for r in passes)
    for p, r in zip(passes, rejects, strict=True):
        assert (p["verified_miss"], p["verified_fa_per_hour"]) == (p["miss"], p["fa_per_hour"])
        assert r["verified_miss"] == 1.0 and r["verified_fa_per_hour"] == 0.0
        assert p["miss"] == 1.0  # nobody says the phrase in noise
    fa = [p["fa_per_hour"] for p in passes]
    assert all(a >= b for a, b in itertools.pairwise(fa))  # fewer false accepts as the threshold rises


def test_fewest_misses_within_a_false_accept_rate():
    rows = [{"threshold": 0.3, "miss": 0.1, "fa_per_hour": 9.0, "verified_miss": 0.2, "verified_fa_per_hour": 3.0},
            {"threshold": 0.9, "miss": 0.3, "fa_per_hour": 2.0, "verified_miss": 0.3, "verified_fa_per_hour": 1.0}]
    assert score_models.fewest_misses_within(rows, 5.0, verified=False) == 0.3
    assert score_models.fewest_misses_within(rows, 5.0, verified=True) == 0.2
    assert score_models.fewest_misses_within(rows, 0.5, verified=True) is None


def test_a_model_argument_names_an_existing_file(tmp_path):
    m = tmp_path / "m.tflite"
    m.write_bytes(b"x")
    assert score_models._model(f"a={m}") == ("a", m)
    for bad in ("a", f"={m}", f"a={tmp_path / 'missing.tflite'}"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=MODEL.tflite"):
            score_models._model(bad)


def test_a_scene_through_a_channel_keeps_its_labels_and_loses_the_band_above_4khz():
    s = _scene()
    t = score_models.through(s, "narrowband", 1)
    assert t.keywords == s.keywords and t.audio.dtype == np.int16 and t.audio.size == s.audio.size
    spec = np.abs(np.fft.rfft(t.audio.astype(np.float64)))
    f = np.fft.rfftfreq(t.audio.size, 1 / SR)
    assert spec[f > 4300].mean() < 0.05 * spec[(f > 300) & (f < 3500)].mean()
    assert np.array_equal(t.audio, score_models.through(s, "narrowband", 1).audio)
