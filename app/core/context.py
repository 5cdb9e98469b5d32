"""Per-request context (request id, client ip) visible to services and the audit writer."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    """What the middleware knows about the request in flight."""

    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


_EMPTY = RequestContext()
_current: ContextVar[RequestContext] = ContextVar("warden_request")


def current_request() -> RequestContext:
    """The context of the request being handled (empty outside a request)."""
    return _current.get(_EMPTY)


def set_request_context(ctx: RequestContext) -> None:
    """Bind the context for the rest of this request's task."""
    _current.set(ctx)
