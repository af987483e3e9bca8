"""Pricing: ledger counts x device profile -> joules and CO2e.

Pure functions of a :class:`LedgerSnapshot` and a validated :class:`DeviceProfile`. Every non-zero
figure in a profile must say where it came from, so a reported saving can always be traced back
to a datasheet, a benchmark or a stated assumption.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from gate_core.cliutil import yaml_error_text
from gate_core.errors import ProfileError
from gate_core.ledger import (
    CLOUD,
    HOST,
    J_PER_KWH,
    RADIO,
    SECOND_STAGE,
    STAGES,
    LedgerSnapshot,
    ordered_stages,
    validate_stage,
)
from gate_core.strict import Strict

DEFAULT_GRID_G_CO2E_PER_KWH = 475.0
DEFAULT_CARBON_SOURCE = "IEA 2019 world-average grid intensity, CodeCarbon's default (ENERGY.md: Cloud and carbon)"

# Node stages every profile must price explicitly (zero is fine, silence is not): a typo such as
# "feature_kws" would otherwise leave the real stage unpriced without anyone noticing. The second stage
# is optional: only profiles of nodes that can run it (Pi-class) price it, and kws.second_stage is
# refused on a profile without it.
OPTIONAL_STAGES: tuple[str, ...] = (SECOND_STAGE,)
NODE_STAGES: tuple[str, ...] = tuple(s for s in STAGES if s != CLOUD and s not in OPTIONAL_STAGES)


def _not_bool(v: Any) -> Any:
    # YAML reads `yes`/`on` as True, which lax float parsing would turn into 1.0 W.
    if isinstance(v, bool):
        raise ValueError("expected a number, got a boolean")
    return v


# Lax, not strict: PyYAML reads `2e-7` (no dot) as a string, and that must still mean 2e-7.
Figure = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, allow_inf_nan=False)]

_PROFILE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _require_source(model: Strict, figures: tuple[str, ...]) -> None:
    nonzero = [f"{f}={getattr(model, f)!r}" for f in figures if getattr(model, f) != 0]
    if nonzero and not model.source.strip():  # type: ignore[attr-defined]
        raise ValueError(
            f"figure(s) {', '.join(nonzero)} need a non-empty 'source' (datasheet, paper or 'A: assumption')"
        )


class StagePower(Strict):
    """What one node stage costs. Energy = active_w*active_s + (per_invocation_j + wake_j)*n + per_byte_j*bytes."""

    active_w: Figure = 0.0
    per_invocation_j: Figure = 0.0
    per_byte_j: Figure = 0.0
    wake_j: Figure = Field(default=0.0, description="energy per wake/start-up, e.g. ADC power-up or a radio connect")
    startup_s: Figure = Field(default=0.0, description="start-up latency; informs pre-roll, not priced")
    source: str = ""

    @model_validator(mode="after")
    def _sourced(self) -> StagePower:
        _require_source(self, ("active_w", "per_invocation_j", "per_byte_j", "wake_j", "startup_s"))
        return self

    def joules(self, *, invocations: int, active_seconds: float, nbytes: int) -> float:
        return (
            self.active_w * active_seconds
            + (self.per_invocation_j + self.wake_j) * invocations
            + self.per_byte_j * nbytes
        )


class HostPower(Strict):
    """What the board draws regardless of the cascade. On a Raspberry Pi this dominates everything."""

    idle_w: Figure = 0.0
    busy_core_w: Figure = Field(default=0.0, description="W one busy CPU core adds over idle (prices CPU work such "
                                                          "as on-node training); 0 = not given")
    source: str = ""

    @model_validator(mode="after")
    def _sourced(self) -> HostPower:
        _require_source(self, ("idle_w", "busy_core_w"))
        return self


class CloudPower(Strict):
    """Server energy per audio second processed, before data-centre overhead (PUE)."""

    j_per_audio_s: Figure = 0.0
    pue: Annotated[float, BeforeValidator(_not_bool), Field(ge=1.0, allow_inf_nan=False)] = 1.0
    source: str = ""

    @model_validator(mode="after")
    def _sourced(self) -> CloudPower:
        figures = ("j_per_audio_s",) + (("pue",) if self.pue != 1.0 else ())
        _require_source(self, figures)
        return self


class Carbon(Strict):
    grid_g_co2e_per_kwh: Figure = DEFAULT_GRID_G_CO2E_PER_KWH
    source: str = DEFAULT_CARBON_SOURCE

    @model_validator(mode="after")
    def _sourced(self) -> Carbon:
        _require_source(self, ("grid_g_co2e_per_kwh",))
        return self


class Storage(Strict):
    """What the node can hold: the largest KWS model an over-the-air release may bring (gate/ota.py)."""

    model_max_bytes: int | None = Field(default=None, gt=0, description="null = no limit of the profile's own")
    source: str = ""

    @model_validator(mode="after")
    def _sourced(self) -> Storage:
        if self.model_max_bytes is not None and not self.source.strip():
            raise ValueError("model_max_bytes needs a non-empty 'source' (datasheet or 'A: assumption')")
        return self


class DeviceProfile(Strict):
    """A device's price list. Extra node stages may be added as lower-case identifiers."""

    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    host: HostPower
    stages: dict[str, StagePower]
    cloud: CloudPower
    carbon: Carbon = Field(default_factory=Carbon)
    storage: Storage = Field(default_factory=Storage)

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, stages: dict[str, StagePower]) -> dict[str, StagePower]:
        for name in stages:
            if name in (CLOUD, HOST):
                raise ValueError(f"'{name}' has its own section; remove it from 'stages'")
            validate_stage(name)
        missing = [s for s in NODE_STAGES if s not in stages]
        if missing:
            raise ValueError(f"missing node stage(s) {missing}: price each explicitly (all-zero is allowed)")
        return stages


# ----------------------------------------------------------------------------- loading


def _profiles_dir() -> Any:
    # importlib.resources, not __file__: works from a wheel or a zip as well as a checkout.
    return resources.files("gate").joinpath("profiles")


def list_profiles() -> list[str]:
    """Names of the profiles shipped with gate."""
    return sorted(p.name[: -len(".yaml")] for p in _profiles_dir().iterdir() if p.name.endswith(".yaml"))


def _looks_like_path(ref: str | Path) -> bool:
    if isinstance(ref, Path):
        return True
    return "/" in ref or "\\" in ref or ref.endswith((".yaml", ".yml"))


def _format_errors(exc: ValidationError, limit: int = 3) -> str:
    """The first ``limit`` problems, one clause each, and how many more there are."""
    parts = []
    errors = exc.errors()
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
        msg = err["msg"].removeprefix("Value error, ")
        got = repr(err["input"])
        got = got if len(got) <= 40 else got[:37] + "..."
        parts.append(f"{loc}: {msg} (got {got})" if err["type"] != "missing" else f"{loc}: {msg}")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


# Top-level sections of a thresholds file: a file with these and no 'stages' was given as a profile by mistake.
_THRESHOLDS_SECTIONS = frozenset({"version", "audio", "analog", "kws", "segmenter", "mqtt", "node", "energy"})


def parse_profile(data: Any, *, origin: str = "<profile>") -> DeviceProfile:
    """Validate an already-loaded mapping; errors name ``origin`` and the field path."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{origin}: a profile must be a YAML mapping, got {type(data).__name__}")
    if "stages" not in data and _THRESHOLDS_SECTIONS & set(data):
        raise ProfileError(f"{origin}: this is a thresholds file, not a device profile (give it with -c/--config; "
                           f"profiles: {', '.join(list_profiles())} or a profile YAML)")
    try:
        return DeviceProfile.model_validate(dict(data))
    except ValidationError as exc:
        raise ProfileError(f"{origin}: {_format_errors(exc)}") from None


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A shipped profile by name (``pi4``) or a user's YAML file by path."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"{origin}: cannot read profile ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ProfileError(f"{origin}: not a profile (not UTF-8 text)") from None
    else:
        name = str(name_or_path)
        if not _PROFILE_NAME_RE.fullmatch(name):
            raise ProfileError(f"{name!r} is not a profile name or a .yaml path")
        res = _profiles_dir().joinpath(f"{name}.yaml")
        origin = f"gate/profiles/{name}.yaml"
        if not res.is_file():
            raise ProfileError(f"{origin}: no such profile; shipped profiles: {', '.join(list_profiles())}")
        text = res.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{origin}{yaml_error_text(exc)}") from None
    return parse_profile(data, origin=origin)


# ----------------------------------------------------------------------------- pricing


def joules_to_co2e_g(joules: float, grid_g_co2e_per_kwh: float = DEFAULT_GRID_G_CO2E_PER_KWH) -> float:
    return joules / J_PER_KWH * grid_g_co2e_per_kwh


@dataclass(frozen=True, slots=True)
class EnergyBreakdown:
    """Priced counts. ``stage_j`` includes the cloud (already times PUE); ``host_j`` is kept apart
    because on a Pi it dwarfs every stage and must be seen, not folded in.

    ``total_bytes`` are the bytes that left the node over the radio. Encoder output is the same
    payload before framing, so summing bytes across stages would count it twice.
    """

    profile: str
    audio_seconds: float
    stage_j: Mapping[str, float]
    stage_bytes: Mapping[str, int]
    host_j: float
    total_bytes: int
    grid_g_co2e_per_kwh: float
    unpriced: tuple[str, ...] = ()
    total_j: float = field(init=False)
    co2e_g: float = field(init=False)

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_j", MappingProxyType(dict(self.stage_j)))
        object.__setattr__(self, "stage_bytes", MappingProxyType(dict(self.stage_bytes)))
        total = self.host_j + math.fsum(self.stage_j.values())
        object.__setattr__(self, "total_j", total)
        object.__setattr__(self, "co2e_g", joules_to_co2e_g(total, self.grid_g_co2e_per_kwh))

    @property
    def cloud_j(self) -> float:
        return self.stage_j.get(CLOUD, 0.0)

    @property
    def node_j(self) -> float:
        return self.total_j - self.cloud_j

    @property
    def mean_node_w(self) -> float:
        return self.node_j / self.audio_seconds if self.audio_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "audio_seconds": self.audio_seconds,
            "host_j": self.host_j,
            "stage_j": dict(self.stage_j),
            "stage_bytes": dict(self.stage_bytes),
            "node_j": self.node_j,
            "cloud_j": self.cloud_j,
            "total_j": self.total_j,
            "total_bytes": self.total_bytes,
            "mean_node_w": self.mean_node_w,
            "co2e_g": self.co2e_g,
            "grid_g_co2e_per_kwh": self.grid_g_co2e_per_kwh,
            "unpriced": list(self.unpriced),
        }


class EnergyModel:
    """Prices ledger snapshots for one device profile. Stateless after construction."""

    def __init__(self, *, profile: DeviceProfile, grid_g_co2e_per_kwh: float | None = None) -> None:
        if grid_g_co2e_per_kwh is None:
            grid_g_co2e_per_kwh = profile.carbon.grid_g_co2e_per_kwh
        if not (math.isfinite(grid_g_co2e_per_kwh) and grid_g_co2e_per_kwh >= 0):
            raise ValueError(f"grid_g_co2e_per_kwh must be finite and >= 0, got {grid_g_co2e_per_kwh}")
        self.profile = profile
        self.grid_g_co2e_per_kwh = float(grid_g_co2e_per_kwh)

    @classmethod
    def from_profile(cls, name_or_path: str | Path, grid: float | None = None) -> EnergyModel:
        return cls(profile=load_profile(name_or_path), grid_g_co2e_per_kwh=grid)

    def price(self, snapshot: LedgerSnapshot) -> EnergyBreakdown:
        p = self.profile
        names = ordered_stages(set(STAGES) | set(p.stages) | set(snapshot.stages))
        stage_j: dict[str, float] = {}
        unpriced: list[str] = []
        for name in names:
            c = snapshot[name]
            if name == CLOUD:
                # The cloud's active_seconds are audio seconds it processed.
                stage_j[name] = p.cloud.j_per_audio_s * c.active_seconds * p.cloud.pue
            elif name in p.stages:
                stage_j[name] = p.stages[name].joules(
                    invocations=c.invocations, active_seconds=c.active_seconds, nbytes=c.bytes
                )
            else:
                # A stage added after this profile was written: shown as unpriced, never dropped quietly.
                stage_j[name] = 0.0
                if not c.is_zero:
                    unpriced.append(name)
        return EnergyBreakdown(
            profile=p.name,
            audio_seconds=snapshot.audio_seconds,
            stage_j=stage_j,
            stage_bytes={n: snapshot[n].bytes for n in names},
            host_j=p.host.idle_w * snapshot.audio_seconds,
            total_bytes=snapshot[RADIO].bytes,
            grid_g_co2e_per_kwh=self.grid_g_co2e_per_kwh,
            unpriced=tuple(unpriced),
        )


def savings(cascade: EnergyBreakdown, baseline: EnergyBreakdown) -> dict[str, float | None]:
    """Percent saved by the cascade relative to a baseline; None where the baseline is zero."""

    def pct(c: float, b: float) -> float | None:
        if b == 0:
            return 0.0 if c == 0 else None
        return 100.0 * (1.0 - c / b)

    return {
        "joules_pct": pct(cascade.total_j, baseline.total_j),
        "bytes_pct": pct(cascade.total_bytes, baseline.total_bytes),
    }
