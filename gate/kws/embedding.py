"""A speech representation learned from real human speech: Google's speech-embedding front end.

The two feature models ship inside the ``openwakeword==0.5.1`` wheel (``resources/models/``) and are
loaded from the installed package; nothing is downloaded and nothing else of that wheel is used:

- ``melspectrogram.tflite``: a fixed signal-processing graph, 32 mel bands from 512-sample frames every
  160 samples (10 ms) of 16 kHz audio, read as ``x / 10 + 2`` (openWakeWord's scaling, which matches
  the TensorFlow Hub module's own front end);
- ``embedding_model.tflite``: Google's ``speech_embedding`` (Lin et al., ICASSP 2020, "Training keyword
  spotters with limited and synthesized speech data"), trained by Google on a large corpus of real
  speech. One 96-d embedding from each 76 mel frames (775 ms), every 8 frames (80 ms).

Licences (recorded in every model card built on it, see ``LICENCE``): the embedding model is Google's
TF Hub module, published under Apache-2.0, re-implemented as TFLite by openWakeWord, whose wheel and
code are Apache-2.0. openWakeWord's README puts its *wake-word* models (the ``*_v0.1`` heads, trained on
data of unknown licence) under CC BY-NC-SA 4.0; none of those is loaded here.

:class:`SpeechEmbedding` quacks like :class:`gate.kws.featurize.Featurizer` (``compute``, ``push``,
``reset``, ``frame_end_s``, ``dim``, ``period_s``): its "frames" are embeddings, so the training's
windowing, stream labelling and mining work on it unchanged. Streaming and batch give the same
embeddings: mel frames depend only on their own 512 samples, embeddings only on their own 76 frames.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from gate.kws.interpreter import ModelError, TFLiteModel

PACKAGE = "openwakeword"
VERSION = "0.5.1"
MODELS_SUBDIR = "openwakeword/resources/models"
MEL_FILE = "melspectrogram.tflite"
EMBEDDING_FILE = "embedding_model.tflite"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={VERSION}"
LICENCE = {
    "source": f"{PACKAGE}=={VERSION} wheel (PyPI): {MODELS_SUBDIR}/{MEL_FILE}, {EMBEDDING_FILE}",
    "embedding_model": "Google speech_embedding (TF Hub google/speech_embedding/1), Apache-2.0; "
                       "TFLite port distributed in the openWakeWord wheel (Apache-2.0)",
    "melspectrogram": "fixed signal-processing graph (no learned weights) from the openWakeWord wheel (Apache-2.0)",
    "not_used": "openWakeWord's wake-word heads (*_v0.1, CC BY-NC-SA 4.0) are neither loaded nor shipped",
    "paper": "Lin et al., Training keyword spotters with limited and synthesized speech data, ICASSP 2020",
}

SAMPLE_RATE = 16_000
MEL_WIN = 512      # samples per mel frame
MEL_HOP = 160      # samples between mel frames (10 ms)
N_MELS = 32
EMB_WIN = 76       # mel frames per embedding
EMB_HOP = 8        # mel frames between embeddings (80 ms)
EMB_DIM = 96


class EmbeddingError(ModelError):
    code = "embedding_unavailable"


def model_dir() -> Path:
    """Where the installed ``openwakeword==0.5.1`` keeps its feature models; EmbeddingError if it is
    not installed, is another version, or lacks the files (the package is never imported)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddingError(f"the speech-embedding front end needs the package {PACKAGE}=={VERSION}, which is "
                             f"not installed ({INSTALL_HINT})", code="embedding_missing") from None
    if dist.version != VERSION:
        raise EmbeddingError(f"the speech-embedding front end is pinned to {PACKAGE}=={VERSION}, found "
                             f"{dist.version} ({INSTALL_HINT})", code="embedding_version")
    where = Path(str(dist.locate_file(MODELS_SUBDIR)))
    for name in (MEL_FILE, EMBEDDING_FILE):
        if not (where / name).is_file():
            raise EmbeddingError(f"{where / name}: missing from the installed {PACKAGE}=={VERSION} "
                                 f"(reinstall: {INSTALL_HINT})", code="embedding_missing")
    return where


def _as_pcm_float(samples: np.ndarray) -> np.ndarray:
    """The mel graph takes int16 values as float32: int16 as is, float in [-1, 1) scaled by 32768."""
    x = np.asarray(samples)
    if x.dtype == np.int16:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.floating):
        return (x.astype(np.float32) * np.float32(32768.0)).clip(-32768.0, 32767.0)
    raise TypeError(f"speech embeddings expect int16 or float samples, got {x.dtype}")


class SpeechEmbedding:
    """Streaming (``push``) or whole-clip (``compute``) speech embeddings, one row per 80 ms.

    Embedding ``j`` of a stream covers samples ``[1280 j, 1280 j + 12512)``; ``frame_end_s(j)`` is
    where it ends on the stream's clock.
    """

    kind = "speech_embedding"
    dim = EMB_DIM
    sample_rate = SAMPLE_RATE
    hop = MEL_HOP * EMB_HOP                       # samples between embeddings
    period_s = hop / SAMPLE_RATE
    span = (EMB_WIN - 1) * MEL_HOP + MEL_WIN       # samples one embedding hears (12,512: 0.782 s)
    CHUNK = 30 * SAMPLE_RATE                       # longer clips are computed 30 s at a time (bounded memory)

    def __init__(self, *, num_threads: int = 1, directory: Path | None = None) -> None:
        where = directory or model_dir()
        self.mel_model = TFLiteModel(model_path=where / MEL_FILE, num_threads=num_threads, input_shape=(1, 1280))
        self.embedding_model = TFLiteModel(model_path=where / EMBEDDING_FILE, num_threads=num_threads)
        self.invocations = 0  # embeddings computed (each one is one run of the embedding model's graph)
        self.reset()

    # --- the two graphs ------------------------------------------------------------------------
    def mel(self, samples: np.ndarray) -> np.ndarray:
        """(frames, 32) mel features of a whole clip: frame k from samples [160 k, 160 k + 512)."""
        return self._mel_pcm(_as_pcm_float(samples))

    def _mel_pcm(self, x: np.ndarray) -> np.ndarray:
        if x.size < MEL_WIN:
            return np.zeros((0, N_MELS), np.float32)
        n = (x.size - MEL_WIN) // MEL_HOP + 1
        out = self.mel_model.run(x[None, :(n - 1) * MEL_HOP + MEL_WIN])
        return (out.reshape(-1, N_MELS)[:n] / np.float32(10.0) + np.float32(2.0)).astype(np.float32)

    def embed_mel(self, mel: np.ndarray) -> np.ndarray:
        """(n, 96) embeddings of every 76-frame window of ``mel`` at an 8-frame step, in one batch
        (the graph computes each row alone: a batch gives the same rows as one window at a time)."""
        if mel.shape[0] < EMB_WIN:
            return np.zeros((0, EMB_DIM), np.float32)
        n = (mel.shape[0] - EMB_WIN) // EMB_HOP + 1
        idx = np.arange(n)[:, None] * EMB_HOP + np.arange(EMB_WIN)[None, :]
        self.invocations += n
        return self.embedding_model.run(mel[idx][..., None]).reshape(n, EMB_DIM)

    # --- Featurizer interface ------------------------------------------------------------------
    def compute(self, samples: np.ndarray) -> np.ndarray:
        """Every embedding of a whole clip from a fresh state (a stream in progress is not disturbed)."""
        x = _as_pcm_float(samples)
        if x.size <= self.CHUNK:
            return self.embed_mel(self._mel_pcm(x))
        saved = self._samples, self._mel  # long audio goes through the stream path a chunk at a time
        self.reset()
        try:
            parts = [self._push_pcm(x[a:a + self.CHUNK]) for a in range(0, x.size, self.CHUNK)]
        finally:
            self._samples, self._mel = saved
        return np.concatenate(parts)

    def reset(self) -> None:
        self._samples = np.zeros(0, np.float32)  # from the first sample of the next mel frame
        self._mel = np.zeros((0, N_MELS), np.float32)  # from the first frame of the next embedding

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed samples of any chunk size; returns the embeddings completed by them."""
        return self._push_pcm(_as_pcm_float(samples))

    def _push_pcm(self, x: np.ndarray) -> np.ndarray:
        self._samples = np.concatenate([self._samples, x])
        if self._samples.size >= MEL_WIN:
            n = (self._samples.size - MEL_WIN) // MEL_HOP + 1
            self._mel = np.concatenate([self._mel, self._mel_pcm(self._samples)])
            self._samples = self._samples[n * MEL_HOP:]
        if self._mel.shape[0] < EMB_WIN:
            return np.zeros((0, EMB_DIM), np.float32)
        out = self.embed_mel(self._mel)
        self._mel = self._mel[out.shape[0] * EMB_HOP:]
        return out

    def frame_end_s(self, i: np.ndarray | int) -> np.ndarray:
        return (np.asarray(i, dtype=np.float64) * self.hop + self.span) / self.sample_rate

    @classmethod
    def spec(cls) -> dict:
        return {"kind": cls.kind, "sample_rate": SAMPLE_RATE, "mel_window": MEL_WIN, "mel_hop": MEL_HOP,
                "n_mels": N_MELS, "embedding_window_frames": EMB_WIN, "embedding_hop_frames": EMB_HOP,
                "dim": EMB_DIM, "package": f"{PACKAGE}=={VERSION}", "licence": LICENCE}
