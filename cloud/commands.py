"""Cloud inference: the command recogniser for the phrase that follows the wake word.

Classes are the commands of gate_core.vocabulary plus "_unknown" (other speech) and "_silence"; the
model card lists them in output order, so the vocabulary can grow without code changes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.verifier import CARD_NEEDED, MODELS_DIR, read_card, window
from gate.kws.featurize import Featurizer
from gate.kws.interpreter import ModelError, TFLiteModel
from gate_core.cloud_config import COMMAND_READ_OFFSETS_S as DEFAULT_READ_OFFSETS_S

DEFAULT_COMMANDS = MODELS_DIR / "commands.tflite"


@dataclass(frozen=True, slots=True)
class CommandResult:
    name: str | None   # a command of gate_core.vocabulary, or None for unknown speech / silence
    label: str         # the class the model chose (incl. "_unknown", "_silence")
    confidence: float
    read_offset_s: float = 0.0  # which of the reads won, seconds after the given start


class CommandRecognizer:
    def __init__(self, *, model_path: str | Path = DEFAULT_COMMANDS, min_confidence: float = 0.5,
                 read_offsets_s: Sequence[float] = DEFAULT_READ_OFFSETS_S) -> None:
        path = Path(model_path)
        self.card = read_card(path, required=CARD_NEEDED)
        if not self.card.get("classes"):
            raise ModelError(f"{path.with_suffix('.json')}: classes: missing (the output classes, in order)",
                             code="model_card")
        self.classes: list[str] = list(self.card["classes"])
        self.model = TFLiteModel(model_path=path, num_threads=1)
        if self.model.output.shape[-1] != len(self.classes):
            raise ModelError(f"{path}: {self.model.output.shape[-1]} outputs but {len(self.classes)} classes in card",
                             code="model_mismatch")
        self.featurizer = Featurizer(self.card.get("feature_kind", "logmel"))
        self.frames = int(self.model.input.shape[1])
        self.min_confidence = min_confidence
        if len(read_offsets_s) == 0:
            raise ValueError("read_offsets_s: give at least one offset (0 reads from the start alone)")
        # In whole feature frames, so that every read is a slice of one feature computation.
        self.shifts = sorted({int(round(o / self.featurizer.period_s)) for o in read_offsets_s})
        self._commands = np.array([i for i, c in enumerate(self.classes) if not c.startswith("_")])

    @property
    def read_offsets_s(self) -> list[float]:
        """The offsets actually read, s after the start: the requested ones on whole feature frames."""
        return [round(k * self.featurizer.period_s, 6) for k in self.shifts]

    def recognise(self, samples: np.ndarray, start_s: float = 0.0) -> CommandResult:
        """Classify the ``frames``-long window starting at ``start_s`` (the end of the wake phrase) and at each
        read offset after it. The most confident read naming a command at ``min_confidence`` or more wins;
        failing that, the most confident read (unknown, silence or a weak command). Audio outside the segment
        reads as silence."""
        sr, hop = self.featurizer.sample_rate, self.featurizer.hop
        k0, k1 = self.shifts[0], self.shifts[-1]
        a = int(round(start_s * sr)) + k0 * hop
        need = int(round(self.featurizer.frame_end_s(self.frames - 1 + k1 - k0) * sr))
        lead = min(need, max(0, -a))  # samples before the segment's start
        x = np.asarray(samples)[max(0, a):max(0, a + need)]
        x = np.concatenate([np.zeros(lead, x.dtype), x, np.zeros(need - lead - x.size, x.dtype)])
        feats = self.featurizer.compute(x)
        reads = np.stack([self.model(window(feats, k - k0 + self.frames, self.frames)[None])[0] for k in self.shifts])
        # A read that names a command wins over reads that do not: a read shifted past the start of a short
        # command ("stop") hears only its tail and calls it unknown, often confidently.
        named = reads[:, self._commands]
        r, j = np.unravel_index(int(np.argmax(named)), named.shape)
        if named[r, j] >= self.min_confidence:
            i = int(self._commands[j])
        else:
            r, i = np.unravel_index(int(np.argmax(reads)), reads.shape)
        label, conf = self.classes[i], float(reads[r, i])
        name = None if label.startswith("_") or conf < self.min_confidence else label
        return CommandResult(name=name, label=label, confidence=conf,
                             read_offset_s=self.read_offsets_s[r])
