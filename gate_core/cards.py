"""Model cards: the runtime contract beside each model, and the evaluation record apart from it.

``<model>.json`` is the runtime card, all the node or the cloud reads to run the model: which model,
the wake phrase, the features and their settings, the input length, the threshold or the detector
settings, the output classes (:class:`RuntimeCard`; :class:`CrossbarCard` for the analog crossbar
network). It is small, strictly typed and forbids unknown keys, and it is the card an over-the-air
release carries. ``<model>.eval.json`` is the evaluation record (:class:`EvaluationRecord`): size and
compute, training data and cost, accuracies, training history, per-scene figures and curves. Its top
level is typed; what lies below is kept as written.

A card written in one piece (the form a training run writes before :func:`write_cards` splits it, or
a federated candidate with its provenance) is read as its runtime part: keys of the evaluation record
are set aside, any other key is an error. Errors are one line naming the file, the field and the value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from gate_core.errors import GateError
from gate_core.strict import Strict

EVAL_SUFFIX = ".eval.json"

Probability = Annotated[float, Field(gt=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Count = Annotated[int, Field(gt=0)]
Name = Annotated[str, Field(min_length=1)]


class CardError(GateError):
    code = "model_card"


class _Typed(Strict):
    """No coercion: ``"100"`` is not a frame count, ``1`` is not a boolean."""

    model_config = ConfigDict(strict=True)


# ------------------------------------------------------------------------------------ features


class LogMelFeatures(_Typed):
    kind: Literal["logmel"]
    sample_rate: Count
    win_ms: Positive
    hop_ms: Positive
    n_fft: Count
    n_mels: Count
    f_min_hz: Annotated[float, Field(ge=0.0)]
    f_max_hz: Positive

    @model_validator(mode="after")
    def _band(self):
        if not self.f_min_hz < self.f_max_hz <= self.sample_rate / 2:
            raise ValueError(f"mel band {self.f_min_hz}-{self.f_max_hz} Hz does not fit below Nyquist "
                             f"({self.sample_rate / 2:g} Hz)")
        return self


class PcenFeatures(LogMelFeatures):
    kind: Literal["pcen"]  # type: ignore[assignment]
    pcen: dict[str, float]


class AnalogEnvelopeFeatures(_Typed):
    kind: Literal["analog_envelopes"]
    sample_rate: Count
    hop_ms: Positive
    n_channels: Count
    scale: Name
    analog: Name


class SpeechEmbeddingFeatures(_Typed):
    kind: Literal["speech_embedding"]
    sample_rate: Count
    mel_window: Count
    mel_hop: Count
    n_mels: Count
    embedding_window_frames: Count
    embedding_hop_frames: Count
    dim: Count
    package: Name
    licence: dict[str, str]


FEATURE_KINDS = ("logmel", "pcen", "analog_envelopes", "speech_embedding")
Features = Annotated[LogMelFeatures | PcenFeatures | AnalogEnvelopeFeatures | SpeechEmbeddingFeatures,
                     Field(discriminator="kind")]


# ------------------------------------------------------------------------------------- runtime


class DetectorSettings(_Typed):
    threshold: Probability


class RuntimeCard(_Typed):
    """What a TFLite model needs to run: the node's KWS, its second stage, the cloud's verifiers and commands."""

    model: Name
    phrase: Name | None = None
    feature_kind: Literal["logmel", "pcen", "analog_envelopes", "speech_embedding"]
    features: Features
    window_frames: Count | None = Field(None, description="Input length in feature frames")
    window_embeddings: Count | None = Field(None, description="Input length in embedding rows")
    context_s: Positive | None = Field(None, description="Audio one input window spans, s")
    classes: list[Name] | None = Field(None, min_length=2, description="Output classes, in output order")
    threshold: Probability | None = Field(None, description="Accept at or above this score")
    detector: DetectorSettings | None = Field(None, description="The node's detector, tuned for the model")
    output: Literal["probability", "logit"] | None = None
    dtype: Literal["float32", "int8"] | None = None
    version: Name | None = None
    licence: dict[str, str] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.features.kind != self.feature_kind:
            raise ValueError(f"feature_kind {self.feature_kind!r} but features.kind {self.features.kind!r}")
        if (self.window_frames is None) == (self.window_embeddings is None):
            raise ValueError("give the input length as window_frames or window_embeddings (one of them)")
        return self


class CrossbarInputs(_Typed):
    channels: Count
    taps_ticks: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    smooth_ms: Positive
    full_scale_db: Positive


class CrossbarCard(_Typed):
    """The analog crossbar network (an .npz the analog front end loads)."""

    model: Name
    format: Literal["gate.crossbar/1"]
    task: Name
    inputs: CrossbarInputs
    layers: Annotated[list[Annotated[list[Count], Field(min_length=2, max_length=2)]], Field(min_length=1)]
    threshold: Annotated[float, Field(allow_inf_nan=False, description="Comparator level on the output (a logit)")]


# ---------------------------------------------------------------------------------- evaluation


class EvaluationRecord(Strict):
    """How a model was trained and how it measured. Each top-level key is declared; below them, as written."""

    model: Name
    params: int | None = None
    params_head: int | None = None
    macs: int | None = None
    macs_head: int | None = None
    macs_per_tick: int | None = None
    size_bytes: int | None = None
    size_bytes_int8: int | None = None
    size_bytes_float: int | None = None
    seed_per_model: bool | None = None
    mined_negatives: int | None = None
    accuracy_val_float: float | None = None
    accuracy_val_int8: float | None = None
    accuracy_test_float: float | None = None
    accuracy_test_int8: float | None = None
    balanced_accuracy_test_float: float | None = None
    balanced_accuracy_test_int8: float | None = None
    int8_float_max_abs_diff_test: float | None = None
    stream_windows: int | None = None
    stream_positives: int | None = None
    scene_windows: int | None = None
    clip_s: float | None = None
    start_s: list[float] | None = None
    embed_cpu_s: float | None = None
    train_cpu_s: float | None = None
    history: dict[str, float] | None = None
    spec: dict[str, Any] | None = None
    pruned: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    measured: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    federated: dict[str, Any] | None = None
    shipped_as: str | None = None
    shipped_path: str | None = None
    chosen_from: list[str] | None = None


# ------------------------------------------------------------------------------------ checking


def runtime_schema(card: dict) -> type[RuntimeCard] | type[CrossbarCard]:
    return CrossbarCard if "format" in card else RuntimeCard


def split(card: dict) -> tuple[dict, dict]:
    """(runtime part, evaluation part) of a card in one piece, each in the card's key order. ``model``
    goes to both; a key neither schema declares stays in the runtime part, whose check refuses it."""
    record_keys = set(EvaluationRecord.model_fields) - set(runtime_schema(card).model_fields)
    runtime = {k: v for k, v in card.items() if k not in record_keys}
    record = {k: v for k, v in card.items() if k in record_keys or k == "model"}
    return runtime, (record if len(record) > 1 else {})


def _one_line(where: object, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    err = errors[0]
    path, got = err["loc"], err["input"]
    # A discriminated union puts the tag in the path (features.logmel.n_mels): the field is features.n_mels.
    loc = [str(p) for i, p in enumerate(path) if not (i == 1 and path[0] == "features" and p in FEATURE_KINDS)]
    if err["type"] == "union_tag_invalid":
        loc, got = [*loc, "kind"], err["ctx"]["tag"]
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across fields: its message names them
        text = f"{where}: {msg}"
    elif err["type"] == "missing":
        text = f"{where}: {'.'.join(loc)}: {msg}"
    else:
        value = json.dumps(got, default=str)
        text = f"{where}: {'.'.join(loc)} = {value if len(value) <= 60 else value[:57] + '...'}: {msg}"
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def check_runtime(card: Any, where: object) -> dict:
    """The runtime part of ``card`` (a dict as read from JSON), validated; CardError naming ``where``, the
    field and the value otherwise."""
    if not isinstance(card, dict):
        raise CardError(f"{where}: a model card is a JSON object, not {type(card).__name__}")
    runtime, _ = split(card)
    try:
        runtime_schema(card).model_validate(runtime)
    except ValidationError as exc:
        raise CardError(_one_line(where, exc)) from None
    return runtime


def check_evaluation(record: Any, where: object) -> dict:
    if not isinstance(record, dict):
        raise CardError(f"{where}: an evaluation record is a JSON object, not {type(record).__name__}")
    try:
        EvaluationRecord.model_validate(record)
    except ValidationError as exc:
        raise CardError(_one_line(where, exc)) from None
    return record


def card_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def evaluation_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(EVAL_SUFFIX)


def _load(p: Path, what: str) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CardError(f"{p}: not a readable {what} ({exc})") from None


def read_runtime(model_path: str | Path, *, required: str | None = None) -> dict:
    """The runtime card beside a model (same name, .json), validated. A missing card is {} unless
    ``required`` says what the card is needed for, when it is an error naming the file and that reason."""
    p = card_path(model_path)
    if not p.is_file():
        if required:
            raise CardError(f"{p}: model card missing ({required})", code="model_missing")
        return {}
    return check_runtime(_load(p, "model card"), p)


def read_record(model_path: str | Path) -> dict:
    """The evaluation record of a model: ``<model>.eval.json``, with the record's keys of a card written in
    one piece; {} when there is neither."""
    card, ev = card_path(model_path), evaluation_path(model_path)
    inline = _load(card, "model card") if card.is_file() else {}
    record = split(inline)[1] if isinstance(inline, dict) else {}
    if ev.is_file():
        record = {**record, **check_evaluation(_load(ev, "evaluation record"), ev)}
    return check_evaluation(record, card) if record else {}


# ------------------------------------------------------------------------------------- writing


def _dump(p: Path, obj: dict) -> None:
    p.write_text(json.dumps(obj, indent=2) + "\n")


def write_model_card(model_path: str | Path, card: dict) -> tuple[Path, Path | None]:
    """Write ``card`` (one piece) beside the model as its runtime card and its evaluation record, each
    validated first; nothing is written when either does not validate. A stale record is removed when
    the card has none."""
    runtime = check_runtime(card, card_path(model_path))
    record = split(card)[1]
    ev = evaluation_path(model_path)
    if record:
        check_evaluation(record, ev)
    _dump(card_path(model_path), runtime)
    if not record:
        ev.unlink(missing_ok=True)
        return card_path(model_path), None
    _dump(ev, record)
    return card_path(model_path), ev


def write_cards(out: Path, card: dict) -> None:
    """A training run's cards: ``card.json`` (the whole run) and, per model, ``<name>.json`` (runtime) and
    ``<name>.eval.json`` (record), each model's with the phrase and, where the run scored it, its evaluation
    and the detector threshold it was tuned to."""
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    ev = card.get("evaluation", {})
    for name, m in card["models"].items():
        per = {"phrase": card["phrase"], **m}
        if name in ev:
            per["evaluation"] = ev[name]
            per["detector"] = {"threshold": ev[name]["threshold"]}
        write_model_card(out / f"{name}.tflite", per)
