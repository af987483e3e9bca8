import os

import numpy as np
import pytest
import soundfile as sf

from gate_core.errors import AudioInputError
from sensors.wavfile import AudioFileSource, probe, read_audio, write_audio


@pytest.fixture
def tone(tmp_path):
    t = np.arange(16000 * 2) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    return write_audio(tmp_path / "tone.wav", x), x


@pytest.mark.parametrize("block", [1, 333, 4096, 1 << 16])
def test_frames_do_not_depend_on_read_block(tone, block):
    path, x = tone
    src = AudioFileSource(path, frame_samples=160, read_block=block)
    frames = list(src.frames())
    assert len(frames) == 200
    assert np.array_equal(np.concatenate([f.samples for f in frames]), x)
    assert frames[-1].t0_s == pytest.approx(1.99)


def test_flac_and_wav_read_the_same(tmp_path, tone):
    _, x = tone
    flac = write_audio(tmp_path / "tone.flac", x)
    assert np.array_equal(read_audio(flac), x)


def test_other_rates_and_stereo_are_converted_once(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 1000 * t)], axis=1) * 0.5
    p = tmp_path / "s.flac"
    sf.write(p, stereo, 44100)
    y = read_audio(p)
    assert y.dtype == np.int16 and len(y) == 16000
    spec = np.abs(np.fft.rfft(y.astype(float)))
    assert abs(np.argmax(spec) - 1000) <= 1  # 1 Hz bins: the tone is still at 1 kHz
    assert 0.45 < np.abs(y).max() / 32768 < 0.55


def test_strict_rate_names_the_rate(tmp_path):
    p = tmp_path / "8k.wav"
    sf.write(p, np.zeros(800, np.int16), 8000)
    with pytest.raises(AudioInputError, match=r"8k\.wav.*8000 Hz, expected 16000 Hz") as exc:
        AudioFileSource(p, allow_resample=False)
    assert exc.value.code == "audio_rate"


def _bad_files(tmp_path, tone):
    path, _ = tone
    raw = path.read_bytes()
    cases = {
        "truncated.wav": (raw[: len(raw) // 2], "audio_truncated"),
        "header_only.wav": (raw[:44], "audio_empty"),
        "garbage.wav": (b"RIFF" + os.urandom(400), "audio_corrupt"),
        "empty.wav": (b"", "audio_corrupt"),
        "text.flac": (b"this is not audio\n" * 20, "audio_corrupt"),
        "mp4.m4a": (b"\x00\x00\x00\x18ftypmp42" + os.urandom(200), "audio_corrupt"),
    }
    for name, (data, _code) in cases.items():
        (tmp_path / name).write_bytes(data)
    return cases


def test_bad_files_give_a_clear_error_naming_the_file(tmp_path, tone):
    for name, (_, code) in _bad_files(tmp_path, tone).items():
        with pytest.raises(AudioInputError) as exc:
            read_audio(tmp_path / name)
        assert name in str(exc.value), name
        assert exc.value.code == code, (name, exc.value.code)


def test_missing_and_directory(tmp_path):
    with pytest.raises(AudioInputError, match="no such file"):
        probe(tmp_path / "nope.wav")
    with pytest.raises(AudioInputError, match="is a directory"):
        probe(tmp_path)


def test_streaming_writer_size_is_accepted(tmp_path, tone):
    # A recorder still writing leaves the RIFF data size at 0xFFFFFFFF: readable, not "truncated".
    path, x = tone
    raw = bytearray(path.read_bytes())
    i = raw.index(b"data")
    raw[i + 4:i + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    p = tmp_path / "streaming.wav"
    p.write_bytes(bytes(raw))
    assert np.array_equal(read_audio(p), x)


def test_coprime_rates_resample_by_fft_and_keep_the_tone(tmp_path):
    # 44101 Hz and 16 kHz share no factor: a polyphase filter would need 16000 x 44101 phases.
    rate = 44101
    t = np.arange(rate) / rate
    p = tmp_path / "odd.wav"
    sf.write(p, 0.5 * np.sin(2 * np.pi * 1000 * t), rate, subtype="PCM_16")
    y = read_audio(p)
    assert len(y) == 16000
    spec = np.abs(np.fft.rfft(y.astype(float)))
    assert abs(np.argmax(spec) - 1000) <= 1


@pytest.mark.parametrize("rate", [1, 999, 768_001, 2**31 - 1])
def test_header_rates_outside_real_recordings_are_refused(tmp_path, rate):
    import struct
    data = np.zeros(100, "<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, (rate * 2) & 0xFFFFFFFF, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    p = tmp_path / "r.wav"
    p.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(AudioInputError, match="outside 1000-768000 Hz") as exc:
        probe(p)
    assert exc.value.code == "audio_rate"
