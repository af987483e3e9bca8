"""The speech-embedding front end: loaded from the pinned installed package, streaming equals batch,
clock and shapes as documented, and a clear error when the package is missing or another version."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from gate.kws import embedding as emb_mod
from gate.kws.embedding import EMB_DIM, EmbeddingError, SpeechEmbedding, model_dir


@pytest.fixture(scope="module")
def emb() -> SpeechEmbedding:
    return SpeechEmbedding()


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope: the mel graph and the embedding see varied input."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16_000)
    t = np.arange(n) / 16_000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.1 * env * rng.standard_normal(n)).astype(np.float32)


def test_loads_the_pinned_files_from_the_installed_wheel():
    where = model_dir()
    assert importlib.metadata.version("openwakeword") == "0.5.1"
    assert (where / "melspectrogram.tflite").is_file() and (where / "embedding_model.tflite").is_file()
    assert "site-packages" in str(where) or "dist-packages" in str(where)


def test_missing_package_names_it_and_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(emb_mod.importlib.metadata, "distribution", missing)
    with pytest.raises(EmbeddingError) as e:
        model_dir()
    msg = str(e.value)
    assert "openwakeword==0.5.1" in msg and "pip install" in msg and "\n" not in msg
    assert e.value.code == "embedding_missing"


def test_other_version_is_refused(monkeypatch):
    class Other:
        version = "0.6.0"

    monkeypatch.setattr(emb_mod.importlib.metadata, "distribution", lambda name: Other())
    with pytest.raises(EmbeddingError, match="pinned to openwakeword==0.5.1, found 0.6.0"):
        model_dir()


def test_missing_file_in_the_package_is_named(tmp_path, monkeypatch):
    class Dist:
        version = "0.5.1"

        @staticmethod
        def locate_file(sub):
            return tmp_path / sub

    monkeypatch.setattr(emb_mod.importlib.metadata, "distribution", lambda name: Dist())
    with pytest.raises(EmbeddingError, match="melspectrogram.tflite: missing"):
        model_dir()


def test_shapes_and_clock(emb):
    x = _speechlike(2.0)
    e = emb.compute(x)
    # 2.0 s: 197 mel frames -> 16 embeddings, the last ending at 1.982 s.
    assert e.shape == (16, EMB_DIM) and e.dtype == np.float32
    assert np.isfinite(e).all()
    assert emb.frame_end_s(0) == pytest.approx(12_512 / 16_000)
    assert emb.frame_end_s(15) == pytest.approx((15 * 1280 + 12_512) / 16_000)
    assert emb.frame_end_s(15) <= 2.0
    assert emb.compute(x[:12_511]).shape == (0, EMB_DIM)
    assert emb.compute(x[:12_512]).shape == (1, EMB_DIM)


def test_int16_and_float_input_agree(emb):
    x = _speechlike(1.5, seed=3)
    pcm = np.round(x * 32768).astype(np.int16)
    a = emb.compute(pcm)
    b = emb.compute(pcm.astype(np.float32) / 32768)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_equals_batch_for_any_chunking(emb, seed):
    x = _speechlike(4.0, seed=seed)
    batch = emb.compute(x)
    s = SpeechEmbedding()
    rng = np.random.default_rng(seed)
    parts, i = [], 0
    while i < x.size:
        n = int(rng.choice([1, 7, 160, 511, 1280, 4000]))
        parts.append(s.push(x[i:i + n]))
        i += n
    stream = np.concatenate(parts)
    assert stream.shape == batch.shape
    np.testing.assert_array_equal(stream, batch)


def test_long_audio_is_computed_in_chunks_with_the_same_result(emb):
    x = _speechlike(65.0, seed=5)
    whole = emb.embed_mel(emb.mel(x))
    np.testing.assert_array_equal(emb.compute(x), whole)


def test_compute_does_not_disturb_a_stream_in_progress(emb):
    x = _speechlike(3.0, seed=7)
    s = SpeechEmbedding()
    first = s.push(x[:20_000])
    s.compute(_speechlike(40.0, seed=8))  # long: goes through the chunked stream path
    rest = s.push(x[20_000:])
    np.testing.assert_array_equal(np.concatenate([first, rest]), s.compute(x))


def test_embeddings_tell_speech_from_silence(emb):
    speech = emb.compute(_speechlike(2.0))
    quiet = emb.compute(np.zeros(32_000, np.float32))
    assert np.linalg.norm(speech.mean(0) - quiet.mean(0)) > 1.0


def test_licence_is_recorded():
    spec = SpeechEmbedding.spec()  # a class fact: no graph is loaded for it
    assert "Apache-2.0" in spec["licence"]["embedding_model"]
    assert "CC BY-NC-SA" in spec["licence"]["not_used"]
    assert spec["package"] == "openwakeword==0.5.1"


def test_directory_override_reads_the_given_files(tmp_path):
    for name in ("melspectrogram.tflite", "embedding_model.tflite"):
        (tmp_path / name).write_bytes((model_dir() / name).read_bytes())
    e = SpeechEmbedding(directory=Path(tmp_path))
    np.testing.assert_array_equal(e.compute(_speechlike(1.0)), SpeechEmbedding().compute(_speechlike(1.0)))
