"""The KWS stage on the node: audio in, detections out, on the audio clock.

Features stream frame by frame into a window of the model's length; every ``stride_frames`` new
frames the int8 model scores the window, and the detector turns scores into detections. While the
analog gate is closed nothing here runs; when it opens, the cascade calls :meth:`reset` with the
audio time of the first sample it will feed, so times stay true across gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gate.kws.config import KwsConfig
from gate.kws.featurize import Featurizer
from gate.kws.interpreter import ModelError, TFLiteModel, check_card, read_card
from gate_core.detector import Detection, Detector

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_THRESHOLD = 0.5


def default_model_path(feature_kind: str) -> Path:
    return MODELS_DIR / f"kws_{feature_kind}.tflite"


def tuned_threshold(model_path: str | Path) -> float:
    """The detector threshold the model was tuned to (see its card), or 0.5 for a model without one."""
    return _card_threshold(read_card(model_path))


def _card_threshold(card: dict) -> float:
    return float(card.get("detector", {}).get("threshold", DEFAULT_THRESHOLD))


def sigmoid(z):
    """The logistic function, written with tanh so that no logit overflows it (scalars or arrays)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def outputs_logits(model: TFLiteModel, card: dict) -> bool:
    """Whether the model outputs a logit, which the spotter turns into a probability in float.

    A logit keeps an int8 model's resolution where the detector needs it: a sigmoid output has 256
    levels in [0, 1], and the top one holds every window the model is sure of. An int8 output tells
    which it is by its range: a sigmoid's is quantized over [0, 1], a logit's over a range well
    beyond. A float output cannot tell; its card's ``output`` does (default: probability).
    """
    rng = model.output.value_range()
    if rng is None:
        return card.get("output") == "logit"
    return rng[0] < -0.05 or rng[1] > 1.05


@dataclass(frozen=True, slots=True)
class Scored:
    """One inference: its audio time and raw posterior (kept for metrics and tuning)."""

    t_s: float
    posterior: float


class KeywordSpotter:
    def __init__(self, *, model: TFLiteModel, featurizer: Featurizer, detector: Detector, stride_frames: int,
                 keep_scores: bool = False, logits: bool = False) -> None:
        shape = model.input.shape
        if len(shape) != 3 or shape[2] != featurizer.dim:
            raise ModelError(f"model input {shape} does not take {featurizer.kind} features of width {featurizer.dim}",
                             code="model_mismatch")
        self.model = model
        self.logits = logits  # the model outputs a logit: the posterior is its sigmoid (outputs_logits)
        self.featurizer = featurizer
        self.detector = detector
        self.stride_frames = stride_frames
        self.window_frames = int(shape[1])
        self.keep_scores = keep_scores  # every posterior, for evaluation and tuning; off on the node
        self.inferences = 0
        self.reset()

    @classmethod
    def from_config(cls, config: KwsConfig, sample_rate: int = 16_000, *, keep_scores: bool = False) -> KeywordSpotter:
        path = Path(config.model_path) if config.model_path else default_model_path(config.feature_kind)
        if not config.model_path and not path.is_file():
            raise ModelError(f"{path}: no shipped model for feature_kind {config.feature_kind!r}; train one "
                             "(gate-cloud train) and set kws.model_path", code="model_missing")
        card = read_card(path)
        cls._check_card(config, card, path)
        return cls.from_parts(config, TFLiteModel(model_path=path), card, sample_rate, keep_scores=keep_scores)

    @staticmethod
    def _check_card(config: KwsConfig, card: dict, where: object) -> None:
        trained_on = card.get("feature_kind")
        if trained_on is not None and trained_on != config.feature_kind:
            # log-mel and PCEN frames have the same width: only the card can tell them apart.
            raise ModelError(f"{where}: trained on {trained_on!r} features but kws.feature_kind is "
                             f"{config.feature_kind!r}", code="model_mismatch")

    @classmethod
    def from_parts(cls, config: KwsConfig, model: TFLiteModel, card: dict, sample_rate: int = 16_000, *,
                   keep_scores: bool = False, where: object = "<model>") -> KeywordSpotter:
        """A spotter on an already loaded model and its card (an over-the-air release, before it is installed):
        the card is checked against gate_core.cards' runtime schema (an empty one: a model without a card)."""
        card = check_card(card, where) if card else {}
        cls._check_card(config, card, where)
        featurizer = Featurizer(config.feature_kind, sample_rate)
        period = config.stride_frames * featurizer.period_s
        threshold = config.threshold if config.threshold is not None else _card_threshold(card)
        detector = Detector(threshold=threshold, smoothing_s=config.smoothing_s,
                            min_consecutive=config.min_consecutive, refractory_s=config.refractory_s, period_s=period)
        return cls(model=model, featurizer=featurizer, detector=detector, stride_frames=config.stride_frames,
                   keep_scores=keep_scores, logits=outputs_logits(model, card))

    def reset(self, t0_s: float = 0.0) -> None:
        """Forget all audio; the next sample fed is at audio time ``t0_s``."""
        self.featurizer.reset()
        self.detector.reset()
        self._window = np.zeros((0, self.featurizer.dim), np.float32)
        self._frames = 0
        self._t0_s = float(t0_s)
        self.scores: list[Scored] = []

    def process(self, samples: np.ndarray) -> list[Detection]:
        """Feed samples of any chunk size; returns detections whose time falls inside what was fed."""
        feats = self.featurizer.push(samples)
        out: list[Detection] = []
        if not feats.shape[0]:
            return out
        buf = np.concatenate([self._window, feats])
        first = self._frames
        self._frames += feats.shape[0]
        w, s = self.window_frames, self.stride_frames
        # Frame k (0-based, stream-wide) completes a window that is scored when (k + 1 - w) % s == 0.
        base = first - (buf.shape[0] - feats.shape[0])
        for k in range(max(first, w - 1), self._frames):
            if (k + 1 - w) % s:
                continue
            lo = k + 1 - w - base
            p = float(self.model(buf[lo:lo + w][None])[0, 0])
            if self.logits:
                p = float(sigmoid(p))
            self.inferences += 1
            t = self._t0_s + float(self.featurizer.frame_end_s(k))
            if self.keep_scores:
                self.scores.append(Scored(t, p))
            det = self.detector.update(p, t)
            if det is not None:
                out.append(det)
        self._window = buf[-(w - 1):] if w > 1 else buf[:0]
        return out
