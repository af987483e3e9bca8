import numpy as np
import pytest
from pydantic import ValidationError

from gate.segmenter import PrerollRing, Segmenter, SegmenterConfig

SR = 16000


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Each sample holds its own stream index (mod 2**15): a cut shows exactly where it came from."""
    return ((np.arange(start, start + n)) % 32768).astype(np.int16)


def cfg(**kw) -> SegmenterConfig:
    base = dict(preroll_s=0.5, keyword_s=1.0, command_window_s=2.0, max_segment_s=8.0)
    return SegmenterConfig(**{**base, **kw})


def feed(seg: Segmenter, x: np.ndarray, start: int, chunk: int, detections: list[tuple[int, float]]):
    out = []
    for a in range(0, x.size, chunk):
        b = min(a + chunk, x.size)
        dets = [d for d in detections if start + a <= d[0] < start + b]
        out += seg.push(x[a:b], start_sample=start + a, detections=dets)
    return out


@pytest.mark.parametrize("n", [1, 7, 100, 1000, 2500])
def test_ring_keeps_the_newest_samples_in_order(n):
    ring = PrerollRing(1000)
    ring.reset(0)
    x = ramp(5000)
    for a in range(0, x.size, n):
        ring.write(x[a:a + n])
    assert ring.oldest == 4000
    assert np.array_equal(ring.read(4000), x[4000:])
    assert np.array_equal(ring.read(4700), x[4700:])
    with pytest.raises(ValueError):
        ring.read(3999)


def test_segment_is_preroll_keyword_and_command_on_the_audio_clock():
    s = Segmenter(config=cfg(), sample_rate=SR)
    s.start_run(0)
    x = ramp(10 * SR)
    (seg,) = feed(s, x, 0, 4000, [(5 * SR, 0.9)])
    assert seg.start_sample == 5 * SR - int(1.5 * SR)
    assert seg.detect_sample == 5 * SR and seg.t_detect_s == 5.0
    assert seg.end_sample == 7 * SR and seg.end_reason == "command_window"
    assert seg.t_start_s == pytest.approx(3.5) and seg.t_end_s == pytest.approx(7.0)
    assert np.array_equal(seg.samples, x[seg.start_sample:seg.end_sample])
    assert not seg.preroll_clipped and seg.score == 0.9


def test_preroll_never_reaches_before_the_adc_run():
    s = Segmenter(config=cfg(), sample_rate=SR)
    s.start_run(3 * SR)  # the ADC (with its analog pre-roll) starts delivering at 3 s
    x = ramp(4 * SR, 3 * SR)
    (seg,) = feed(s, x, 3 * SR, 320, [(int(3.4 * SR), 0.8)])
    assert seg.start_sample == 3 * SR and seg.preroll_clipped
    assert np.array_equal(seg.samples, x[:seg.n_samples])


def test_length_is_capped():
    s = Segmenter(config=cfg(command_window_s=10.0, max_segment_s=4.0), sample_rate=SR)
    s.start_run(0)
    (seg,) = feed(s, ramp(20 * SR), 0, 1000, [(5 * SR, 0.9)])
    assert seg.n_samples == 4 * SR and seg.end_reason == "max_length"


def test_adc_off_and_end_of_stream_cut_the_command_window():
    s = Segmenter(config=cfg(), sample_rate=SR)
    s.start_run(0)
    assert feed(s, ramp(5 * SR + 800), 0, 1000, [(5 * SR, 0.9)]) == []
    assert s.collecting and s.pending_end == 7 * SR
    (seg,) = s.stop_run()
    assert seg.end_reason == "adc_off" and seg.end_sample == 5 * SR + 800
    s.start_run(10 * SR)
    feed(s, ramp(SR, 10 * SR), 10 * SR, 1000, [(int(10.5 * SR), 0.7)])
    (seg,) = s.flush()
    assert seg.end_reason == "end_of_stream" and seg.end_sample == 11 * SR and seg.seq == 1


def test_a_detection_during_a_segment_is_part_of_it_not_a_new_one():
    s = Segmenter(config=cfg(), sample_rate=SR)
    s.start_run(0)
    segs = feed(s, ramp(12 * SR), 0, 1000, [(5 * SR, 0.9), (6 * SR, 0.95), (10 * SR, 0.8)])
    assert [g.detect_sample for g in segs] == [5 * SR, 10 * SR]
    assert s.suppressed == 1


@pytest.mark.parametrize("chunk", [1, 160, 333, 4096, 10 * SR])
def test_segments_do_not_depend_on_chunk_size(chunk):
    x = ramp(12 * SR)
    dets = [(int(2.2 * SR) + 17, 0.7), (int(8.9 * SR) + 3, 0.9)]
    ref = Segmenter(config=cfg(), sample_rate=SR)
    ref.start_run(0)
    want = ref.push(x, start_sample=0, detections=dets)
    s = Segmenter(config=cfg(), sample_rate=SR)
    s.start_run(0)
    got = feed(s, x, 0, chunk, dets)
    assert [(g.start_sample, g.detect_sample, g.end_sample) for g in got] == \
        [(g.start_sample, g.detect_sample, g.end_sample) for g in want]
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(got, want, strict=True))


def test_push_must_continue_the_run():
    s = Segmenter(config=cfg(), sample_rate=SR)
    with pytest.raises(RuntimeError):
        s.push(ramp(10), start_sample=0)
    s.start_run(100)
    with pytest.raises(ValueError):
        s.push(ramp(10), start_sample=0)


def test_config_rejects_a_cap_that_cuts_the_wake_word():
    with pytest.raises(ValidationError, match="max_segment_s"):
        SegmenterConfig(preroll_s=0.5, keyword_s=1.5, max_segment_s=1.0)
    with pytest.raises(ValidationError):
        SegmenterConfig(codec="mp3")
