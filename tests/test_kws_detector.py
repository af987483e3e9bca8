"""Detector and KWS stage: smoothing, threshold, consecutive hits and refractory period in audio seconds."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from gate.kws.config import KwsConfig
from gate_core.detector import Detector


def _det(**kw):
    base = dict(threshold=0.5, smoothing_s=0.0, min_consecutive=1, refractory_s=0.0, period_s=0.03)
    base.update(kw)
    return Detector(**base)


def _times(n, period=0.03):
    return (np.arange(n) + 1) * period


def test_single_hit_fires_at_its_time():
    p = np.array([0.1, 0.2, 0.9, 0.1])
    dets = _det().run(p, _times(4))
    assert [round(d.t_s, 2) for d in dets] == [0.09]


def test_min_consecutive_needs_a_run():
    p = np.array([0.9, 0.1, 0.9, 0.9, 0.1])
    assert [round(d.t_s, 2) for d in _det(min_consecutive=2).run(p, _times(5))] == [0.12]


def test_smoothing_suppresses_a_one_inference_spike():
    p = np.array([0.0, 0.0, 1.0, 0.0, 0.0])
    assert _det(smoothing_s=0.09).run(p, _times(5)) == []
    assert len(_det(smoothing_s=0.0).run(p, _times(5))) == 1


def test_refractory_counts_audio_seconds():
    p = np.ones(100)
    t = _times(100)  # 3 s of audio at 30 ms per inference
    dets = _det(refractory_s=1.0).run(p, t)
    gaps = np.diff([d.t_s for d in dets])
    assert len(dets) == 3 and np.all(gaps >= 1.0 - 1e-9)
    # Same posteriors at another inference period: still one detection per refractory second.
    dets = _det(refractory_s=1.0, period_s=0.01).run(np.ones(300), _times(300, 0.01))
    assert len(dets) == 3


def test_streaming_updates_equal_batch_run():
    rng = np.random.default_rng(1)
    p = rng.random(500)
    t = _times(500)
    batch = _det(smoothing_s=0.09, min_consecutive=2, refractory_s=0.5).run(p, t)
    d = _det(smoothing_s=0.09, min_consecutive=2, refractory_s=0.5)
    stream = [x for x in (d.update(a, b) for a, b in zip(p, t, strict=True)) if x is not None]
    assert stream == batch


def test_config_fields_are_described_and_bounded():
    for name, field in KwsConfig.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        KwsConfig(threshold=1.5)
    with pytest.raises(ValidationError):
        KwsConfig(refractory_s=-1)
    with pytest.raises(ValidationError):
        KwsConfig(feature_kind="mfcc")
    with pytest.raises(ValidationError):
        KwsConfig(smoothing_s=0.01, stride_frames=3)  # shorter than one inference
    with pytest.raises(ValidationError):
        KwsConfig(typo=1)
    assert KwsConfig().model_path is None
