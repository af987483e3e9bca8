"""The non-idealities of one simulated board: static mismatch and per-tick noise streams.

Static mismatch (gain, centre frequency, comparator offset) is drawn once from ``nonideal.seed``.
Per-tick noise comes from dedicated generators, one per noise source, drawn in tick order: numpy
generators fill arrays sequentially, so drawing 7 + 153 ticks gives exactly the values of drawing
160 at once, and the noise is the same however the audio is chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors.analog.config import NonIdealConfig


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Per-channel static errors of one board."""

    gain_db: np.ndarray        # added to each channel's passband gain
    fc_ratio: np.ndarray       # actual centre / nominal centre
    offset_db: np.ndarray      # comparator input offset, referred to the log envelope


def draw_mismatch(cfg: NonIdealConfig, n_channels: int) -> Mismatch:
    # Child 0 of the board's seed sequence is reserved for static parts; 1 and 2 are noise streams.
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(3)[0])
    gain_db = rng.normal(0.0, cfg.gain_mismatch_db, n_channels)
    fc_ratio = 1.0 + rng.normal(0.0, cfg.fc_mismatch_pct / 100.0, n_channels)
    offset_db = rng.normal(0.0, cfg.comparator_offset_db, n_channels)
    # A centre error beyond +-50% would be a broken part, not mismatch; keep the model physical.
    return Mismatch(gain_db=gain_db, fc_ratio=np.clip(fc_ratio, 0.5, 1.5), offset_db=offset_db)


class TickNoise:
    """Envelope ripple and comparator noise, one row per tick, independent of chunking."""

    def __init__(self, cfg: NonIdealConfig, n_channels: int) -> None:
        self._cfg = cfg
        self._n = n_channels
        self.reset()

    def reset(self) -> None:
        children = np.random.SeedSequence(self._cfg.seed).spawn(3)
        self._ripple_rng = np.random.default_rng(children[1])
        self._comp_rng = np.random.default_rng(children[2])

    def ripple_gain(self, n_ticks: int) -> np.ndarray:
        """Multiplicative (1 + ripple): the detector's residual carrier, sampled at a random phase."""
        phase = self._ripple_rng.random((n_ticks, self._n), dtype=np.float32)
        depth = np.float32(self._cfg.envelope_ripple_pct / 100.0)
        return 1.0 + depth * np.cos(np.float32(2.0 * np.pi) * phase)

    def comparator_db(self, n_ticks: int) -> np.ndarray:
        noise = self._comp_rng.standard_normal((n_ticks, self._n), dtype=np.float32)
        return noise * np.float32(self._cfg.comparator_noise_db)
