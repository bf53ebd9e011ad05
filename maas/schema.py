"""The base of every typed config schema, the model-name rule, and the one way a validation
error becomes a message a user can act on."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from maas.errors import ConfigError

# Model and sweep names: they become directory names in the registry and run storage.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class StrictSchema(BaseModel):
    """Frozen, and unknown keys are refused: a typo fails on the driver in milliseconds, not
    inside a worker after the cluster has scaled up."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Schema = TypeVar("Schema", bound=BaseModel)


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "<top>"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/ for the accepted keys)"
        given = error.get("input")
        shown = "" if error["type"] == "missing" or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {location}: {message}{shown}")
    return "\n".join(lines)


def validate_config(schema: type[Schema], raw: Any, source: str = "config") -> Schema:
    """``schema`` validated from ``raw``, or a ``ConfigError`` naming ``source`` and each field."""
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
