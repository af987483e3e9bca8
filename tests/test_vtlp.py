"""Vocal-tract-length perturbation of the mel bank (training-time augmentation of the tiny model)."""

import numpy as np
import pytest
from pydantic import ValidationError

from cloud.train.dataset import VtlpLogMel
from cloud.train.recipe import AugmentSpec
from gate.features import LogMel, LogMelSpec, mel_matrix, vtlp_warp

NYQ = 8000.0


def test_warp_keeps_the_band_edges_and_is_continuous_and_monotonic():
    f = np.linspace(0.0, NYQ, 4001)
    for a in (0.9, 0.95, 1.0, 1.05, 1.1):
        w = vtlp_warp(f, a, NYQ)
        assert w[0] == 0.0 and w[-1] == pytest.approx(NYQ)
        assert np.all(np.diff(w) > 0)
        assert np.max(np.abs(np.diff(w))) < 3 * (f[1] - f[0])  # no jump at the knee
        low = f < 4000
        assert np.allclose(w[low], a * f[low])  # below the knee it scales by alpha


def test_no_warp_is_the_nodes_bank():
    assert np.array_equal(mel_matrix(LogMelSpec(), 1.0), mel_matrix(LogMelSpec()))


def _peak_band(lm: LogMel, hz: float) -> int:
    t = np.arange(16000) / 16000
    return int(np.argmax(lm.compute((0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)).mean(axis=0)))


def test_a_warp_above_one_reads_a_formant_in_a_lower_band():
    # The filters move up by alpha, so a 2 kHz tone falls in a lower filter index (a longer vocal tract).
    assert _peak_band(LogMel(warp=1.1), 2000) < _peak_band(LogMel(), 2000) < _peak_band(LogMel(warp=0.9), 2000)


def test_vtlp_featuriser_is_seeded_and_off_at_probability_zero():
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    plain = LogMel().compute(x)
    off = VtlpLogMel(np.random.default_rng(1), 0.0, (0.9, 1.1))
    assert np.array_equal(off.compute(x), plain)
    a = [VtlpLogMel(np.random.default_rng(5), 1.0, (0.9, 1.1)).compute(x) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], plain)


def test_recipe_range_is_checked():
    assert AugmentSpec().vtlp_prob == 0.0
    with pytest.raises(ValidationError, match="vtlp_alpha"):
        AugmentSpec(vtlp_alpha=(0.5, 1.1))
    with pytest.raises(ValidationError, match="vtlp_alpha"):
        AugmentSpec(vtlp_alpha=(1.1, 0.9))
