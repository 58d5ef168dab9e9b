"""The base of every validated section of a study or search space file."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _admits_bool(annotation: Any) -> bool:
    return annotation is bool or bool in get_args(annotation)


class Section(BaseModel):
    """A section of a file: unknown keys are refused, and a boolean is accepted only where
    the field is one (YAML's ``true`` is never read as the number 1)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_other_types(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if (
            isinstance(value, bool)
            and name is not None
            and not _admits_bool(cls.model_fields[name].annotation)
        ):
            raise ValueError("expected a number or text here, not a boolean")
        return value
