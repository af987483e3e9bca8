"""Errors of the data tools. They subclass GateError so the CLI reports every failure the same way."""

from __future__ import annotations

from gate_core.errors import GateError


class DataError(GateError):
    """Bad input to a data tool: an unknown voice, an empty phrase, an unwritable output."""

    code = "data_invalid"


class TTSError(DataError):
    """A speech engine that is missing, unknown, or failed on a text."""

    code = "tts_failed"


class RecipeError(DataError):
    """A scenario recipe that cannot be read or does not validate."""

    code = "recipe_invalid"
