"""Settings of the simulated analog front end (the ``analog:`` section of the thresholds file).

Every field has a description: `gate-node config default` turns them into the comments of the
default thresholds file, so write them for the person tuning a board.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gate_core.strict import Strict


class NonIdealConfig(Strict):
    """Mismatch and noise of real analog parts, drawn once per board from ``seed``."""

    seed: int = Field(0, ge=0, description="Seed of this simulated board's mismatch and noise draws")
    gain_mismatch_db: float = Field(
        0.5, ge=0.0, le=6.0, description="Std-dev of each channel's gain error, dB (Gm-C filters: ~0.5 dB)")
    fc_mismatch_pct: float = Field(
        2.0, ge=0.0, le=20.0, description="Std-dev of each channel's centre-frequency error, % (untrimmed Gm-C: 1-5%)")
    comparator_offset_db: float = Field(
        0.5, ge=0.0, le=6.0, description="Std-dev of each comparator's input offset, referred to the log envelope, dB")
    comparator_noise_db: float = Field(
        0.3, ge=0.0, le=6.0, description="RMS input-referred comparator noise per decision tick, dB")
    envelope_ripple_pct: float = Field(
        3.0, ge=0.0, le=50.0, description="Peak residual carrier ripple on each envelope, % of the envelope")


class CrossbarConfig(Strict):
    """The phase-change-memory crossbar classifier (rule crossbar): its network, devices and periphery.

    Device figures follow the PCM statistical model of Nandakumar et al. 2019 and Joshi et al. 2020
    (sensors/analog/crossbar.py); the chip's draws come from the front end's ``nonideal.seed``.
    """

    model: str | None = Field(
        None, description="Trained network (.npz from python -m sensors.analog.train_crossbar); null = the "
                          "shipped gate/models/crossbar_gate.npz")
    threshold: float | None = Field(
        None, description="Level of the network's output (a logit) at which the wake comparator trips; "
                          "null = the threshold on the model's card")
    drift_s: float = Field(
        3600.0, ge=0.0, le=3.2e8, description="Time since the crossbar was programmed when it is read, s "
                                              "(conductances drift as (t/t0)^-nu)")
    drift_compensation: bool = Field(
        True, description="Rescale each layer's output by a reference-column read, as in Joshi et al. 2020")
    g_max_us: float = Field(25.0, gt=0.0, le=1000.0, description="Largest programmable conductance, uS")
    levels: int = Field(
        0, ge=0, le=4096, description="Programming target levels per device across 0..g_max (0 = continuous)")
    dac_bits: int = Field(8, ge=0, le=16, description="Input DAC resolution, bits (0 = ideal)")
    adc_bits: int = Field(8, ge=0, le=16, description="Column ADC resolution, bits (0 = ideal)")
    prog_noise_scale: float = Field(
        1.0, ge=0.0, le=10.0, description="Multiplier of the programming-noise sigma (0 = exact programming)")
    read_noise_scale: float = Field(1.0, ge=0.0, le=10.0, description="Multiplier of the 1/f read noise (0 = none)")
    drift_scale: float = Field(1.0, ge=0.0, le=10.0, description="Multiplier of the drift exponents (0 = no drift)")
    ir_drop: float = Field(
        0.0, ge=0.0, le=0.5, description="Share of the signal lost by the device farthest from driver and "
                                         "sense amplifier through wire resistance (0 = ideal wires)")


class DecisionConfig(Strict):
    """How the channel comparators are combined into one wake decision."""

    rule: Literal["k_of_n", "weighted", "crossbar"] = Field(
        "k_of_n", description="k_of_n: open when at least k channels are above floor+margin; "
                              "weighted: open when the weighted sum of comparator outputs reaches threshold; "
                              "crossbar: open when a small network on a simulated PCM crossbar, fed the "
                              "envelopes above floor and their recent history, calls the sound keyword-like")
    k: int = Field(3, ge=1, le=64, description="Channels that must be above floor+margin (rule k_of_n)")
    weights: list[float] | None = Field(
        None, description="One weight per channel (rule weighted); null means all 1.0")
    threshold: float = Field(3.0, gt=0.0, description="Weighted-sum level that opens the gate (rule weighted)")
    crossbar: CrossbarConfig = Field(default_factory=CrossbarConfig)


class AnalogConfig(Strict):
    """Band-pass filter bank -> envelope detectors -> adaptive floor -> comparators -> decision."""

    n_channels: int = Field(12, ge=2, le=32, description="Number of band-pass channels")
    f_low_hz: float = Field(250.0, gt=20.0, le=7000.0, description="Centre frequency of the lowest channel, Hz")
    f_high_hz: float = Field(4000.0, gt=20.0, le=7900.0, description="Centre frequency of the highest channel, Hz")
    centres_hz: list[float] | None = Field(
        None, description="Explicit centre frequencies (overrides f_low_hz/f_high_hz/n_channels); null = geometric")
    q: float = Field(3.0, ge=0.5, le=30.0, description="Quality factor of each band-pass (centre / bandwidth)")
    filter_order: int = Field(2, ge=2, le=8, description="Band-pass order (2 = one resonator; even numbers)")
    tick_ms: float = Field(10.0, ge=2.0, le=50.0, description="Decision tick: envelopes are sampled this often, ms")
    envelope_tau_ms: float = Field(20.0, ge=1.0, le=500.0, description="Envelope detector RC time constant, ms")
    floor_tau_ms: float = Field(
        200.0, ge=10.0, le=5000.0, description="Smoothing of the envelope seen by the noise-floor tracker, ms")
    floor_rise_db_per_s: float = Field(
        3.0, gt=0.0, le=60.0,
        description="How fast the noise floor may climb (it falls at once to a quieter level), dB/s; a steady "
                    "source that switches on S dB above the old floor holds the gate open about S/rate seconds")
    abs_floor_dbfs: float = Field(
        -70.0, ge=-120.0, le=-20.0, description="Circuit noise floor: envelopes never read below this, dBFS")
    margin_db: float = Field(6.0, ge=0.0, le=40.0, description="Comparator threshold above the noise floor, dB")
    hysteresis_db: float = Field(
        2.0, ge=0.0, le=20.0, description="Comparator hysteresis: on at margin+h/2, off at margin-h/2, dB")
    min_open_s: float = Field(
        0.02, ge=0.0, le=1.0, description="The decision must hold this long before the gate opens (debounce), s")
    hangover_s: float = Field(
        0.3, ge=0.0, le=5.0, description="The gate stays open this long after the decision drops, s")
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    nonideal: NonIdealConfig = Field(default_factory=NonIdealConfig)

    @model_validator(mode="after")
    def _coherent(self) -> AnalogConfig:
        if self.centres_hz is None and self.f_high_hz <= self.f_low_hz:
            raise ValueError(f"f_high_hz ({self.f_high_hz}) must be above f_low_hz ({self.f_low_hz})")
        if self.centres_hz is not None:
            c = self.centres_hz
            if not 2 <= len(c) <= 32:
                raise ValueError(f"centres_hz needs 2 to 32 channels, got {len(c)}")
            if c[0] <= 20.0 or any(b <= a for a, b in zip(c, c[1:], strict=False)):
                raise ValueError(f"centres_hz must be above 20 Hz and strictly increasing, got {c}")
        if self.filter_order % 2:
            raise ValueError(f"filter_order must be even (a band-pass has pole pairs), got {self.filter_order}")
        n = self.channel_count
        if self.decision.rule == "k_of_n" and self.decision.k > n:
            raise ValueError(f"decision.k ({self.decision.k}) exceeds the number of channels ({n})")
        if self.decision.weights is not None and len(self.decision.weights) != n:
            raise ValueError(f"decision.weights has {len(self.decision.weights)} entries for {n} channels")
        if self.decision.rule == "weighted":
            w = self.decision.weights if self.decision.weights is not None else [1.0] * n
            reachable = sum(x for x in w if x > 0)
            if self.decision.threshold > reachable:
                raise ValueError(f"decision.threshold ({self.decision.threshold}) exceeds the largest reachable "
                                 f"weighted sum ({reachable}): the gate could never open")
        return self

    @property
    def channel_count(self) -> int:
        return len(self.centres_hz) if self.centres_hz is not None else self.n_channels
