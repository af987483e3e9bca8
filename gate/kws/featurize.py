"""Feature extraction per kind, with the audio time at which each feature frame ends.

Every kind runs the node's own code: gate.features.LogMel (and gate.features.Pcen on top of it for
"pcen"), and the simulated analog front end's envelopes (sensors.analog), so training never sees
features the node would not compute.
"""

from __future__ import annotations

import numpy as np

from gate.features import LogMel, LogMelSpec, Pcen

KINDS = ("logmel", "analog_envelopes", "pcen")
MEL_KINDS = ("logmel", "pcen")


class Featurizer:
    """Stateful streaming extractor of one kind: push samples, get frames; frame_end_s(i) on the audio clock."""

    def __init__(self, kind: str, sample_rate: int = 16_000) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown feature kind {kind!r} (known: {', '.join(KINDS)})")
        self.kind = kind
        self.sample_rate = sample_rate
        self._pcen = Pcen() if kind == "pcen" else None
        if kind in MEL_KINDS:
            self._lm = LogMel(LogMelSpec(sample_rate=sample_rate))
            self.hop = self._lm.spec.hop
            self._lead = self._lm.spec.win  # frame i ends at sample i*hop + win
            self.dim = self._lm.n_mels
        else:
            from sensors.analog import AnalogConfig, AnalogFrontEnd

            self._fe = AnalogFrontEnd(config=AnalogConfig(), sample_rate=sample_rate)
            self.hop = self._fe.hop
            self._lead = self.hop  # tick i ends at sample (i+1)*hop
            self.dim = self._fe.n_channels
        self.period_s = self.hop / sample_rate

    def reset(self) -> None:
        if self._pcen is not None:
            self._pcen.reset()
        if self.kind in MEL_KINDS:
            self._lm.reset()
        else:
            self._fe.reset()

    def push(self, samples: np.ndarray) -> np.ndarray:
        if self._pcen is not None:
            return self._pcen.push(self._lm.push(samples))
        if self.kind == "logmel":
            return self._lm.push(samples)
        # dBFS / 10 keeps envelopes in the same numeric range as natural-log mel energies.
        return (self._fe.process(samples).envelopes_db / 10.0).astype(np.float32)

    def compute(self, samples: np.ndarray) -> np.ndarray:
        """Whole clip from a fresh state (does not disturb a stream in progress for logmel and pcen)."""
        if self._pcen is not None:
            return self._pcen.compute(self._lm.compute(samples))
        if self.kind == "logmel":
            return self._lm.compute(samples)
        self._fe.reset()
        out = self.push(samples)
        self._fe.reset()
        return out

    def frame_end_s(self, i: np.ndarray | int) -> np.ndarray:
        return (np.asarray(i, dtype=np.float64) * self.hop + self._lead) / self.sample_rate

    def spec(self) -> dict:
        if self._pcen is not None:
            return {**self._lm.spec.as_dict(), "kind": "pcen", "pcen": self._pcen.spec.as_dict()}
        if self.kind == "logmel":
            return self._lm.spec.as_dict()
        return {"kind": "analog_envelopes", "sample_rate": self.sample_rate, "hop_ms": 1000.0 * self.period_s,
                "n_channels": self.dim, "scale": "dBFS/10", "analog": "AnalogConfig() defaults"}
