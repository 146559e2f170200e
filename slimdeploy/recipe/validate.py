"""Turn pydantic validation errors into one line that names the key and what is wrong with it."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from slimdeploy.errors import SlimdeployError

T = TypeVar("T", bound=BaseModel)


def describe(exc: ValidationError, where: str = "") -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where + '.' if where else ''}{key}: {msg}")
    return "; ".join(parts)


def config_or_error(cls: type[T], values: dict, where: str = "") -> T:
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise SlimdeployError(f"invalid {where or cls.__name__} settings: {describe(exc)}") from None
