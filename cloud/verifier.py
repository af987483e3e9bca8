"""Cloud inference: the wake-word verifiers, float TFLite models with 2 s of context.

v1 (``verifier.tflite``) is a temporal CNN on the node's own log-mel features; v2
(gate/models/second_stage.tflite, the node's second stage too) is a head on the speech-embedding front
end (gate/kws/embedding.py), which was learned from real human speech. ``load_verifier`` picks the class a
model's card asks for.

Each takes the segment a node forwards (int16 at 16 kHz: pre-roll + wake phrase + command window)
and where in it the node's detector fired, and re-scores the windows ending around there (see
``Verifier.score``). Features come from gate.features, the same code the node runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gate.kws.featurize import Featurizer
from gate.kws.interpreter import TFLiteModel, read_card
from gate.kws.second_stage import DEFAULT_SECOND_STAGE, SEARCH_S, EmbeddingCheck, best_mean, window

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_VERIFIER = MODELS_DIR / "verifier.tflite"
DEFAULT_VERIFIER_V2 = DEFAULT_SECOND_STAGE  # one head: the node's second stage is the cloud's verifier v2
CARD_NEEDED = "it names the classes and features"
VERSIONS = {"v1": DEFAULT_VERIFIER, "v2": DEFAULT_VERIFIER_V2}
# Window ends are scored around the fire time (SEARCH_S, shared with v2), one every SEARCH_STRIDE feature
# frames (31 windows, about 11 ms of float inference), and how many consecutive ones' mean is the score.
SEARCH_STRIDE = 2
SMOOTH_WINDOWS = 3


class Verifier:
    def __init__(self, *, model_path: str | Path = DEFAULT_VERIFIER, threshold: float | None = None) -> None:
        path = Path(model_path)
        self.card = read_card(path, required=CARD_NEEDED)
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
        return best_mean(p, SMOOTH_WINDOWS)

    def verify(self, samples: np.ndarray, fired_at_s: float) -> tuple[bool, float]:
        p = self.score(samples, fired_at_s)
        return p >= self.threshold, p


class EmbeddingVerifier(EmbeddingCheck):
    """Verifier v2: the same contract as :class:`Verifier`, on speech embeddings (gate.kws.second_stage)."""

    def __init__(self, *, model_path: str | Path = DEFAULT_VERIFIER_V2, threshold: float | None = None,
                 embedding=None) -> None:
        super().__init__(model_path=model_path, threshold=threshold, embedding=embedding)


def load_verifier(model_path: str | Path = DEFAULT_VERIFIER, *, threshold: float | None = None):
    """The verifier class the model's card names (speech_embedding: v2; otherwise the log-mel v1)."""
    path = Path(model_path)
    if read_card(path, required=CARD_NEEDED).get("feature_kind") == "speech_embedding":
        return EmbeddingVerifier(model_path=path, threshold=threshold)
    return Verifier(model_path=path, threshold=threshold)
