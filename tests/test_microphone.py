"""sensors.microphone without a sound card: the resampler, and the capture logic on a fake PortAudio."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from gate_core.errors import AudioInputError
from sensors.microphone import Microphone, StreamingResampler


@pytest.mark.parametrize("rate_in", [48000, 44100, 22050, 32000])
def test_resampler_is_accurate_and_does_not_depend_on_block_size(rate_in):
    t = np.arange(rate_in * 2) / rate_in
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    r = StreamingResampler(rate_in, 16000)
    whole = r.process(x)
    r.reset()
    parts = np.concatenate([r.process(x[i:i + 997]) for i in range(0, x.size, 997)])
    assert whole.size == parts.size == 32000
    assert np.array_equal(whole, parts)
    delay = (r._k * r.up - 1) / 2 / r.up / rate_in  # linear-phase FIR: half its length
    ideal = np.sin(2 * np.pi * 440 * (np.arange(whole.size) / 16000 - delay))
    assert np.max(np.abs(whole[800:-800] - ideal[800:-800])) < 1e-3


def test_resampler_removes_what_16_khz_cannot_hold():
    t = np.arange(48000) / 48000
    y = StreamingResampler(48000, 16000).process(np.sin(2 * np.pi * 12000 * t).astype(np.float32))
    assert np.sqrt(np.mean(y[200:] ** 2)) < 1e-3  # 12 kHz would alias to 4 kHz without the filter


class _Flags:
    def __init__(self, overflow: bool) -> None:
        self.input_overflow = overflow


class _FakeSD(types.ModuleType):
    """Just enough of sounddevice: one device that only does 48 kHz, and a stream we drive by hand."""

    class PortAudioError(Exception):
        pass

    def __init__(self) -> None:
        super().__init__("sounddevice")
        self.devices = [{"index": 0, "name": "USB Mic", "max_input_channels": 2, "default_samplerate": 48000.0}]
        self.stream = None

    def query_devices(self, device=None, kind=None):
        if device is None and kind is None:
            return self.devices
        if device is None or device == 0 or (isinstance(device, str) and device in self.devices[0]["name"]):
            return self.devices[0]
        raise ValueError(f"No input device matching {device!r}")

    def check_input_settings(self, *, device, channels, samplerate, dtype):
        if samplerate != 48000:
            raise self.PortAudioError("Invalid sample rate")

    def InputStream(self, **kw):  # noqa: N802 - sounddevice's name
        fake = self

        class Stream:
            def __init__(self) -> None:
                self.kw = kw
                fake.stream = self

            def start(self) -> None:
                pass

            def stop(self) -> None:
                pass

            def close(self) -> None:
                pass

        return Stream()


@pytest.fixture
def fake_sd(monkeypatch):
    sd = _FakeSD()
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    return sd


def test_capture_picks_the_device_resamples_and_counts_trouble(fake_sd):
    mic = Microphone(device="USB", channels=2, blocksize_ms=20, queue_s=0.1)
    mic.start()
    assert mic.device_name == "USB Mic" and mic.device_rate == 48000  # 16 kHz refused: native rate
    cb = fake_sd.stream.kw["callback"]
    assert fake_sd.stream.kw["blocksize"] == 960 and fake_sd.stream.kw["channels"] == 2
    block = np.full((960, 2), 1000, np.int16)
    block[:, 1] = 3000
    for i in range(8):  # the queue holds 5 blocks of 20 ms: three are dropped, one overran
        cb(block, 960, None, _Flags(overflow=(i == 0)))
    got = [mic.read(timeout=0) for _ in range(5)]
    assert mic.read(timeout=0) is None
    out = np.concatenate(got)
    assert out.size == 5 * 320  # 48 kHz -> 16 kHz: a third of the samples
    assert np.all(np.abs(out[100:].astype(int) - 2000) <= 2)  # both channels averaged
    st = mic.stats()
    assert (st.blocks, st.overruns, st.dropped_blocks, st.dropped_samples) == (8, 1, 3, 3 * 960)
    mic.close()


def test_an_unknown_device_names_the_ones_there_are(fake_sd):
    with pytest.raises(AudioInputError, match="USB Mic") as exc:
        Microphone(device="Blue Yeti").start()
    assert exc.value.code == "mic_device"


def test_nothing_is_opened_at_import():
    import importlib

    import sensors.microphone as m

    assert "sounddevice" not in vars(importlib.reload(m))
