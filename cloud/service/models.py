"""What the service needs from the cloud models, as two small protocols, and the adapter to cloud/.

The handler depends only on these protocols, so the service can be tested without trained weights
and the models can change without touching the message path.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from gate_core.cloud_config import COMMAND_READ_OFFSETS_S
from gate_core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class VerifierResult:
    accepted: bool
    score: float


@dataclass(frozen=True, slots=True)
class RecognizedCommand:
    command: str | None  # a gate_core.vocabulary command name, or None
    score: float


class SegmentScorer(Protocol):
    name: str
    version: str

    def score(self, samples: np.ndarray, sample_rate: int, *, fired_at_s: float) -> VerifierResult:
        """Is the wake phrase there, ending near ``fired_at_s`` seconds into the segment?"""
        ...


class CommandRecognizer(Protocol):
    name: str
    version: str

    def recognize(self, samples: np.ndarray, sample_rate: int, *, start_s: float) -> RecognizedCommand:
        """The command spoken from ``start_s`` seconds into the segment on."""
        ...


@dataclass(frozen=True, slots=True)
class CloudModels:
    verifier: SegmentScorer
    commands: CommandRecognizer | None  # None: verdicts carry no command

    def versions(self) -> dict[str, str]:
        out = {self.verifier.name: self.verifier.version}
        if self.commands is not None:
            out[self.commands.name] = self.commands.version
        return out


def _file_version(path: Path, card: dict) -> str:
    # The card's version when it has one; else a content hash, so a verdict always names its weights.
    v = card.get("version")
    if isinstance(v, (str, int)) and str(v):
        return str(v)[:64]
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


class TFLiteVerifier:
    """cloud.verifier.Verifier behind :class:`SegmentScorer`."""

    name = "verifier"

    def __init__(self, *, model_path: str | None = None, threshold: float | None = None, version: str = "v1") -> None:
        from cloud.verifier import VERSIONS, load_verifier

        path = Path(model_path) if model_path else VERSIONS[version]
        self._model = load_verifier(path, threshold=threshold)
        self.version = _file_version(path, self._model.card)

    def score(self, samples: np.ndarray, sample_rate: int, *, fired_at_s: float) -> VerifierResult:
        accepted, p = self._model.verify(samples, fired_at_s)
        return VerifierResult(bool(accepted), float(p))


class TFLiteCommands:
    """cloud.commands.CommandRecognizer behind :class:`CommandRecognizer`."""

    name = "commands"

    def __init__(self, *, model_path: str | None = None, min_confidence: float = 0.5,
                 read_offsets_s: Sequence[float] = COMMAND_READ_OFFSETS_S) -> None:
        from cloud.commands import DEFAULT_COMMANDS
        from cloud.commands import CommandRecognizer as _Recognizer

        path = Path(model_path) if model_path else DEFAULT_COMMANDS
        self._model = _Recognizer(model_path=path, min_confidence=min_confidence, read_offsets_s=read_offsets_s)
        self.version = _file_version(path, self._model.card)

    def recognize(self, samples: np.ndarray, sample_rate: int, *, start_s: float) -> RecognizedCommand:
        r = self._model.recognise(samples, start_s)
        return RecognizedCommand(r.name, float(r.confidence))


def load_models(cfg) -> CloudModels:  # cfg: gate_core.cloud_config.CloudConfig
    """The configured models; the shipped ones raise their own ModelError when weights are missing."""
    if cfg.models_factory:
        module, _, attr = cfg.models_factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cloud.models_factory: cannot load {cfg.models_factory} ({exc})") from None
        models = factory(cfg)
        if not isinstance(models, CloudModels):
            raise ConfigError(f"cloud.models_factory: {cfg.models_factory} returned {type(models).__name__}, "
                              "not CloudModels")
        return models
    return CloudModels(
        verifier=TFLiteVerifier(model_path=cfg.verifier_model, threshold=cfg.verifier_threshold,
                                version=cfg.verifier),
        commands=TFLiteCommands(model_path=cfg.commands_model, min_confidence=cfg.command_min_confidence,
                                read_offsets_s=tuple(cfg.command_read_offsets_s)),
    )
