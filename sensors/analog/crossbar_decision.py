"""The crossbar wake decision: a small network on a PCM crossbar, fed the envelopes above their floor.

Per tick, each channel's level above its adaptive floor (dB) is smoothed by an RC, scaled to the
input DAC's range and kept in a short analog delay line; the taps of that line (all channels at a
few lags) drive the rows of the first crossbar layer. Its ReLU outputs drive a second layer with
one output, whose level a comparator checks against the threshold; the existing debounce and
hangover turn that into the gate. Everything is streaming: the delay line, the RC and the per-read
noise streams carry their state across blocks, so any chunking gives the same ticks.

The network is a small .npz file (see :class:`CrossbarNet`), trained with hardware-aware noise
injection by ``python -m sensors.analog.train_crossbar``; its JSON card sits next to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gate_core.errors import ConfigError
from sensors.analog.config import AnalogConfig, CrossbarConfig
from sensors.analog.crossbar import CrossbarLayer
from sensors.analog.detect import OnePole, rc_coefficient

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "gate" / "models" / "crossbar_gate.npz"
FORMAT = "gate.crossbar/1"


@dataclass(frozen=True)
class CrossbarNet:
    """A trained network and the feature path it expects, as stored in its .npz file."""

    taps: tuple[int, ...]            # delay-line lags, ticks (0 = this tick)
    smooth_ms: float                 # RC before the delay line
    full_scale_db: float             # level above floor that maps to the top of the DAC range
    tick_ms: float
    n_channels: int
    threshold: float                 # default comparator level (logit)
    layers: tuple[tuple[np.ndarray, np.ndarray, float], ...]  # (W (n_in, n_out), b, ADC full scale)
    meta: dict = field(default_factory=dict)

    @property
    def n_inputs(self) -> int:
        return len(self.taps) * self.n_channels

    @property
    def macs_per_tick(self) -> int:
        """Multiply-accumulates per tick, bias rows included."""
        return int(sum((w.shape[0] + 1) * w.shape[1] for w, _, _ in self.layers))

    def save(self, path: str | Path) -> None:
        arrays = {"taps": np.asarray(self.taps, np.int64)}
        for i, (w, b, r) in enumerate(self.layers):
            arrays[f"w{i}"] = np.asarray(w, np.float32)
            arrays[f"b{i}"] = np.asarray(b, np.float32)
            arrays[f"range{i}"] = np.float64(r)
        head = {"format": FORMAT, "smooth_ms": self.smooth_ms, "full_scale_db": self.full_scale_db,
                "tick_ms": self.tick_ms, "n_channels": self.n_channels, "threshold": self.threshold,
                "n_layers": len(self.layers), "meta": self.meta}
        with open(path, "wb") as fh:
            np.savez_compressed(fh, header=np.asarray(json.dumps(head)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> CrossbarNet:
        where = f"analog.decision.crossbar.model: {path}"
        try:
            with np.load(path, allow_pickle=False) as z:
                head = json.loads(str(z["header"]))
                if head.get("format") != FORMAT:
                    raise ConfigError(f"{where}: not a {FORMAT} network (format {head.get('format')!r})")
                layers = tuple((z[f"w{i}"].astype(np.float64), z[f"b{i}"].astype(np.float64), float(z[f"range{i}"]))
                               for i in range(int(head["n_layers"])))
                taps = tuple(int(t) for t in z["taps"])
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot read the network ({exc})", code="config_invalid") from None
        return cls(taps=taps, smooth_ms=float(head["smooth_ms"]), full_scale_db=float(head["full_scale_db"]),
                   tick_ms=float(head["tick_ms"]), n_channels=int(head["n_channels"]),
                   threshold=float(head["threshold"]), layers=layers, meta=head.get("meta", {}))

    def features(self, rel_db: np.ndarray) -> np.ndarray:
        """Smoothed levels above floor (n, n_channels) -> DAC inputs in [-1, 1] (before the delay line)."""
        return 2.0 * np.clip(rel_db / self.full_scale_db, 0.0, 1.0) - 1.0

    def forward_float(self, x: np.ndarray) -> np.ndarray:
        """The network in floating point, on delay-line rows (n, n_inputs): the crossbar's reference."""
        h = x
        for i, (w, b, _) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h[:, 0]


class DelayLine:
    """Rows of the last ``max(taps)`` ticks, so each tick can read its lagged taps; starts quiet."""

    def __init__(self, taps: tuple[int, ...], n_channels: int, quiet: float = -1.0) -> None:
        self.lags = np.asarray(taps, dtype=np.int64)
        self.depth = int(self.lags.max())
        self.n_channels = n_channels
        self.quiet = quiet
        self.reset()

    def reset(self) -> None:
        self._hist = np.full((self.depth, self.n_channels), self.quiet)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        buf = np.concatenate([self._hist, x])
        idx = (self.depth + np.arange(n))[:, None] - self.lags[None, :]
        if self.depth:
            self._hist = buf[-self.depth:].copy()
        return buf[idx].reshape(n, -1)


def delay_rows(net: CrossbarNet, rel_db: np.ndarray, tick_s: float) -> np.ndarray:
    """The crossbar's input rows for a whole stream of levels above floor, from power-up (training)."""
    smooth = OnePole(rc_coefficient(net.smooth_ms / 1000.0, tick_s))
    return DelayLine(net.taps, net.n_channels)(net.features(smooth(rel_db.astype(np.float64))))


class CrossbarDecision:
    """Streaming crossbar classifier: levels above floor per tick -> (decision, output level)."""

    def __init__(self, net: CrossbarNet, cfg: CrossbarConfig, *, seed: int, tick_s: float) -> None:
        self.net = net
        self.cfg = cfg
        self.threshold = net.threshold if cfg.threshold is None else cfg.threshold
        self.seed = seed
        # Children 0-2 of the board's seed are its mismatch and tick noise (board.py); 3 and 4 are the chip.
        children = np.random.SeedSequence(seed).spawn(5)
        program_rng = np.random.default_rng(children[3])
        ranges = [1.0] + [r for _, _, r in net.layers]
        self.layers = [CrossbarLayer(w, b, cfg=cfg, out_range=r, relu=i < len(net.layers) - 1,
                                     program_rng=program_rng, read_interval_s=tick_s, in_range=ranges[i])
                       for i, (w, b, r) in enumerate(net.layers)]
        self._smooth = OnePole(rc_coefficient(net.smooth_ms / 1000.0, tick_s))
        self._line = DelayLine(net.taps, net.n_channels)
        self.reset()

    @classmethod
    def from_config(cls, config: AnalogConfig, tick_s: float) -> CrossbarDecision:
        cfg = config.decision.crossbar
        path = Path(cfg.model) if cfg.model is not None else DEFAULT_MODEL
        if not path.is_file():
            raise ConfigError(f"analog.decision.crossbar.model: {path} is not a file", code="config_invalid")
        net = CrossbarNet.load(path)
        n = config.channel_count
        if net.n_channels != n:
            raise ConfigError(f"analog.decision.crossbar.model: {path} was trained on {net.n_channels} channels, "
                              f"the front end has {n}", code="config_invalid")
        if abs(net.tick_ms - config.tick_ms) > 1e-9:
            raise ConfigError(f"analog.decision.crossbar.model: {path} was trained at tick_ms {net.tick_ms}, "
                              f"the front end ticks every {config.tick_ms} ms", code="config_invalid")
        return cls(net, cfg, seed=config.nonideal.seed, tick_s=tick_s)

    def reset(self) -> None:
        """Power-up: the chip keeps its conductances; delay line, RC and read-noise streams restart."""
        self._smooth.reset()
        self._line.reset()
        reads = np.random.SeedSequence(self.seed).spawn(5)[4].spawn(len(self.layers))
        self._read_rngs = [np.random.default_rng(s) for s in reads]

    def __call__(self, rel_db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = rel_db.shape[0]
        if n == 0:
            return np.zeros(0, bool), np.zeros(0, np.float32)
        x = self._line(self.net.features(self._smooth(rel_db.astype(np.float64))))
        for layer, rng in zip(self.layers, self._read_rngs, strict=True):
            x = layer(x, rng)
        score = x[:, 0]
        return score >= self.threshold, score.astype(np.float32)
