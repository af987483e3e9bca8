"""The base of every settings and schema model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors, so a typo in a thresholds file or recipe is never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
