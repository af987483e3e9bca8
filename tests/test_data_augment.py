from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from sensors.synth import noise, rooms
from sensors.synth.augment import CHANNELS, AugmentConfig, RirBank, augment, band_sos, channel

FS = 16_000


def _speech_like(rng, n=9000):
    t = np.arange(n) / FS
    env = np.sin(np.pi * t / t[-1]) ** 2
    x = env * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 720 * t) + 0.1 * rng.standard_normal(n))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _run(cfg, B=120, seed=0, keep_parts=True):
    rng = np.random.default_rng(seed)
    rl = [rooms.random_room(np.random.default_rng(i)) for i in range(4)]
    rirs = [rooms.rir(r, np.random.default_rng(i)) for i, r in enumerate(rl)]
    u = _speech_like(np.random.default_rng(1))
    bank = RirBank(rirs, [r.describe() for r in rl], cfg.n_samples)
    return augment([u] * B, rng, cfg, rirs=bank, babble_speech=[u, u[::-1].copy()], keep_whole=[True] * B,
                   keep_parts=keep_parts)


def test_snr_achieved_in_the_written_int16_clip():
    cfg = AugmentConfig(snr_db=(-5, 30), p_clean=0.0, p_reverb=0.5, p_band=0.5)
    b = _run(cfg)
    checked = 0
    for i, info in enumerate(b.info):
        a, e = (int(round(x * FS)) for x in info["speech_s"])
        s = b.speech[i, a:e].astype(np.float64)
        n = b.audio[i, a:e] / 32768.0 - s  # what is in the file that is not speech
        got = 10 * np.log10(np.mean(s ** 2) / np.mean(n ** 2))
        assert abs(got - info["snr_db"]) <= 0.5, (i, got, info)
        assert -5 <= info["snr_db"] <= 30
        checked += 1
    assert checked == 120
    kinds = {info["noise"]["kind"] for info in b.info}
    assert kinds == set(noise.KINDS)


def test_same_seed_same_clips_and_different_seed_differs():
    cfg = AugmentConfig()
    a, b = _run(cfg, B=30, seed=5, keep_parts=False), _run(cfg, B=30, seed=5, keep_parts=False)
    c = _run(cfg, B=30, seed=6)
    assert np.array_equal(a.audio, b.audio) and a.info == b.info
    assert not np.array_equal(a.audio, c.audio)


def test_keyword_stays_whole_inside_the_clip_with_time_shift():
    b = _run(AugmentConfig(p_reverb=0.0), B=50)
    shifts = {info["shift_s"] for info in b.info}
    assert len(shifts) > 10
    for info in b.info:
        a, e = info["speech_s"]
        assert 0 <= a and e <= 1.0 and e - a == pytest.approx(9000 / FS, abs=1e-3)


def test_gain_and_peak_limits():
    b = _run(AugmentConfig(level_dbfs=(-20, -10), peak_dbfs=-1.0))
    assert np.abs(b.audio).max() <= 32768 * 10 ** (-1 / 20) + 1


@pytest.mark.parametrize("rt60", [0.3, 0.7])
def test_room_rir_has_the_target_reverb_tail(rt60):
    room = rooms.Room((6.0, 4.5, 2.8), (1.5, 1.2, 1.6), (4.0, 3.0, 1.2), rt60)
    h = rooms.rir(room, np.random.default_rng(0))
    direct = int(round(room.distance_m / rooms.SPEED_OF_SOUND * FS))
    assert abs(h[direct - 1:direct + 2]).max() == pytest.approx(1.0, abs=0.35)
    assert rooms.rt60_estimate(h) == pytest.approx(rt60, rel=0.25)
    # A click convolved with the room rings on long after it: the tail.
    x = np.zeros(FS, np.float32)
    x[100] = 1
    y = signal.fftconvolve(x, h)[:FS]
    tail = y[100 + direct + int(0.1 * FS):100 + direct + int(0.2 * FS)]
    assert np.sqrt(np.mean(tail ** 2)) > 1e-4


def test_band_limit_removes_out_of_band_energy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(FS)
    for kind in ("telephone", "lowpass", "highpass"):
        sos, p = band_sos(kind, rng)
        y = signal.sosfilt(sos, x)
        f, pxx = signal.welch(y, FS, nperseg=1024)
        f0, p0 = signal.welch(x, FS, nperseg=1024)
        ratio = 10 * np.log10(pxx / p0)
        if "high_hz" in p:
            assert ratio[f > p["high_hz"] * 1.6].max() < -15
        if "low_hz" in p:
            assert ratio[(f > 5) & (f < p["low_hz"] / 2.5)].max() < -15
        passband = (f > p.get("low_hz", 0) * 1.5) & (f < p.get("high_hz", 8000) / 1.5)
        assert abs(np.median(ratio[passband])) < 2


def test_narrowband_channel_is_an_8khz_source_and_every_channel_keeps_the_length():
    x = np.random.default_rng(4).standard_normal(FS).astype(np.float32)
    y = channel(x, np.random.default_rng(0), "narrowband")
    f, pxx = signal.welch(y, FS, nperseg=1024)
    _, p0 = signal.welch(x, FS, nperseg=1024)
    ratio = 10 * np.log10(pxx / p0)
    assert ratio[f > 4500].max() < -30 and abs(np.median(ratio[(f > 300) & (f < 3500)])) < 1
    for kind in CHANNELS:
        out = channel(x, np.random.default_rng(1), kind)
        assert out.shape == x.shape and out.dtype == np.float32 and not np.allclose(out, x)
    drawn = {channel(x, np.random.default_rng(s)).tobytes() for s in range(12)}
    assert len(drawn) > 3  # kind None draws among the channels


@pytest.mark.parametrize("kind", noise.STATIONARY)
def test_stationary_noise_is_chunk_size_invariant_and_unit_rms(kind):
    whole = noise.NoiseStream(kind, np.random.default_rng(9)).read(48_000)
    s = noise.NoiseStream(kind, np.random.default_rng(9))
    parts = np.concatenate([s.read(n) for n in (1, 999, 16_000, 31_000)], axis=1)
    assert np.allclose(whole, parts, atol=1e-5)
    assert 0.8 < np.sqrt(np.mean(whole ** 2)) < 1.25


def test_pink_and_brown_slopes():
    for kind, slope in (("pink", -3.0), ("brown", -6.0)):
        x = noise.NoiseStream(kind, np.random.default_rng(0)).read(FS * 8)[0]
        f, p = signal.welch(x, FS, nperseg=8192)
        band = (f > 100) & (f < 4000)
        fit = np.polyfit(np.log2(f[band]), 10 * np.log10(p[band]), 1)[0]
        assert fit == pytest.approx(slope, abs=0.8)


def test_config_rejects_bad_ranges():
    with pytest.raises(ValueError, match="snr_db"):
        AugmentConfig(snr_db=(10, 0))
    with pytest.raises(ValueError, match="noise_weights"):
        AugmentConfig(noise_weights={"purple": 1.0})


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 100_000),
       w=st.lists(st.floats(0, 10, allow_nan=False), min_size=4, max_size=4).filter(lambda w: sum(w) > 0))
def test_label_counts_add_up_exactly(n, w):
    from sensors.synth.corpus import LABELS, label_counts

    counts = label_counts(n, dict(zip(LABELS, w, strict=True)))
    assert sum(counts.values()) == n
    for lab, wi in zip(LABELS, w, strict=True):
        assert abs(counts[lab] - n * wi / sum(w)) < 1 + 1e-9


def test_split_is_a_stable_hash():
    from sensors.synth.corpus import split_of

    splits = [split_of(f"espeak:en-us+v{i}", 0, (0.8, 0.1, 0.1)) for i in range(2000)]
    assert splits == [split_of(f"espeak:en-us+v{i}", 0, (0.8, 0.1, 0.1)) for i in range(2000)]
    assert 0.75 < splits.count("train") / 2000 < 0.85


def test_music_background_is_unit_rms_tonal_and_outside_the_default_draw():
    from sensors.synth.augment import BACKGROUNDS, TRAIN_BACKGROUNDS, background
    x = background("music", 4 * FS, np.random.default_rng(0))
    assert x.size == 4 * FS and np.std(x) == pytest.approx(1.0, rel=1e-3)
    f, pxx = signal.welch(x, FS, nperseg=4096)
    assert pxx.max() > 50 * np.median(pxx)  # harmonic peaks stand far above the floor
    assert "music" in BACKGROUNDS and "music" not in TRAIN_BACKGROUNDS
    with pytest.raises(ValueError, match="unknown background kind 'jazz'"):
        background("jazz", FS, np.random.default_rng(0))
