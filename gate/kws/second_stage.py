"""A check of a detection on speech embeddings: the node's second stage and the cloud's verifier v2.

The embedding front end (gate/kws/embedding.py) was learned from real human speech; a small dense
head on a window of its embeddings (2 s) decides whether the wake phrase ends near the fire time.
The same class serves the node (``kws.second_stage``: it runs only on the segment around a tiny-model
candidate, so a Pi without a cloud gets most of the cloud verifier's accuracy at a fraction of
always-on cost) and the cloud (cloud/verifier.py's v2).

The segment is embedded once (one row per 80 ms); windows of the head's length whose last embedding
ends within ``SEARCH_S`` of the fire time are scored in one batch, and the score is the best mean of
``SMOOTH`` consecutive ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gate.kws.embedding import SpeechEmbedding
from gate.kws.interpreter import ModelError, TFLiteModel, read_card

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_SECOND_STAGE = MODELS_DIR / "second_stage.tflite"
SEARCH_S = (-0.25, 0.35)  # window ends scored around the fire time (s before, s after)
SMOOTH = 2                # windows are 80 ms apart: two span what three 20 ms-apart log-mel windows do


def window(feats: np.ndarray, end: int, frames: int) -> np.ndarray:
    """``frames`` rows ending at row ``end`` (exclusive), padded with the first row at the start."""
    end = int(np.clip(end, 1, feats.shape[0]))
    w = feats[max(0, end - frames):end]
    if w.shape[0] < frames:
        w = np.concatenate([np.repeat(w[:1], frames - w.shape[0], axis=0), w])
    return w


def best_mean(p: np.ndarray, k: int) -> float:
    """The highest mean of ``k`` consecutive scores (all of them when there are fewer)."""
    k = min(k, p.size)
    return float(np.max(np.convolve(p, np.full(k, 1.0 / k), mode="valid")))


class EmbeddingCheck:
    """``verify(segment, fired_at_s) -> (accepted, score)`` on speech embeddings."""

    def __init__(self, *, model_path: str | Path = DEFAULT_SECOND_STAGE, threshold: float | None = None,
                 embedding: SpeechEmbedding | None = None) -> None:
        path = Path(model_path)
        self.card = read_card(path, required="it names the features and the threshold")
        if self.card.get("feature_kind") != SpeechEmbedding.kind:
            raise ModelError(f"{path}: model card says feature_kind {self.card.get('feature_kind')!r}, "
                             f"not {SpeechEmbedding.kind!r}", code="model_mismatch")
        self.model = TFLiteModel(model_path=path, num_threads=1)
        self.embedding = embedding or SpeechEmbedding()
        self.frames = int(self.model.input.shape[1])
        if self.model.input.shape[2:] != (self.embedding.dim,):
            raise ModelError(f"{path}: input {self.model.input.shape} does not take {self.embedding.dim}-d embeddings",
                             code="model_mismatch")
        self.threshold = float(threshold if threshold is not None else self.card.get("threshold", 0.5))
        self.checks = 0            # segments checked
        self.audio_s = 0.0         # audio embedded for them, s

    def span_s(self) -> float:
        """Audio the check reads: the head's context before the earliest window end, to the latest."""
        return float(self.embedding.frame_end_s(self.frames - 1)) - SEARCH_S[0] + SEARCH_S[1]

    def score(self, samples: np.ndarray, fired_at_s: float) -> float:
        """Posterior that the wake phrase ends near ``fired_at_s`` (seconds into ``samples``). Only the
        audio the windows need is embedded, however long the segment."""
        sr = self.embedding.sample_rate
        first = max(0, int((fired_at_s + SEARCH_S[0] - self.embedding.frame_end_s(self.frames - 1)) * sr))
        first -= first % self.embedding.hop  # keep the embedding grid of the segment's own start
        last = min(samples.shape[0], int(np.ceil((fired_at_s + SEARCH_S[1]) * sr)))
        part = samples[first:last]
        self.checks += 1
        self.audio_s += part.shape[0] / sr
        emb = self.embedding.compute(part)
        if emb.shape[0] == 0:
            return 0.0
        ends_s = first / sr + self.embedding.frame_end_s(np.arange(emb.shape[0]))
        lo, hi = (int(np.searchsorted(ends_s, fired_at_s + d, "right")) for d in SEARCH_S)
        ends = np.unique(np.clip(np.arange(lo, hi + 1), 1, emb.shape[0]))
        p = self.model.run(np.stack([window(emb, e, self.frames) for e in ends])).reshape(-1)
        return best_mean(p, SMOOTH)

    def verify(self, samples: np.ndarray, fired_at_s: float) -> tuple[bool, float]:
        p = self.score(samples, fired_at_s)
        return p >= self.threshold, p
