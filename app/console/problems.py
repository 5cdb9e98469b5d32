"""Validation messages placed next to the field they are about."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.core.errors import AppError, Unprocessable

Model = TypeVar("Model", bound=BaseModel)
GENERAL = "_form"
_NAMED = re.compile(r"^(?:Invalid )?([a-z][a-z_.]*): ")


def _loc(parts: Any) -> str:
    return ".".join(str(p) for p in parts) if parts else GENERAL


def from_validation(exc: ValidationError) -> dict[str, str]:
    """Field path → message, from the same pydantic models the API validates with."""
    problems: dict[str, str] = {}
    for error in exc.errors():
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        loc = _loc(error.get("loc", ()))
        # A model-level check names its field first ("client_secret: required with …").
        named = _NAMED.match(message) if loc == GENERAL else None
        problems.setdefault(named.group(1) if named else loc, message)
    return problems


def from_app_error(exc: AppError) -> dict[str, str]:
    """Field path → message, from a service's refusal (422 details name fields)."""
    problems: dict[str, str] = {}
    if isinstance(exc.details, list):
        for item in exc.details:
            if isinstance(item, dict) and "field" in item:
                message = str(item.get("message", "invalid")).removeprefix("Value error, ")
                problems.setdefault(str(item["field"]), message)
    if not problems:
        # Services name the field first ("expires_at: must be…", "Invalid email: …").
        named = _NAMED.match(exc.message)
        problems[named.group(1) if named else GENERAL] = exc.message
    return problems


def parse(model: type[Model], data: dict[str, Any]) -> Model:
    """`model` from form data; a 422 naming each bad field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = from_validation(exc)
        raise Unprocessable(
            "; ".join(f"{k}: {v}" for k, v in problems.items()),
            details=[{"field": k, "message": v} for k, v in problems.items()],
        ) from exc
