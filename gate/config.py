"""The thresholds file: one validated settings tree for every stage.

Built once in ``main()`` and passed down; nothing reads it at import. Precedence, lowest first:
the defaults below, the YAML file, then ``GATE_SECTION__FIELD=value`` environment variables
(values parsed as YAML, so ``GATE_ANALOG__CENTRES_HZ='[300, 600]'`` works).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from gate.kws.config import KwsConfig
from gate.segmenter import SegmenterConfig
from gate.transport.config import MqttConfig
from gate_core.cloud_config import CloudConfig
from gate_core.errors import ConfigError
from gate_core.strict import Strict
from sensors.analog.config import AnalogConfig

ENV_PREFIX = "GATE_"
ENV_NESTING = "__"
# GATE_ variables that are not settings (e.g. where the file is), so never taken as overrides.
ENV_RESERVED = frozenset({"GATE_THRESHOLDS", "GATE_LOG_LEVEL"})
SCHEMA_VERSION = 1



class NodeConfig(Strict):
    """The live node: which microphone, how it is read, and how often the node reports."""

    device: int | str | None = Field(
        None, description="Input device: PortAudio index or part of its name (e.g. 'pulse'); null = default input")
    channels: int = Field(1, ge=1, le=32, description="Channels to capture; more than one are averaged to mono")
    samplerate: int | None = Field(
        None, ge=8000, le=192000,
        description="Capture rate, Hz; null = 16000 if the device supports it, else its default rate (resampled)")
    blocksize_ms: float = Field(20.0, ge=2.0, le=500.0, description="PortAudio block, ms of audio per callback")
    queue_s: float = Field(
        2.0, ge=0.1, le=60.0, description="Audio the capture queue holds before blocks are dropped (and counted), s")
    batch_ms: float = Field(
        100.0, ge=0.0, le=1000.0,
        description="Audio gathered before each cascade call, ms: the front end costs about the same per call "
                    "whatever its size, so batching cuts CPU; adds at most this much latency")
    heartbeat_s: float = Field(30.0, ge=1.0, le=3600.0, description="Heartbeat period on the audio clock, s")
    flush_timeout_s: float = Field(
        5.0, ge=0.0, le=300.0, description="On stop, how long to wait for spooled segments to be acknowledged, s")


class AudioConfig(Strict):
    """The digital audio path the gate wakes."""

    sample_rate: Literal[16000] = Field(16000, description="Sample rate of the ADC path and of every model, Hz")
    frame_ms: float = Field(10.0, ge=1.0, le=100.0, description="Frame size the node works in, ms")


class EnergyConfig(Strict):
    """How counts are priced."""

    profile: str = Field(
        "pi4", description="Device profile: a shipped name (pi4, pizero2w, mcu-analog) or a path to a profile YAML")
    grid_g_co2e_per_kwh: float = Field(
        475.0, ge=0.0, le=2000.0, description="Grid carbon intensity, gCO2e/kWh (475 = world average, IEA 2019)")


class GateSettings(Strict):
    """Every threshold and knob of gate."""

    version: Literal[1] = Field(SCHEMA_VERSION, description="Schema version of this file")
    audio: AudioConfig = Field(default_factory=AudioConfig)
    analog: AnalogConfig = Field(default_factory=AnalogConfig)
    kws: KwsConfig = Field(default_factory=KwsConfig)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a settings source, already located."""

    where: str  # "file:line:col" or "env GATE_X"
    path: str  # dotted field path
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}" if self.path else f"{self.where}: {self.message}"


class SettingsError(ConfigError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def __str__(self) -> str:
        return self.args[0]


def load_settings(path: str | os.PathLike | None = None, *,
                  env: Mapping[str, str] | None = None, section: str | None = None) -> GateSettings:
    """Defaults <- YAML file (optional) <- GATE_ environment overrides, validated as one tree.

    ``section``: the file may also hold that one section's fields alone (``gate-cloud serve --config``
    takes a thresholds file or its ``cloud:`` section); errors still name the file, line and field."""
    data: dict[str, Any] = {}
    marks: dict[tuple, str] = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        data, marks = _read_yaml(Path(path))
        if section is not None and data and not (set(data) & (set(GateSettings.model_fields) | {"version"})):
            data = {section: data}
            marks = {(section, *loc): mark for loc, mark in marks.items()}
    env_sources = _apply_env(data, os.environ if env is None else env)
    try:
        return GateSettings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_problems(exc, data, where, marks, env_sources)) from None


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError([Problem(str(path), "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError([Problem(str(path), "", f"cannot read ({exc})")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SettingsError([Problem(loc, "", f"YAML syntax error: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise SettingsError([Problem(str(path), "", f"YAML error: {exc}")]) from None
    except (RecursionError, ValueError) as exc:
        # Hostile input: nesting deeper than the parser's stack, or an integer past Python's digit limit.
        raise SettingsError([Problem(str(path), "", f"not a usable thresholds file ({_short(exc)})")]) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise SettingsError([Problem(f"{path}:1:1", "", f"expected a mapping of sections, got {type(data).__name__}")])
    marks: dict[tuple, str] = {}
    _collect_marks(node, (), path, marks, set())
    return data, marks


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _collect_marks(node: yaml.Node | None, loc: tuple, path: Path, out: dict[tuple, str], seen: set[int]) -> None:
    """Map each key path to 'file:line:col' of its value, so errors point into the file.

    An alias is the same node object as its anchor: each node is walked once, so a "billion laughs"
    file costs its size, not its expansion. Paths under a repeated alias fall back to the nearest
    located parent.
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*loc, key_node.value)
            m = key_node.start_mark
            out[key] = f"{path}:{m.line + 1}:{m.column + 1}"
            _collect_marks(value_node, key, path, out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            m = item.start_mark
            out[(*loc, i)] = f"{path}:{m.line + 1}:{m.column + 1}"
            _collect_marks(item, (*loc, i), path, out, seen)


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple, str]:
    """Merge GATE_A__B=value into ``data``; returns which key paths came from which variable."""
    sources: dict[tuple, str] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX):].split(ENV_NESTING))
        if not all(parts):
            raise SettingsError([Problem(f"env {name}", "", "malformed override: use GATE_SECTION__FIELD")])
        try:
            value = yaml.safe_load(env[name]) if env[name].strip() else ""
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            raise SettingsError([Problem(f"env {name}", ".".join(parts),
                                         f"value is not valid YAML ({_short(exc)})")]) from None
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = value
        sources[parts] = f"env {name}"
    return sources


def _problems(exc: ValidationError, data: dict, where: str, marks: dict[tuple, str],
              env_sources: dict[tuple, str]) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc)
        src = _source_of(loc, marks, env_sources) or where
        out.append(Problem(src, path, _describe(err, loc)))
    return out


def _source_of(loc: tuple, marks: dict[tuple, str], env_sources: dict[tuple, str]) -> str | None:
    # Model-level validators report the section; the nearest located ancestor is the best pointer.
    for key, var in env_sources.items():
        if key[:len(loc)] == loc:
            return var
    for n in range(len(loc), 0, -1):
        key = loc[:n]
        if key in env_sources:
            return env_sources[key]
        if key in marks:
            return marks[key]
    return None


def _describe(err: dict, loc: tuple) -> str:
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"unknown key '{loc[-1]}'{did_you_mean} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return "required field is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if isinstance(value, (dict, list)):
        return f"{msg}"
    return f"got {value!r}: {msg}"


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = GateSettings
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


# ---------------------------------------------------------------------------------------------
# The commented default file


def default_yaml() -> str:
    """The complete default thresholds file, every field commented from its schema."""
    header = [
        "# gate thresholds file: every threshold and knob of every stage.",
        "# Generated by `gate-node config default`; check an edited copy with `gate-node config check FILE`.",
        "# Any field can be overridden from the environment: GATE_<SECTION>__<FIELD>=value",
        "# (e.g. GATE_ANALOG__MARGIN_DB=8, GATE_MQTT__BROKER=mqtt://10.0.0.2:1883).",
        "",
    ]
    return "\n".join(header + _render(GateSettings(), 0)) + "\n"


def _render(model: Strict, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, Strict):
            doc = (type(value).__doc__ or "").strip().splitlines()[0]
            if indent == 0:
                lines.append("")
            lines.append(f"{pad}# {doc}")
            lines.append(f"{pad}{name}:")
            lines.extend(_render(value, indent + 1))
            continue
        lines.append(f"{pad}# {field.description or name}{_constraint_text(field)}")
        lines.append(f"{pad}{name}: {_scalar(value)}")
    return lines


def _constraint_text(field: Any) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(meta, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    choices = getattr(field.annotation, "__args__", None)
    if getattr(field.annotation, "__origin__", None) is Literal and choices:
        parts.append("one of " + ", ".join(str(c) for c in choices))
    return f" [{'; '.join(parts)}]" if parts else ""


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()
