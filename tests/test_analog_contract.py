"""Contract: any chunking gives the whole-signal answer; reset() is power-up; the clock is audio."""

from __future__ import annotations

import numpy as np
import pytest
from analog_helpers import SR, burst_scene, config
from hypothesis import given, settings
from hypothesis import strategies as st

from gate_core.audio import float_to_int16
from sensors.analog import AnalogBlock, AnalogFrontEnd, run_file
from sensors.wavfile import write_audio

SCENE = burst_scene()
CFG = config(**{"nonideal.seed": 2})


def whole(x=SCENE, cfg=CFG) -> AnalogBlock:
    return AnalogFrontEnd(config=cfg).process(x)


def chunked(sizes, x=SCENE, cfg=CFG) -> AnalogBlock:
    fe = AnalogFrontEnd(config=cfg)
    blocks, i, k = [], 0, 0
    while i < x.size:
        n = sizes[k % len(sizes)]
        blocks.append(fe.process(x[i:i + n]))
        i, k = i + n, k + 1
    assert fe.t_s == pytest.approx(x.size / SR)
    return AnalogBlock.concat(blocks)


def assert_same(a: AnalogBlock, b: AnalogBlock) -> None:
    assert a.events == b.events
    np.testing.assert_array_equal(a.open, b.open)
    np.testing.assert_array_equal(a.above, b.above)
    np.testing.assert_allclose(a.envelopes_db, b.envelopes_db, atol=1e-4)
    np.testing.assert_allclose(a.floor_db, b.floor_db, atol=1e-4)
    np.testing.assert_allclose(a.times_s, b.times_s)


def test_the_scene_has_events_to_compare():
    assert len(whole().events) == 4


def test_one_sample_chunks():
    head = SCENE[:2 * SR]  # the first burst: an open and a close, at a tolerable 32000 calls
    assert len(whole(x=head).events) == 2
    assert_same(chunked([1], x=head), whole(x=head))


@pytest.mark.parametrize("sizes", [[7], [160], [1000], [SR], [3, 250, 1, 4097]])
def test_chunk_size_invariance(sizes):
    assert_same(chunked(sizes), whole())


@settings(max_examples=8, deadline=None, database=None, derandomize=True)
@given(st.lists(st.integers(min_value=50, max_value=5000), min_size=1, max_size=12))
def test_chunk_size_invariance_for_any_split(sizes):
    assert_same(chunked(sizes), whole())


def test_long_input_split_into_slabs_equals_streaming():
    x = np.tile(SCENE, 4)  # 16 s: longer than one internal slab
    assert_same(chunked([1600], x=x), whole(x=x))


def test_int16_and_float_inputs_agree():
    pcm = float_to_int16(SCENE)
    a = AnalogFrontEnd(config=CFG).process(pcm)
    b = AnalogFrontEnd(config=CFG).process(pcm.astype(np.float32) / 32768.0)
    assert_same(a, b)


def test_reset_restores_power_up_behaviour():
    fe = AnalogFrontEnd(config=CFG)
    first = fe.process(SCENE)
    fe.process(np.zeros(1234, np.float32))
    fe.reset()
    assert fe.ticks_processed == 0 and fe.t_s == 0.0
    assert_same(fe.process(SCENE), first)


def test_small_chunks_report_empty_blocks_on_the_clock():
    fe = AnalogFrontEnd(config=CFG)
    empty = fe.process(np.zeros(100, np.float32))
    assert empty.n_ticks == 0 and empty.events == () and empty.t0_s == pytest.approx(0.01)
    one = fe.process(np.zeros(100, np.float32))
    assert one.n_ticks == 1 and one.t0_s == pytest.approx(0.01)
    assert fe.ticks_processed == 1 and fe.t_s == pytest.approx(200 / SR)


def test_process_all_matches_process():
    fe = AnalogFrontEnd(config=CFG)
    assert_same(fe.process_all(SCENE, chunk_samples=333), whole())


def test_run_file_equals_processing_the_samples(tmp_path):
    pcm = float_to_int16(SCENE)
    path = write_audio(tmp_path / "scene.wav", pcm)
    assert_same(run_file(path, config=CFG, chunk_samples=5000), whole(x=pcm))
