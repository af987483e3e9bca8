"""Simulated analog front end: band-pass filter bank, envelope detectors, adaptive noise floors,
comparators with hysteresis, and a debounced wake gate, all on the audio clock."""

from sensors.analog.config import AnalogConfig, DecisionConfig, NonIdealConfig
from sensors.analog.events import GateEvent, duty_cycle, open_intervals
from sensors.analog.frontend import AnalogBlock, AnalogFrontEnd, run_file

__all__ = [
    "AnalogBlock", "AnalogConfig", "AnalogFrontEnd", "DecisionConfig", "GateEvent", "NonIdealConfig",
    "duty_cycle", "open_intervals", "run_file",
]
