"""The replay report's schema: typed, frozen models for every block of `gate-node replay --report`.

:class:`ReplayReport` is what a replay returns and what a saved report is read back into; its JSON
(:meth:`ReportModel.to_json`) is the file format. A block that a replay writes only sometimes
(``detection`` without labels, ``cloud.measured`` without a worker, an input's ``second_stage``, a
baseline's ``params``) is a field with a default: it is written when it was given, as a value or as
null, and left out when it was not, so a report read back is written again key for key.

Where a producer may give an int or a float for the same figure (a sum over no segments is ``0``), the
field is ``int | float`` and keeps what it was given, so a report's numbers stay exactly as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
    model_serializer,
)

from gate_core.ledger import LedgerSnapshot
from gate_core.strict import Strict
from gate_core.wire import Verdict

REPORT_SCHEMA = "gate.replay/2"

Number = int | float


def _snapshot(value: Any) -> LedgerSnapshot:
    if isinstance(value, LedgerSnapshot):
        return value
    try:
        return LedgerSnapshot.from_dict(value)
    except TypeError as exc:  # pydantic reports ValueError and AssertionError only
        raise ValueError(str(exc)) from None


# A ledger snapshot, written as LedgerSnapshot.to_dict() (version, audio_seconds, stages).
Counts = Annotated[LedgerSnapshot, PlainValidator(_snapshot), PlainSerializer(lambda s: s.to_dict())]


class ReportModel(Strict):
    """Frozen, unknown keys refused; a field with a default is written only when it was given."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    @model_serializer(mode="wrap")
    def _written_as_given(self, handler: Any) -> Any:
        data = handler(self)
        for name, info in type(self).model_fields.items():
            if not info.is_required() and name not in self.model_fields_set:
                data.pop(info.serialization_alias or info.alias or name, None)
        return data

    def to_json(self) -> dict[str, Any]:
        """The JSON form (plain dicts, lists, numbers and strings)."""
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- priced energy

class StageRow(ReportModel):
    """One stage of one pipeline: its counts and their price."""

    invocations: int
    active_seconds: float
    duty_cycle: float
    bytes: int
    joules: float


class Totals(ReportModel):
    joules: float
    bytes: int
    co2e_g: float
    node_joules: float
    cloud_joules: float
    host_joules: float
    mean_node_w: float
    unpriced_stages: list[str]


class Savings(ReportModel):
    """Percent the cascade saves against one baseline; None where the baseline spends nothing and the cascade does."""

    joules_pct: float | None
    bytes_pct: float | None
    joules_pct_excluding_host: float | None
    node_joules_pct: float | None
    host_share_of_cascade_pct: float


class AlwaysOnKwsParams(ReportModel):
    """What the always-on-KWS baseline was built from: the KWS period and the cascade's own segments."""

    kws_hop_s: float
    link_bytes: int
    n_segments: int
    segments_bytes: int
    segment_audio_s: Number


class Baseline(ReportModel):
    """A pipeline the cascade is compared with: its counts (kept for re-pricing) and their price."""

    counts: Counts
    params: AlwaysOnKwsParams | None = None
    joules: float
    bytes: int
    co2e_g: float
    stages: dict[str, StageRow]
    totals: Totals


class ProfileSummary(ReportModel):
    name: str
    description: str
    host_idle_w: float


class SimulatedWith(ReportModel):
    """The profile the replay ran with: its ADC start-up time shaped what the ADC delivered."""

    profile: str
    adc_startup_s: float


class CloudSensitivity(ReportModel):
    """Every pipeline's cloud priced at what the replay's own worker measured per audio second."""

    j_per_audio_s: Number
    totals_j: dict[str, float]
    savings_joules_pct: dict[str, float | None]


# ----------------------------------------------------------------------------- inputs and detections

class RejectedDetection(ReportModel):
    detect_s: float
    kws_score: float
    second_stage_score: float


class SecondStageRecord(ReportModel):
    """What the on-node second stage did in one input: candidates checked, those kept off the radio."""

    checks: int
    rejected: int
    rejected_detections: list[RejectedDetection]


class InputEntry(ReportModel):
    """One replayed file: its audio, the gate's openings and how many segments it cut."""

    path: str
    audio_seconds: float
    gate_open_intervals: list[tuple[float, float]]
    n_opens: int
    duty_cycle: float
    n_detections: int
    suppressed_detections: int
    second_stage: SecondStageRecord | None = None


class Detection(ReportModel):
    """One published segment: where it was cut, the KWS score, its bytes and the cloud's verdict if any."""

    path: str
    segment_id: str
    seq: int
    start_s: float
    end_s: float
    detect_s: float
    score: float
    end_reason: str
    preroll_clipped: bool
    audio_bytes: int
    payload_bytes: int
    verdict: Verdict | None

    @property
    def accepted(self) -> bool:
        """The cloud accepted it (False without a verdict)."""
        return self.verdict is not None and self.verdict.accepted


class GateOpenInterval(ReportModel):
    path: str
    start_s: float
    end_s: float


class FailedInput(ReportModel):
    """A file that could not be read; the rest of the replay still counts."""

    path: str
    error: str
    code: str


# ----------------------------------------------------------------------------- what ran

class KwsInfo(ReportModel):
    available: bool
    reason: str | None


class RadioInfo(ReportModel):
    """``broker``: the transport published and counted its bytes; ``estimated``: no broker, bytes computed."""

    mode: Literal["broker", "estimated"]
    broker: str | None
    delivered: int | None = None
    pending: int | None = None


class MeasuredCloud(ReportModel):
    """The cloud worker's own meter (see gate.cloud_leg.measured_energy)."""

    cpu_s: Number | None
    joules: Number | None
    model_cpu_s: Number | None
    audio_s: Number | None
    segments: int | None
    j_per_audio_s: Number | None
    received: int | None
    accepted: int | None
    rejected: int | None
    malformed: int | None


class CloudInfo(ReportModel):
    worker: str | None
    available: bool
    reason: str | None
    measured: MeasuredCloud | None = None
    verdicts: int


class DetectorInfo(ReportModel):
    """The KWS detector the posteriors were recorded under (what the DET sweep and `tune` re-run)."""

    threshold: float
    smoothing_s: float
    min_consecutive: int
    refractory_s: float
    period_s: float
    hold_s: float = 0.0


class TraceRun(ReportModel):
    """KWS posteriors of one gate opening, one every ``detector.period_s`` from ``t0_s``."""

    path: str
    t0_s: float
    p: list[float]


class KwsTraces(ReportModel):
    detector: DetectorInfo | None
    gated: list[TraceRun]
    always_on: list[TraceRun] | None


class Timeline(ReportModel):
    level_hop_s: float
    level_dbfs: dict[str, list[float]]


# ----------------------------------------------------------------------------- detection scored against labels

class Latency(ReportModel):
    mean: float | None
    median: float | None
    p90: float | None
    max: float | None


class MetricScore(ReportModel):
    """gate_core.metrics.score over the labelled streams."""

    keywords: int
    true_accepts: int
    misses: int
    miss_rate: float | None
    false_accepts: int
    duplicates: int
    non_wake_hours: Number
    fa_per_hour: float | None
    latency_s: Latency


class DetRow(ReportModel):
    threshold: float
    miss_rate: float | None
    fa_per_hour: float | None
    true_accepts: int
    false_accepts: int


class Windows(ReportModel):
    early_s: float
    late_s: float


class CommandResults(ReportModel):
    detected: int
    correct: int
    unrecognised: int
    wrong: int


class DetectionMetrics(ReportModel):
    windows: Windows
    tiny: MetricScore
    tiny_cloud: MetricScore | None
    always_on_kws: MetricScore | None
    det_curve: dict[str, list[DetRow]]
    commands: CommandResults | None = None


class LabelSpan(ReportModel):
    start_s: float
    end_s: float
    label: str


class ScenarioSummary(ReportModel):
    """The tiny model's score in the form of gate.replay/1 reports."""

    keywords: int
    hits: int
    misses: int
    false_accepts: int
    recall: float
    late_s: float


# ----------------------------------------------------------------------------- the report

class ReplayReport(ReportModel):
    """`gate-node replay`'s report: counts, their price under one profile, baselines, detections."""

    schema_: Literal["gate.replay/2"] = Field(alias="schema")
    generated_by: str
    stages_run: list[str]
    audio_seconds: float
    counts: Counts
    baselines: dict[str, Baseline]
    simulated_with: SimulatedWith
    inputs: list[InputEntry]
    detections: list[Detection]
    gate_open_intervals: list[GateOpenInterval]
    failed_inputs: list[FailedInput]
    # The settings as the replay dumped them: a thresholds file's own schema, which evolves apart from the report's.
    settings: dict[str, Any]
    profile: ProfileSummary
    grid_g_co2e_per_kwh: float
    stages: dict[str, StageRow]
    totals: Totals
    savings_vs: dict[str, Savings]
    savings: Savings
    notes: list[str]
    cloud_sensitivity: CloudSensitivity | None
    kws: KwsInfo
    radio: RadioInfo
    cloud: CloudInfo
    kws_traces: KwsTraces
    timeline: Timeline
    detection: DetectionMetrics | None = None
    labels: dict[str, list[LabelSpan]] | None = None
    scenario: ScenarioSummary | None = None

    @field_validator("baselines")
    @classmethod
    def _has_always_stream(cls, v: dict[str, Baseline]) -> dict[str, Baseline]:
        if "always_stream" not in v:
            raise ValueError("no always_stream baseline (the savings are reported against it)")
        return v

    def input(self, path: str) -> InputEntry:
        """The entry of the input at ``path``."""
        return next(i for i in self.inputs if i.path == path)


def problem(exc: ValidationError) -> str:
    """The first problem of ``exc`` as ``field: message (got value)``, and how many more there are. A value
    that is a whole block (a missing field's parent, a ledger snapshot) is not repeated: the message names it."""
    errors = exc.errors()
    first = errors[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".") or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    got = "" if isinstance(value, dict | list) else f" (got {_short(repr(value))})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{got}{more}"


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def parse_report(data: Any, path: Path | str) -> ReplayReport:
    """A report's JSON as a ReplayReport; a ValueError naming ``path``, the field and its value otherwise."""
    if not isinstance(data, dict) or "counts" not in data or "baselines" not in data:
        raise ValueError(f"{path}: not a gate replay report (no counts and baselines)")
    try:
        return ReplayReport.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: {problem(exc)}") from None
