"""Errors with stable codes, so callers and logs can tell failures apart without parsing text."""

from __future__ import annotations


class GateError(Exception):
    """Base error. ``code`` is stable across releases; the message names the file, field or value."""

    code = "gate_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.args[0]} [{self.code}]"


class AudioInputError(GateError):
    """An audio file or stream that cannot be read as audio (corrupt, empty, unsupported, wrong rate)."""

    code = "audio_input"


class ConfigError(GateError):
    """A thresholds file or override that does not validate."""

    code = "config_invalid"


class ProfileError(GateError):
    """An energy device profile that is missing or invalid."""

    code = "profile_invalid"


class UsageError(GateError):
    """A command-line argument, or a file it names, that the command cannot use."""

    code = "usage"
