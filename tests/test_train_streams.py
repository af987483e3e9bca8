"""Training streams: scene-like audio whose every window is labelled as the detector meets it, and the
hard-negative miner. Pure numpy (no TensorFlow, no TTS): renders are tone bursts."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.train import dataset, scenes
from cloud.train.corpus import SpeechRender
from gate.kws.featurize import Featurizer

SR = 16_000


def _renders(kind: str, n: int, f0: float, seconds: float) -> list[SpeechRender]:
    t = np.arange(int(seconds * SR)) / SR
    return [SpeechRender.of_label(f"{kind}{i}", "test:voice", kind,
                                  (0.5 * np.sin(2 * np.pi * (f0 + 20 * i) * t)).astype(np.float32))
            for i in range(n)]


def _scene(seed: int = 0, minutes: float = 2.0, **kw) -> scenes.Scene:
    return scenes.build("quiet_home", minutes=minutes, keywords_per_hour=240, rng=np.random.default_rng(seed),
                        positives=_renders("positive", 3, 700, 0.8), others=_renders("speech", 4, 300, 1.5),
                        commands=_renders("command:lights_on", 2, 1500, 0.6),
                        confusables=_renders("confusable", 2, 2500, 0.7), confusables_per_hour=60, **kw)


def test_scene_records_every_render_and_keywords_are_its_positives():
    s = _scene()
    kinds = {k for k, _, _ in s.events}
    assert {"positive", "command", "speech", "confusable"} <= kinds
    assert [(a, b) for k, a, b in s.events if k == "positive"] == s.keywords
    a, b = s.keywords[0]
    assert s.what_at((a + b) / 2) == "positive"
    assert s.what_at(0.01) == "background"


def test_default_options_build_the_same_scene_as_before_the_training_options_existed():
    # Evaluation scenes must not change when training-stream options are left at their defaults.
    a = _scene(seed=5)
    b = _scene(seed=5, talk_gap_s=6.0, level_jitter_db=0.0, extra_talk=())
    assert np.array_equal(a.audio, b.audio) and a.keywords == b.keywords


def test_training_options_change_the_stream():
    extra = [np.full(SR, 0.1, np.float32)]
    base = _scene(seed=5)
    assert not np.array_equal(base.audio, _scene(seed=5, level_jitter_db=10.0).audio)
    busy = _scene(seed=5, talk_gap_s=1.0, extra_talk=extra)
    talk = lambda s: sum(b - a for k, a, b in s.events if k == "speech")  # noqa: E731
    assert talk(busy) > 1.5 * talk(base)


def test_keyword_density_is_capped_by_the_slot_grid():
    s = scenes.build("quiet_home", minutes=1.0, keywords_per_hour=450, rng=np.random.default_rng(1),
                     positives=_renders("positive", 1, 700, 0.8), others=_renders("speech", 1, 300, 1.0),
                     commands=_renders("command:x", 1, 1500, 0.5))
    assert len(s.keywords) == len(range(5, 50, 8))


def test_stream_labels_fire_only_just_after_each_phrase():
    s = _scene()
    fz = Featurizer("logmel")
    st = dataset.stream(s, fz, fire_after_s=(0.05, 0.35), quiet_before_s=0.2, quiet_after_s=1.0)
    assert st.feats.shape[1] == fz.dim
    end_s = fz.frame_end_s(np.arange(st.feats.shape[0]))
    pos_t, neg_t = end_s[st.pos_ends - 1], end_s[st.neg_ends - 1]
    ends = np.array([b for _, b in s.keywords])
    d_pos = pos_t[:, None] - ends[None, :]
    assert np.all(np.any((d_pos >= 0.05) & (d_pos <= 0.35), axis=1))
    d_neg = neg_t[:, None] - ends[None, :]
    assert not np.any((d_neg >= -0.2) & (d_neg <= 1.0))
    # Every phrase has positives (about 30 rows of 10 ms each), and windows inside the phrase are negatives.
    assert st.pos_ends.size >= 25 * len(s.keywords)
    a, b = s.keywords[0]
    assert np.any((neg_t > a) & (neg_t < b - 0.2))
    assert not np.intersect1d(st.pos_ends, st.neg_ends).size


def test_windows_are_the_feature_rows_before_each_end():
    feats = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    w = dataset.windows(feats, np.array([10, 50]), 10)
    assert w.shape == (2, 10, 3)
    assert np.array_equal(w[0], feats[0:10]) and np.array_equal(w[1], feats[40:50])


def test_sample_ends_keeps_full_windows_and_the_asked_fractions():
    st = dataset.Stream(np.zeros((10_000, 2), np.float32), np.arange(50, 400), np.arange(1, 10_001))
    (pos, neg), = dataset.sample_ends([st], np.random.default_rng(0), frames=100, pos_every=3, neg_every=10)
    assert pos.min() >= 100 and neg.min() >= 100
    assert np.array_equal(pos, np.arange(100, 400)[::3])
    assert 850 < neg.size < 1150  # 9,901 candidates / 10, +-5 sigma
    x, y = dataset.gather([st], [(pos, neg)], 100)
    assert x.shape == (pos.size + neg.size, 100, 2) and y.sum() == pos.size


def test_miner_keeps_the_highest_scoring_negatives_above_threshold():
    feats = np.zeros((1000, 1), np.float32)
    feats[:, 0] = np.arange(1000) / 1000.0  # a window's score is its last row's value
    st = dataset.Stream(feats, np.zeros(0, np.int64), np.arange(1, 1001))

    def predict(w):
        return w[:, -1, 0]

    hard = dataset.mine(predict, [st], 10, stride=1, threshold=0.9, limit=20)
    assert hard.shape == (20, 10, 1)
    assert np.all(hard[:, -1, 0] >= 0.98)
    assert dataset.mine(predict, [st], 10, stride=1, threshold=0.9999, limit=20).shape == (0, 10, 1)


@pytest.mark.parametrize("stride", [1, 3])
def test_miner_scores_windows_at_the_node_stride(stride):
    st = dataset.Stream(np.zeros((300, 1), np.float32), np.zeros(0, np.int64), np.arange(1, 301))
    seen = []

    def predict(w):
        seen.append(len(w))
        return np.zeros(len(w))

    dataset.mine(predict, [st], 10, stride=stride, threshold=0.5, limit=5, chunk=64)
    assert sum(seen) == np.arange(10, 301)[::stride].size and max(seen) <= 64


@pytest.mark.parametrize("factor", [0.85, 1.0, 1.15])
def test_speed_perturbation_moves_pitch_and_tempo_together(factor):
    from sensors.synth import augment

    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * 500 * t).astype(np.float32)
    y = augment.speed(x, np.random.default_rng(0), factor, factor)
    assert y.dtype == np.float32
    assert abs(y.size - SR / factor) <= 2
    peak_hz = np.argmax(np.abs(np.fft.rfft(y))) * SR / y.size
    assert abs(peak_hz - 500 * factor) < 3, peak_hz


def test_no_perturbation_draws_nothing_when_disabled():
    from cloud.train.recipe import AugmentSpec

    rng = np.random.default_rng(0)
    x = np.ones(100, np.float32)
    assert dataset.perturb(x, rng, AugmentSpec(speed_prob=0.0)) is x
    assert rng.random() == np.random.default_rng(0).random()


@pytest.mark.parametrize("start", [-0.2, 0.0, 0.25])
def test_command_clips_start_where_asked_and_a_late_fire_cuts_the_command(monkeypatch, start):
    from cloud.train.recipe import AugmentSpec

    monkeypatch.setattr(dataset, "_dress", lambda x, *a, **k: x)  # placement only: no noise, reverb or gain
    speech = np.arange(1, 8001, dtype=np.float32)  # 0.5 s, every sample distinct
    r = SpeechRender("c", "test:voice", "command", speech, command="on")
    clips = dataset.command_clips([r], ["on", "_unknown", "_silence"], clip_s=1.0, aug=AugmentSpec(copies=1),
                                  rng=np.random.default_rng(0), babble_pool=[], noise_only=0, start_s=(start, start))
    x = clips.audio[0]
    assert x.size == SR and clips.labels[0] == 0
    at = int(start * SR)
    if at < 0:  # the window opened after the command began: its first 0.2 s are gone
        np.testing.assert_array_equal(x[: speech.size + at], speech[-at:])
        assert not x[speech.size + at:].any()
    else:
        assert not x[:at].any()
        np.testing.assert_array_equal(x[at:at + speech.size], speech)


def test_command_windows_read_from_the_fire_time_with_the_command_said():
    s = _scene(seed=4, minutes=3.0)
    assert s.keyword_commands and set(s.keyword_commands) == {"lights_on"}
    classes = ["lights_on", "_unknown", "_silence"]
    w = dataset.command_windows(s, classes, clip_s=1.0, rng=np.random.default_rng(0), delay_s=(0.1, 0.1))
    k = len(s.keywords)
    assert w.audio.shape[1] == SR and list(w.labels[:k]) == [0] * k and set(w.labels[k:]) <= {1}
    assert 0 < len(w) - k <= k  # as many other-talk windows as commands at most
    end = s.keywords[0][1]
    a = int((end + 0.1) * SR)
    np.testing.assert_allclose(w.audio[0], s.audio[a:a + SR] / 32768.0)
    both = dataset.concat([w, w])
    assert len(both) == 2 * len(w) and both.kinds[:k] == w.kinds[:k]
