"""Cloud inference: the wake-word verifier, a float TFLite model with 2 s of context.

It takes the segment a node forwards (int16 at 16 kHz: pre-roll + wake phrase + command window)
and where in it the node's detector fired, and re-scores the windows ending around there (see
``Verifier.score``). Features come from gate.features, the same code the node runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gate.kws.featurize import Featurizer
from gate.kws.interpreter import ModelError, TFLiteModel

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_VERIFIER = MODELS_DIR / "verifier.tflite"
# Window ends scored around the node's fire time (s before, s after), one every SEARCH_STRIDE feature
# frames (31 windows, about 11 ms of float inference), and how many consecutive ones' mean is the score.
SEARCH_S = (-0.25, 0.35)
SEARCH_STRIDE = 2
SMOOTH_WINDOWS = 3


def read_card(path: Path) -> dict:
    p = path.with_suffix(".json")
    if not p.is_file():
        raise ModelError(f"{p}: model card missing (it names the classes and features)", code="model_missing")
    return json.loads(p.read_text(encoding="utf-8"))


def window(feats: np.ndarray, end: int, frames: int) -> np.ndarray:
    """``frames`` rows ending at row ``end`` (exclusive), padded with the first row at the start."""
    end = int(np.clip(end, 1, feats.shape[0]))
    w = feats[max(0, end - frames):end]
    if w.shape[0] < frames:
        w = np.concatenate([np.repeat(w[:1], frames - w.shape[0], axis=0), w])
    return w


class Verifier:
    def __init__(self, *, model_path: str | Path = DEFAULT_VERIFIER, threshold: float | None = None) -> None:
        path = Path(model_path)
        self.card = read_card(path)
        self.model = TFLiteModel(model_path=path, num_threads=1)
        self.featurizer = Featurizer(self.card.get("feature_kind", "logmel"))
        self.frames = int(self.model.input.shape[1])
        self.threshold = float(threshold if threshold is not None else self.card.get("threshold", 0.5))

    def score(self, samples: np.ndarray, fired_at_s: float) -> float:
        """Posterior that the wake phrase ends just before ``fired_at_s`` (seconds into the segment).

        The node's detector fires after smoothing and a run of hits, so the phrase's true end lies a
        little before (or, with a slow model, after) the fire time: windows ending within ``SEARCH_S``
        of it are scored, and the score is the best mean of ``SMOOTH_WINDOWS`` consecutive ones. A wake
        phrase holds the posterior up for tens of frames; a near-miss spikes in one.
        """
        feats = self.featurizer.compute(samples)
        if feats.shape[0] == 0:
            return 0.0
        ends_s = self.featurizer.frame_end_s(np.arange(feats.shape[0]))
        lo, hi = (int(np.searchsorted(ends_s, fired_at_s + d, "right")) for d in SEARCH_S)
        ends = np.unique(np.clip(np.arange(lo, hi + 1, SEARCH_STRIDE), 1, feats.shape[0]))
        p = self.model.run_batch(np.stack([window(feats, e, self.frames) for e in ends]))[:, 0]
        k = min(SMOOTH_WINDOWS, p.size)
        return float(np.max(np.convolve(p, np.full(k, 1.0 / k), mode="valid")))

    def verify(self, samples: np.ndarray, fired_at_s: float) -> tuple[bool, float]:
        p = self.score(samples, fired_at_s)
        return p >= self.threshold, p
