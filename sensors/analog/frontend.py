"""The simulated analog front end: filter bank -> envelopes -> adaptive floors -> comparators -> gate.

It is a behavioural model at the envelope rate (one tick every ``tick_ms``), which is what the
hardware's decision logic sees, so the cost per audio second is a few FFTs and small matrix ops.

Time convention: tick i summarises the audio ending at sample (i+1)*hop, so its time stamp is
(i+1)*tick_s on the audio clock, computed from the integer tick index (never accumulated); its
analysis frame is the ~16 ms before that instant (audio before t=0 counts as silence). A gate event
carries the time of the tick at which the gate changed state, so an event at t_s is known once
t_s seconds of audio have been fed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from gate_core.errors import ConfigError
from sensors.analog.board import TickNoise, draw_mismatch
from sensors.analog.config import AnalogConfig
from sensors.analog.crossbar_decision import CrossbarDecision
from sensors.analog.detect import FloorTracker, OnePole, rc_coefficient, to_dbfs
from sensors.analog.events import GateEvent, edges
from sensors.analog.filterbank import FilterBank, nominal_centres
from sensors.analog.logic import DebouncedGate, Hysteresis, decide, ticks_for
from sensors.wavfile import AudioFileSource

# Long inputs are cut into slabs of this many ticks: the temporaries then stay in cache, which is
# ~1.5x faster on a minute of audio than one pass over it.
SLAB_TICKS = 1024


@dataclass(frozen=True, slots=True)
class AnalogBlock:
    """What the front end produced for one chunk of audio: one row per tick."""

    t0_s: float                    # time of the first tick (of the next one, if the block is empty)
    tick_s: float
    envelopes_db: np.ndarray       # (n_ticks, n_channels) float32, dBFS, as the log amplifiers read
    floor_db: np.ndarray           # (n_ticks, n_channels) adaptive noise floor, dBFS
    above: np.ndarray              # (n_ticks, n_channels) bool, comparator outputs
    open: np.ndarray               # (n_ticks,) bool, gate state after debounce and hangover
    events: tuple[GateEvent, ...]
    first_tick: int = 0
    score: np.ndarray | None = None  # (n_ticks,) crossbar output level (rule crossbar only)

    def __post_init__(self) -> None:
        # The block is a value handed to other stages: freeze its arrays (we own them, no copy).
        for name in ("envelopes_db", "floor_db", "above", "open", "score"):
            if getattr(self, name) is not None:
                getattr(self, name).flags.writeable = False

    @property
    def n_ticks(self) -> int:
        return int(self.open.shape[0])

    @property
    def times_s(self) -> np.ndarray:
        return tick_times(self.first_tick, self.n_ticks, self.tick_s)

    @staticmethod
    def concat(blocks: list[AnalogBlock]) -> AnalogBlock:
        if not blocks:
            raise ValueError("AnalogBlock.concat needs at least one block")
        head = blocks[0]
        return AnalogBlock(
            t0_s=head.t0_s, tick_s=head.tick_s, first_tick=head.first_tick,
            envelopes_db=np.concatenate([b.envelopes_db for b in blocks]),
            floor_db=np.concatenate([b.floor_db for b in blocks]),
            above=np.concatenate([b.above for b in blocks]),
            open=np.concatenate([b.open for b in blocks]),
            events=tuple(ev for b in blocks for ev in b.events),
            score=None if head.score is None else np.concatenate([b.score for b in blocks]))


def tick_times(first_tick: int, n: int, tick_s: float) -> np.ndarray:
    return (np.arange(first_tick, first_tick + n, dtype=np.int64) + 1) * tick_s


class AnalogFrontEnd:
    """One simulated board. Feed int16 or float32 chunks of any size; state is carried between them."""

    def __init__(self, *, config: AnalogConfig, sample_rate: int = 16000) -> None:
        self.config = config
        self.sample_rate = sample_rate
        self.hop = _hop_samples(config, sample_rate)
        self.tick_s = self.hop / sample_rate
        n = config.channel_count
        self.nominal_centres_hz = (np.asarray(config.centres_hz, dtype=np.float64) if config.centres_hz is not None
                                   else nominal_centres(config.f_low_hz, config.f_high_hz, n))
        _check_band(self.nominal_centres_hz, sample_rate,
                    "analog.centres_hz" if config.centres_hz is not None else "analog.f_high_hz")
        mismatch = draw_mismatch(config.nonideal, n)
        self.centres_hz = self.nominal_centres_hz * mismatch.fc_ratio
        self.gains_db = mismatch.gain_db
        self.offsets_db = mismatch.offset_db.astype(np.float32)
        self._bank = FilterBank(sample_rate=sample_rate, hop=self.hop, fc_hz=self.centres_hz,
                                gain_db=self.gains_db, q=config.q, order=config.filter_order)
        self._envelope = OnePole(rc_coefficient(config.envelope_tau_ms / 1000.0, self.tick_s))
        self._floor = FloorTracker(smooth_pole=rc_coefficient(config.floor_tau_ms / 1000.0, self.tick_s),
                                   rise_per_tick_db=config.floor_rise_db_per_s * self.tick_s)
        half = config.hysteresis_db / 2.0
        self._comparators = Hysteresis(on_level=config.margin_db + half, off_level=config.margin_db - half,
                                       n_channels=n)
        self._gate = DebouncedGate(min_open_ticks=ticks_for(config.min_open_s, self.tick_s),
                                   hangover_ticks=ticks_for(config.hangover_s, self.tick_s))
        self._noise = TickNoise(config.nonideal, n)
        self.crossbar = (CrossbarDecision.from_config(config, self.tick_s) if config.decision.rule == "crossbar"
                         else None)
        self.ticks_processed = 0
        self._samples_seen = 0

    @classmethod
    def from_config(cls, config: AnalogConfig, sample_rate: int = 16000) -> AnalogFrontEnd:
        return cls(config=config, sample_rate=sample_rate)

    @property
    def n_channels(self) -> int:
        return int(self.centres_hz.size)

    @property
    def t_s(self) -> float:
        """Audio time fed so far."""
        return self._samples_seen / self.sample_rate

    @property
    def is_open(self) -> bool:
        return self._gate.is_open

    def reset(self) -> None:
        """Back to power-up: same board (mismatch), noise streams restarted, clock at zero."""
        for part in (self._bank, self._envelope, self._floor, self._comparators, self._gate, self._noise):
            part.reset()
        if self.crossbar is not None:
            self.crossbar.reset()
        self.ticks_processed = 0
        self._samples_seen = 0

    def process(self, samples: np.ndarray) -> AnalogBlock:
        """Run a chunk of int16 or float32 samples (any size) through the board."""
        x = _as_float32(samples)
        slab = SLAB_TICKS * self.hop
        if x.size <= slab:
            return self._process(x)
        return AnalogBlock.concat([self._process(x[i:i + slab]) for i in range(0, x.size, slab)])

    def _process(self, x: np.ndarray) -> AnalogBlock:
        self._samples_seen += x.size
        power = self._bank.process(x)
        first = self.ticks_processed
        n = power.shape[0]
        self.ticks_processed += n
        if n == 0:
            return self._empty_block(first)
        # Rectifier then RC: the RC smooths the amplitude, not the power, as a diode detector does.
        env = self._envelope(np.sqrt(power)) * self._noise.ripple_gain(n)
        env_db = to_dbfs(env * env, self.config.abs_floor_dbfs)
        floor = self._floor(env_db)
        drive = (env_db - floor) + self.offsets_db + self._noise.comparator_db(n)
        above = self._comparators(drive)
        score = None
        if self.crossbar is not None:
            decision, score = self.crossbar(env_db - floor)
        else:
            decision = decide(above, self.config.decision)
        was_open = self._gate.is_open
        gate = self._gate(decision, first)
        times = tick_times(first, n, self.tick_s)
        return AnalogBlock(t0_s=float(times[0]), tick_s=self.tick_s, first_tick=first, envelopes_db=env_db,
                           floor_db=floor.astype(np.float32), above=above, open=gate,
                           events=edges(gate, was_open, times), score=score)

    def process_all(self, samples: np.ndarray, *, chunk_samples: int | None = None) -> AnalogBlock:
        """Process a whole signal (in chunks of ``chunk_samples`` if given) as one block."""
        if chunk_samples is not None and chunk_samples <= 0:
            raise ValueError(f"chunk_samples must be positive, got {chunk_samples}")
        if chunk_samples is None or chunk_samples >= len(samples):
            return self.process(samples)
        blocks = [self.process(samples[i:i + chunk_samples]) for i in range(0, len(samples), chunk_samples)]
        return AnalogBlock.concat(blocks)

    def _empty_block(self, first: int) -> AnalogBlock:
        n = self.n_channels
        return AnalogBlock(t0_s=float(tick_times(first, 1, self.tick_s)[0]), tick_s=self.tick_s, first_tick=first,
                           envelopes_db=np.zeros((0, n), np.float32), floor_db=np.zeros((0, n), np.float32),
                           above=np.zeros((0, n), bool), open=np.zeros(0, bool), events=(),
                           score=None if self.crossbar is None else np.zeros(0, np.float32))


def run_file(path: str | os.PathLike, *, config: AnalogConfig | None = None,
             chunk_samples: int = 1 << 16) -> AnalogBlock:
    """Read a file as 16 kHz mono, ``chunk_samples`` at a time, through a fresh front end."""
    source = AudioFileSource(path, read_block=chunk_samples)
    fe = AnalogFrontEnd(config=config or AnalogConfig(), sample_rate=source.target_rate)
    blocks = [fe.process(block) for block in source.blocks()]
    return AnalogBlock.concat(blocks) if blocks else fe._empty_block(0)


def _as_float32(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise TypeError(f"AnalogFrontEnd.process expects a 1-D array, got shape {x.shape}")
    if x.dtype == np.int16:
        return x.astype(np.float32) * np.float32(1.0 / 32768.0)
    if x.dtype in (np.float32, np.float64):
        return x.astype(np.float32, copy=False)
    raise TypeError(f"AnalogFrontEnd.process expects int16 or float samples, got {x.dtype}")


def _hop_samples(config: AnalogConfig, sample_rate: int) -> int:
    if sample_rate <= 0:
        raise ConfigError(f"sample_rate must be positive, got {sample_rate}", code="config_invalid")
    hop = config.tick_ms * sample_rate / 1000.0
    if abs(hop - round(hop)) > 1e-6:
        raise ConfigError(
            f"analog.tick_ms: {config.tick_ms} ms is not a whole number of samples at {sample_rate} Hz",
            code="config_invalid")
    return int(round(hop))


def _check_band(centres: np.ndarray, sample_rate: int, field: str) -> None:
    # A band-pass centred near Nyquist has half its skirt folded back; the model would lie there.
    nyquist = sample_rate / 2.0
    if centres.max() >= 0.95 * nyquist:
        raise ConfigError(f"{field}: top centre {centres.max():.0f} Hz is too close to Nyquist ({nyquist:.0f} Hz)",
                          code="config_invalid")
