"""Contract: one log-mel implementation; streaming frame by frame equals batch, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from gate.features import LogMel, LogMelSpec, Pcen, PcenSpec, hz_to_mel, mel_matrix, mel_to_hz
from gate.kws.featurize import Featurizer


def _signal(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("chunks", [[1], [160], [7, 333, 1024], [4000], [159, 161]])
def test_streaming_equals_batch_exactly(chunks):
    x = _signal()
    batch = LogMel().compute(x)
    stream = LogMel()
    parts, i, k = [], 0, 0
    while i < x.size:
        n = chunks[k % len(chunks)]
        parts.append(stream.push(x[i:i + n]))
        i, k = i + n, k + 1
    got = np.concatenate(parts)
    assert got.shape == batch.shape == (LogMelSpec().n_frames(x.size), 40)
    np.testing.assert_array_equal(got, batch)
    assert stream.frames_emitted == batch.shape[0]


def test_reset_restarts_the_stream():
    x = _signal(0.5)
    lm = LogMel()
    first = lm.push(x)
    lm.reset()
    np.testing.assert_array_equal(lm.push(x), first)


def test_int16_and_float_inputs_agree():
    x = _signal(0.5)
    lm = LogMel()
    np.testing.assert_array_equal(lm.compute(x), lm.compute(x.astype(np.float32) / 32768.0))


def test_too_short_gives_no_frames_and_bad_input_is_refused():
    lm = LogMel()
    assert lm.compute(np.zeros(100, np.int16)).shape == (0, 40)
    with pytest.raises(TypeError):
        lm.compute(np.zeros((2, 400), np.int16))
    with pytest.raises(TypeError):
        lm.compute(np.zeros(400, np.int32))


def test_spec_frame_geometry():
    spec = LogMelSpec()
    assert (spec.win, spec.hop, spec.n_fft) == (400, 160, 512)
    assert spec.n_frames(16000) == 98


def test_mel_scale_round_trip_and_filters_cover_the_band():
    f = np.array([0.0, 100.0, 1000.0, 7600.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-6)
    m = mel_matrix(LogMelSpec())
    assert m.shape == (40, 257)
    assert np.all(m.max(axis=1) > 0.5)  # every band has a bin near its peak
    assert np.all(m >= 0)


def test_a_tone_lights_the_band_that_holds_it():
    t = np.arange(16000) / 16000
    feats = LogMel().compute((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    centres = mel_to_hz(np.linspace(hz_to_mel(60.0), hz_to_mel(7600.0), 42))[1:-1]
    assert abs(centres[int(np.argmax(feats.mean(axis=0)))] - 1000) < 120


def test_cross_check_with_librosa_when_available():
    librosa = pytest.importorskip("librosa")
    x = _signal(1.0).astype(np.float32) / 32768.0
    spec = LogMelSpec()
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=60.0, fmax=7600.0, htk=True, norm=None)
    np.testing.assert_allclose(mel_matrix(spec), ref, atol=1e-5)
    assert LogMel(spec).compute(x).shape[1] == ref.shape[0]


@pytest.mark.parametrize("kind", ["logmel", "analog_envelopes", "pcen"])
def test_featurizer_streaming_equals_batch(kind):
    x = _signal(1.5)
    fz = Featurizer(kind)
    batch = fz.compute(x)
    fz.reset()
    parts = [fz.push(x[i:i + 777]) for i in range(0, x.size, 777)]
    np.testing.assert_allclose(np.concatenate(parts), batch, rtol=0, atol=1e-5)
    ends = fz.frame_end_s(np.arange(batch.shape[0]))
    assert np.all(np.diff(ends) > 0) and ends[-1] <= x.size / 16000 + 1e-9


def test_pcen_streaming_is_bit_exact_and_matches_librosa():
    librosa = pytest.importorskip("librosa")
    lm = LogMel().compute(_signal(1.5))
    spec = PcenSpec()
    batch = Pcen(spec).compute(lm)
    p = Pcen(spec)
    parts = np.concatenate([p.push(lm[i:i + 7]) for i in range(0, lm.shape[0], 7)])
    assert np.array_equal(parts, batch)  # the node's frame-by-frame features are the training's
    e = np.exp(lm.astype(np.float64)).T
    zi = scipy.signal.lfilter_zi([spec.smooth], [1, spec.smooth - 1]) * e[:, :1]  # smoother starts at frame 0
    ref = librosa.pcen(e, b=spec.smooth, gain=spec.alpha, bias=spec.delta, power=spec.root, eps=spec.eps,
                       zi=zi, axis=-1)
    np.testing.assert_allclose(batch, ref.T, rtol=1e-4, atol=1e-5)


def test_pcen_divides_out_the_level_that_log_mel_keeps():
    x = _signal(2.0).astype(np.float32) / 32768.0
    near, far = LogMel().compute(x), LogMel().compute(x * 0.1)  # 20 dB further away
    tail = slice(100, None)  # after the smoother has settled
    assert np.median(np.abs(near - far)[tail]) > 4.0  # log(100): a plain offset
    pn, pf = Pcen().compute(near), Pcen().compute(far)
    assert np.median(np.abs(pn - pf)[tail]) < 0.1 * np.median(np.abs(pn[tail]))


def test_pcen_compute_leaves_a_stream_in_progress_alone():
    lm = LogMel().compute(_signal(1.0))
    p = Pcen()
    first = p.push(lm[:50])
    p.compute(lm)
    np.testing.assert_array_equal(np.concatenate([first, p.push(lm[50:])]), Pcen().compute(lm))
    with pytest.raises(ValueError, match="smooth"):
        Pcen(PcenSpec(smooth=0.0))
