"""Counting, kept apart from pricing.

The ledger only counts what each stage did: invocations, active seconds and bytes. It never knows
a watt. A saved snapshot can therefore be priced later for any device profile without replaying.

``active_seconds`` are seconds on the AUDIO clock during which the stage was powered or processing
(for the cloud: audio seconds it processed). ``bytes`` are what the stage emitted: PCM from the
ADC, the encoded payload from the encoder, bytes on the wire (sent + received) for the radio.
Nothing here reads the wall clock, so a replay at 1000x real time counts what a live run counts.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

ANALOG_GATE = "analog_gate"
ADC = "adc"
FEATURES_KWS = "features_kws"
SECOND_STAGE = "second_stage"  # the on-node speech-embedding check of tiny-model candidates (Pi-class nodes)
ENCODER = "encoder"
RADIO = "radio"
CLOUD = "cloud"
STAGES: tuple[str, ...] = (ANALOG_GATE, ADC, FEATURES_KWS, SECOND_STAGE, ENCODER, RADIO, CLOUD)
# The PCM crossbar classifier of the analog front end (analog.decision.rule: crossbar): one invocation
# per decision tick. An added stage, not in STAGES: only profiles of nodes that carry a crossbar price
# it, and a run with it on a profile without it shows it as unpriced.
CROSSBAR = "crossbar"

# Priced from audio seconds by the model, so it can never be charged as a stage.
HOST = "host"

SNAPSHOT_VERSION = 1

# Stage names end up as JSON keys, YAML keys and metric labels: keep them boring.
_STAGE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")

J_PER_KWH = 3.6e6  # joules in a kilowatt-hour


def validate_stage(stage: str) -> str:
    """Return ``stage`` if it is a usable stage name; later pipeline stages may add new ones."""
    if not isinstance(stage, str) or not _STAGE_RE.fullmatch(stage):
        raise ValueError(f"stage name must be a lower-case identifier ([a-z][a-z0-9_]*), got {stage!r}")
    if stage == HOST:
        raise ValueError("'host' is priced from audio seconds and cannot be charged as a stage")
    return stage


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class StageCounts:
    """What one stage did. Immutable; never negative."""

    invocations: int = 0
    active_seconds: float = 0.0
    bytes: int = 0

    def __post_init__(self) -> None:
        _count("invocations", self.invocations)
        object.__setattr__(self, "active_seconds", _seconds("active_seconds", self.active_seconds))
        _count("bytes", self.bytes)

    @property
    def is_zero(self) -> bool:
        return self.invocations == 0 and self.active_seconds == 0.0 and self.bytes == 0

    def add(self, other: StageCounts) -> StageCounts:
        return StageCounts(
            invocations=self.invocations + other.invocations,
            active_seconds=self.active_seconds + other.active_seconds,
            bytes=self.bytes + other.bytes,
        )

    def subtract(self, earlier: StageCounts) -> StageCounts:
        """Counts since ``earlier``; a negative result means it was not an earlier reading."""
        try:
            return StageCounts(
                invocations=self.invocations - earlier.invocations,
                active_seconds=self.active_seconds - earlier.active_seconds,
                bytes=self.bytes - earlier.bytes,
            )
        except ValueError as exc:
            raise ValueError(f"cannot subtract a later or unrelated reading: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"invocations": self.invocations, "active_seconds": self.active_seconds, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageCounts:
        if not isinstance(data, Mapping):
            raise TypeError(f"stage counts must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"invocations", "active_seconds", "bytes"}
        if unknown:
            raise ValueError(f"unknown stage-count keys: {sorted(unknown)}")
        return cls(
            invocations=data.get("invocations", 0),
            active_seconds=data.get("active_seconds", 0.0),
            bytes=data.get("bytes", 0),
        )


ZERO = StageCounts()


@dataclass(frozen=True, slots=True, eq=True)
class LedgerSnapshot:
    """An immutable reading of a ledger, or a difference of two readings.

    Stages with all-zero counts are dropped, so equal work compares equal however it was reached.
    """

    audio_seconds: float = 0.0
    stages: Mapping[str, StageCounts] = field(default_factory=dict)

    __hash__ = None  # type: ignore[assignment]  # holds a mapping

    def __post_init__(self) -> None:
        object.__setattr__(self, "audio_seconds", _seconds("audio_seconds", self.audio_seconds))
        clean: dict[str, StageCounts] = {}
        for name, counts in self.stages.items():
            validate_stage(name)
            if not isinstance(counts, StageCounts):
                raise TypeError(f"stages[{name!r}] must be StageCounts, got {type(counts).__name__}")
            if not counts.is_zero:
                clean[name] = counts
        object.__setattr__(self, "stages", MappingProxyType(clean))

    def __getitem__(self, stage: str) -> StageCounts:
        """Counts for ``stage``; zero for a stage that never ran."""
        return self.stages.get(stage, ZERO)

    def subtract(self, earlier: LedgerSnapshot) -> LedgerSnapshot:
        if self.audio_seconds < earlier.audio_seconds:
            raise ValueError("cannot subtract a later or unrelated reading: audio clock went backwards")
        names = set(self.stages) | set(earlier.stages)
        return LedgerSnapshot(
            audio_seconds=self.audio_seconds - earlier.audio_seconds,
            stages={n: self[n].subtract(earlier[n]) for n in names},
        )

    def add(self, other: LedgerSnapshot) -> LedgerSnapshot:
        names = set(self.stages) | set(other.stages)
        return LedgerSnapshot(
            audio_seconds=self.audio_seconds + other.audio_seconds,
            stages={n: self[n].add(other[n]) for n in names},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "audio_seconds": self.audio_seconds,
            "stages": {n: self.stages[n].to_dict() for n in ordered_stages(self.stages)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerSnapshot:
        if not isinstance(data, Mapping):
            raise TypeError(f"a ledger snapshot must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"version", "audio_seconds", "stages"}
        if unknown:
            raise ValueError(f"unknown ledger-snapshot keys: {sorted(unknown)}")
        version = data.get("version", SNAPSHOT_VERSION)
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported ledger-snapshot version {version!r} (expected {SNAPSHOT_VERSION})")
        stages_in = data.get("stages", {})
        if not isinstance(stages_in, Mapping):
            raise TypeError("snapshot 'stages' must be a mapping")
        stages = {}
        for name, counts in stages_in.items():
            try:
                stages[name] = StageCounts.from_dict(counts)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"stages.{name}: {exc}") from None
        return cls(audio_seconds=data.get("audio_seconds", 0.0), stages=stages)


def ordered_stages(names: Iterable[str]) -> list[str]:
    """Pipeline order first, then added stages alphabetically: stable reports and diffs."""
    names = set(names)
    return [s for s in STAGES if s in names] + sorted(names - set(STAGES))


class EnergyLedger:
    """Thread-safe running counts: the audio thread and the MQTT thread both charge it.

    ``always_on`` stages (e.g. the analog gate, or a USB mic that is never powered down) are
    charged active seconds by :meth:`advance_audio`, so they can never drift from the audio clock.
    """

    def __init__(self, *, always_on: Iterable[str] = ()) -> None:
        self._always_on = tuple(validate_stage(s) for s in always_on)
        self._lock = threading.Lock()
        self._audio_s = 0.0
        self._stages: dict[str, StageCounts] = {}

    @property
    def always_on(self) -> tuple[str, ...]:
        return self._always_on

    def charge(self, stage: str, *, invocations: int = 0, active_seconds: float = 0.0, nbytes: int = 0) -> None:
        counts = StageCounts(invocations=invocations, active_seconds=active_seconds, bytes=nbytes)
        validate_stage(stage)
        with self._lock:
            self._stages[stage] = self._stages.get(stage, ZERO).add(counts)

    def advance_audio(self, seconds: float) -> None:
        """Audio seconds elapsed: the clock the host and always-on stages are priced on."""
        seconds = _seconds("seconds", seconds)
        on = StageCounts(active_seconds=seconds)
        with self._lock:
            self._audio_s += seconds
            for stage in self._always_on:
                self._stages[stage] = self._stages.get(stage, ZERO).add(on)

    def snapshot(self) -> LedgerSnapshot:
        with self._lock:
            return LedgerSnapshot(audio_seconds=self._audio_s, stages=dict(self._stages))

    def delta(self, since: LedgerSnapshot) -> LedgerSnapshot:
        """Counts since ``since`` (an earlier snapshot of this ledger): heartbeats, per-segment cost."""
        return self.snapshot().subtract(since)

    def reset(self) -> None:
        with self._lock:
            self._audio_s = 0.0
            self._stages.clear()

    def to_dict(self) -> dict[str, Any]:
        data = self.snapshot().to_dict()
        data["always_on"] = list(self._always_on)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnergyLedger:
        data = dict(data)
        ledger = cls(always_on=data.pop("always_on", ()))
        snap = LedgerSnapshot.from_dict(data)
        ledger._audio_s = snap.audio_seconds
        ledger._stages = dict(snap.stages)
        return ledger
