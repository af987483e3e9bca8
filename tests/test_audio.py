import numpy as np
import pytest

from gate_core.audio import Frame, Framer, float_to_int16


def test_frame_is_frozen_and_derives_its_properties():
    f = Frame(samples=np.arange(160, dtype=np.int16), sample_rate=16000, seq=3, t0_s=0.03)
    assert f.duration_s == pytest.approx(0.01)
    assert f.t1_s == pytest.approx(0.04)
    assert f.nbytes == 320 and f.n_samples == 160
    with pytest.raises(ValueError):
        f.samples[0] = 1  # read-only view: a frame cannot change after it is emitted
    with pytest.raises(AttributeError):
        f.seq = 4


@pytest.mark.parametrize("bad", [np.zeros(10, np.float32), np.zeros((2, 5), np.int16), [1, 2, 3]])
def test_frame_rejects_anything_but_1d_int16(bad):
    with pytest.raises(TypeError):
        Frame(samples=bad, sample_rate=16000, seq=0, t0_s=0.0)


@pytest.mark.parametrize("chunk", [1, 7, 159, 160, 161, 1000, 16000])
def test_framer_output_is_independent_of_chunk_size(chunk):
    x = np.random.default_rng(0).integers(-32768, 32767, 16000 + 37, dtype=np.int16)
    framer = Framer(frame_samples=160)
    frames = []
    for i in range(0, len(x), chunk):
        frames += framer.push(x[i:i + chunk])
    frames += framer.flush()
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert len(frames) == 101
    joined = np.concatenate([f.samples for f in frames])
    assert np.array_equal(joined[:len(x)], x) and not joined[len(x):].any()
    # the clock comes from sample counts: no drift however long the stream
    assert frames[-1].t0_s == 100 * 160 / 16000


def test_framer_clock_does_not_drift_over_a_day():
    framer = Framer(frame_samples=160)
    framer._seq = 24 * 3600 * 100  # one day of 10 ms frames
    (frame,) = framer.push(np.zeros(160, np.int16))
    assert frame.t0_s == 86400.0


def test_framer_reset_and_empty_flush():
    framer = Framer(frame_samples=4)
    assert framer.flush() == []
    framer.push(np.ones(6, np.int16))
    assert framer.pending_samples == 2
    framer.reset()
    assert framer.pending_samples == 0
    assert framer.push(np.ones(4, np.int16))[0].seq == 0


def test_float_to_int16_clips_at_full_scale():
    assert float_to_int16(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0])).tolist() == [
        -32768, -32768, 0, 16384, 32767, 32767]
