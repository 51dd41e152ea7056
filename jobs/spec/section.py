"""The base of every recipe section (unknown keys are errors, resolved values never change) and the error a rule
across fields raises. Imported by jobs/spec/schema.py and jobs/spec/resources.py."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class RuleError(ValueError):
    """A rule across fields. `keys` (dotted, relative to the section that raises it) name the values it is about,
    so the loader can point at the file:line, override or flag that set them."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors and resolved values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no .inf learning rate or timeout
