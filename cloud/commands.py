"""Cloud inference: the command recogniser for the phrase that follows the wake word.

Classes are the commands of gate.vocabulary plus "_unknown" (other speech) and "_silence"; the
model card lists them in output order, so the vocabulary can grow without code changes here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.verifier import MODELS_DIR, read_card, window
from gate.kws.featurize import Featurizer
from gate.kws.interpreter import ModelError, TFLiteModel

DEFAULT_COMMANDS = MODELS_DIR / "commands.tflite"


@dataclass(frozen=True, slots=True)
class CommandResult:
    name: str | None   # a command of gate.vocabulary, or None for unknown speech / silence
    label: str         # the class the model chose (incl. "_unknown", "_silence")
    confidence: float


class CommandRecognizer:
    def __init__(self, *, model_path: str | Path = DEFAULT_COMMANDS, min_confidence: float = 0.5) -> None:
        path = Path(model_path)
        self.card = read_card(path)
        self.classes: list[str] = list(self.card["classes"])
        self.model = TFLiteModel(model_path=path, num_threads=1)
        if self.model.output.shape[-1] != len(self.classes):
            raise ModelError(f"{path}: {self.model.output.shape[-1]} outputs but {len(self.classes)} classes in card",
                             code="model_mismatch")
        self.featurizer = Featurizer(self.card.get("feature_kind", "logmel"))
        self.frames = int(self.model.input.shape[1])
        self.min_confidence = min_confidence

    def recognise(self, samples: np.ndarray, start_s: float = 0.0) -> CommandResult:
        """Classify the ``frames``-long window that starts at ``start_s`` (the end of the wake phrase)."""
        a = int(round(start_s * self.featurizer.sample_rate))
        need = int(round(self.featurizer.frame_end_s(self.frames - 1) * self.featurizer.sample_rate))
        x = np.asarray(samples)[a:a + need]
        if x.size < need:
            x = np.concatenate([x, np.zeros(need - x.size, x.dtype)])
        feats = self.featurizer.compute(x)
        p = self.model(window(feats, feats.shape[0], self.frames)[None])[0]
        i = int(np.argmax(p))
        label = self.classes[i]
        conf = float(p[i])
        name = None if label.startswith("_") or conf < self.min_confidence else label
        return CommandResult(name=name, label=label, confidence=conf)
