"""Typed configuration: the pydantic base every settings object of ``cvm_rl`` and ``server``
shares, and one way to turn a validation failure into a line that names the field.

Models forbid unknown fields and validate on assignment, so a config is valid from the moment
it exists. Field checks raise ``ValueError("<field> must be ..., got ...")``; pydantic wraps
them, and :func:`error_message` unwraps them again for the command line and the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigModel(BaseModel):
    """A settings object: unknown fields refused, every assignment validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def replace(self, **changes: Any) -> Any:
        """A validated copy with ``changes`` applied (``model_copy`` does not validate)."""
        return type(self).model_validate({**self.model_dump(), **changes})


def error_message(exc: ValidationError, where: str | None = None) -> str:
    """The first error of ``exc`` as one line naming the field: the check's own message
    when a validator raised one (it names the field), else ``field: pydantic's message``.
    ``where`` (e.g. a file name) is put in front."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "value"
    if error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    elif error["type"] == "extra_forbidden":
        message = f"{field}: unknown field"
    else:
        message = f"{field}: {error['msg'][:1].lower()}{error['msg'][1:]}, got {error['input']!r}"
    return message if where is None else f"{where}: {message}"


def positive_ints(name: str, values: Sequence[int]) -> None:
    """A ValueError naming ``name`` unless every value is an int >= 1."""
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
