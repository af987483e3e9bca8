"""Read a YAML file into a Strict model with errors a person can act on: the file, the line and
column of a syntax error, or the field path and bad value of a schema error."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ValidationError

from sensors.synth.errors import RecipeError

M = TypeVar("M", bound=BaseModel)


def _ordered(r: tuple[float, float]) -> tuple[float, float]:
    if r[0] > r[1]:
        raise ValueError(f"lower bound {r[0]} is above upper bound {r[1]}")
    return r


# A [low, high] pair, checked as a field so an error names its path (events.0.snr_db).
Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
IntRange = Annotated[tuple[int, int], AfterValidator(_ordered)]


def load_yaml(path: Path) -> object:
    try:
        text = Path(path).read_text()
    except FileNotFoundError as exc:
        raise RecipeError(f"{path}: no such recipe file", code="recipe_missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read ({exc})", code="recipe_unreadable") from exc
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise RecipeError(f"{path}: YAML syntax error at {where}: {exc.problem or exc}", code="recipe_syntax") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: YAML error: {exc}", code="recipe_syntax") from exc


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parts.append(f"field {loc}: unknown field")
        elif e["type"] == "missing":
            parts.append(f"field {loc}: required field missing")
        else:
            parts.append(f"field {loc}: {msg} (got {e.get('input')!r})")
    return "; ".join(parts)


def load_model(path: Path, model: type[M], *, overrides: dict[str, object] | None = None) -> M:
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of fields, got {type(data).__name__}")
    data = {**data, **(overrides or {})}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{path}: {describe_validation(exc)}") from exc
