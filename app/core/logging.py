"""structlog configuration: every line JSON (uvicorn's too), with the request context merged.

`LOG_FORMAT` chooses the renderer: `json` (one JSON object a line, what log shippers read),
`console` (readable, coloured lines for a person) or `auto` (the default: console when stdout is
a terminal, JSON otherwise)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]

# Log context bound per request besides `request_id` (by `app.web.deps`); the request-context
# middleware unbinds them when a request starts.
REQUEST_LOG_KEYS = ("tenant", "principal")

_SECRET_KEYS = re.compile(
    r"(password|secret|token|authorization|api[_-]?key|cookie|credential|value)", re.I
)
_BEARER = re.compile(r"(?i)(bearer\s+|wk_)[A-Za-z0-9._~+/=-]{8,}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")


def mask_email(email: str | None) -> str | None:
    """`alice@company.com` → `a***@company.com`: enough to recognise, not to harvest."""
    if not email or "@" not in email:
        return email
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _JWT.sub("[redacted-jwt]", _BEARER.sub(r"\1[redacted]", value))
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop values of secret-looking keys and scrub tokens that slipped into strings."""
    for key in list(event_dict):
        if key in ("event", "level", "timestamp", "logger"):
            event_dict[key] = _scrub(event_dict[key])
            continue
        if _SECRET_KEYS.search(key):
            event_dict[key] = "[redacted]"
        elif key in ("email", "actor_email", "user_email"):
            event_dict[key] = mask_email(event_dict[key])
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _drop_color_message(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict.pop("color_message", None)
    return event_dict


def _renderer(log_format: LogFormat | None) -> list[Any]:
    """The formatter's last processors: JSON, or readable lines for a terminal."""
    if log_format is None:
        from pydantic import ValidationError

        from app.core.config import get_settings

        try:
            log_format = get_settings().log_format
        except ValidationError:  # the command that needs the settings reports them
            log_format = "auto"
    if log_format == "auto":
        log_format = "console" if sys.stdout.isatty() else "json"
    if log_format == "console":
        # ConsoleRenderer formats exceptions itself (format_exc_info would flatten them first).
        return [structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())]
    return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]


def configure_logging(level: str = "info", log_format: LogFormat | None = None) -> None:
    """Route structlog and stdlib logging through one renderer on stdout (`LOG_FORMAT` when
    `log_format` is not given)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact_secrets,
    ]
    structlog.configure(
        # filter_by_level first: a filtered line costs one level check, not the whole chain.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_renderer(log_format),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
    # SQLAlchemy and httpx are chatty at INFO and could echo parameters.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
