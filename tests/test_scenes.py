"""The mixing and placement primitives of the generated scenes (sensors/scenes.py), the talker
chains and the statistical room they are built with."""

from __future__ import annotations

import numpy as np
import pytest

from sensors.scenes import Slots, blocks, overlap, overlay
from sensors.synth import augment, noise, rooms

SR = 16_000


def test_blocks_cover_the_stream_once():
    assert list(blocks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(blocks(8, 4)) == [(0, 4), (4, 8)]
    assert list(blocks(0, 4)) == []


@pytest.mark.parametrize(("at", "offset", "span"), [
    (2, 0, (2, 5)),      # inside
    (-2, 0, (0, 1)),     # starts before the buffer
    (8, 0, (8, 10)),     # runs past its end
    (12, 10, (12, 15)),  # a block that starts at sample 10
    (3, 10, (10, 6)),    # ended before the block: nothing added
    (20, 0, (20, 10)),   # starts after the buffer: nothing added
])
def test_overlay_adds_only_where_the_sound_and_the_buffer_meet(at, offset, span):
    buf = np.zeros(10)
    x = np.arange(1.0, 4.0)
    assert overlay(buf, x, at, offset=offset, gain=2.0) == span
    want = np.zeros(10)
    for i, v in enumerate(x):
        if 0 <= at + i - offset < 10:
            want[at + i - offset] = 2 * v
    np.testing.assert_array_equal(buf, want)


def test_overlap_is_empty_for_apart_spans():
    assert overlap(0, 10, 4, 20) == (4, 10)
    lo, hi = overlap(0, 10, 12, 20)
    assert hi <= lo


def test_slots_keep_taken_seconds_busy():
    s = Slots(60)
    np.testing.assert_array_equal(s.starts, np.arange(5, 50, 8))
    s.take(13)
    assert s.free() == [5, 21, 29, 37, 45]  # 12-18 busy: the slot at 13 only
    assert not s.clear(15) and not s.clear(8) and s.clear(19)
    assert not s.clear(56)  # fewer than 5 s before the end


def test_slots_reach_into_a_span_the_end_of_the_scene_cuts():
    s = Slots(60)
    s.take(45)  # 44-50 busy
    assert s.reaches(40, 5) and s.reaches(50, 3) and not s.reaches(51, 3) and not s.reaches(38, 6)
    assert not s.reaches(58, 5) and not s.clear(58, 5)  # past the end: nothing busy, but not clear either
    s.take(57)
    assert s.reaches(58, 5)


def test_chain_talkers_lays_utterances_end_to_end_with_gaps():
    u = np.ones(1000, np.float32)
    out = noise.chain_talkers(np.zeros(20_000, np.float32), np.random.default_rng(0), [u], 1,
                              start_s=0.01, gap_s=(0.05, 0.05))
    on = np.flatnonzero(np.diff(np.concatenate([[0.0], out, [0.0]])) > 0)
    assert on[0] < 0.01 * SR and np.all(np.diff(on) == 1000 + 0.05 * SR)
    assert set(np.unique(out)) == {0.0, 1.0}
    quiet = noise.chain_talkers(np.zeros(20_000), np.random.default_rng(0), [u], 1, start_s=0.01,
                                gap_s=(0.05, 0.05), gain=(0.5, 0.6))
    assert 0.5 <= quiet.max() <= 0.6


def test_statistical_room_decays_at_its_rt60():
    h = rooms.statistical_rir(np.random.default_rng(3), rt60_s=(0.5, 0.5))
    assert h[0] == 1.0 and h.size == int(0.5 * SR)
    assert abs(rooms.rt60_estimate(h[1:]) - 0.5) < 0.1


def test_reverb_keeps_length_and_peak():
    x = np.zeros(4000, np.float32)
    x[100] = 0.5
    y = augment.reverb(x, np.random.default_rng(1))
    assert y.size == x.size and y.dtype == np.float32
    assert np.max(np.abs(y)) == pytest.approx(0.5, rel=1e-6) and np.any(y[101:] != 0)


def test_unknown_background_is_named():
    with pytest.raises(ValueError, match="'garage'.*known: white"):
        augment.background("garage", 100, np.random.default_rng(0))
