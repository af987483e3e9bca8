"""The training run's randomness: one generator per named step, and one seed per model, both from the
recipe's seed. A step's draws depend on its name only, so a recipe and seed rebuild the same data and
models whatever else the run does."""

from __future__ import annotations

import numpy as np


def step_rng(seed: int, step: str) -> np.random.Generator:
    """The generator of one named step (``"plan"``, ``"clips"``, ``"scene" + kind``, ...)."""
    return np.random.default_rng([seed, sum(map(ord, step))])


def model_seed(seed: int, name: str) -> int:
    """The backend seed a model with ``seed_per_model`` trains from."""
    return int(step_rng(seed, f"model:{name}").integers(2**31 - 1))
