"""One error hierarchy and the handlers that render it as `{"error": {...}}`."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis import exceptions as redis_errors
from sqlalchemy import exc as sa_errors
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("warden.errors")


class AppError(Exception):
    """Base of every error a client may see; carries an HTTP status and a stable code."""

    status_code = 400
    code = "bad_request"
    message = "Bad request."
    # A refusal whose side effects must persist (e.g. revoking a refresh family on reuse).
    commit_changes = False

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        details: Any = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.headers = headers or {}
        self.details = details
        super().__init__(self.message)


class Unauthenticated(AppError):
    """No valid credential."""

    status_code = 401
    code = "unauthenticated"
    message = "Authentication required."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class Forbidden(AppError):
    """Authenticated but not allowed."""

    status_code = 403
    code = "forbidden"
    message = "You are not allowed to do this."


class NotFound(AppError):
    """The object does not exist in the caller's tenant."""

    status_code = 404
    code = "not_found"
    message = "Not found."


class Conflict(AppError):
    """The change would break a uniqueness or invariant rule."""

    status_code = 409
    code = "conflict"
    message = "Conflict."


class Unprocessable(AppError):
    """Well-formed but semantically invalid input."""

    status_code = 422
    code = "validation_error"
    message = "Invalid input."


class RateLimited(AppError):
    """A rate limit was exceeded."""

    status_code = 429
    code = "rate_limited"
    message = "Too many requests."


class UpstreamError(AppError):
    """The protected upstream failed."""

    status_code = 502
    code = "upstream_error"
    message = "The upstream service failed."


class UpstreamTimeout(AppError):
    """The protected upstream did not answer in time."""

    status_code = 504
    code = "upstream_timeout"
    message = "The upstream service did not answer in time."


# Seconds a client is told to wait before retrying a request refused for an outage.
RETRY_AFTER_SECONDS = 5


class ServiceUnavailable(AppError):
    """A dependency needed to decide is unavailable; we fail closed. Always with `Retry-After`;
    raised `from` a Redis or database connection error, its code names that dependency."""

    status_code = 503
    code = "service_unavailable"
    message = "A required service is unavailable."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached or did not answer in time."""

    code = "database_unavailable"
    message = "The database is unavailable; try again shortly."


class RedisUnavailable(ServiceUnavailable):
    """Redis cannot be reached or did not answer in time."""

    code = "redis_unavailable"
    message = "Redis is unavailable; try again shortly."


# SQLite reports a missing table and a locked database with the same exception class: only
# these messages are the database being unavailable rather than a bug.
_SQLITE_OUTAGES = ("locked", "busy", "unable to open", "disk i/o", "readonly", "disk is full")
# Connection-level driver errors: the server is down, refused us, dropped us or did not answer.
# IntegrityError, ProgrammingError, DataError & co. are bugs or bad input, not outages.
_DB_DRIVER_OUTAGES = (psycopg.OperationalError, psycopg.InterfaceError)
_REDIS_OUTAGES = (redis_errors.ConnectionError, redis_errors.TimeoutError)
_OUTAGE_CODES = frozenset({"database_unavailable", "redis_unavailable"})


def _database_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa_errors.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa_errors.DBAPIError):
        if exc.connection_invalidated:
            return True
        if not isinstance(exc, (sa_errors.OperationalError, sa_errors.InterfaceError)):
            return False
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, sqlite3.Error):
        return isinstance(exc, sqlite3.OperationalError) and any(
            marker in str(exc).lower() for marker in _SQLITE_OUTAGES
        )
    return isinstance(exc, (*_DB_DRIVER_OUTAGES, sa_errors.OperationalError))


def outage_of(exc: BaseException | None) -> ServiceUnavailable | None:
    """The 503 for an exception caused by a dependency being down (database or Redis, found
    anywhere in its cause chain), or None when it is something else (a bug stays a 500)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, DatabaseUnavailable | RedisUnavailable):
            return exc
        if isinstance(exc, _REDIS_OUTAGES):
            return RedisUnavailable()
        if _database_outage(exc):
            return DatabaseUnavailable()
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def request_id_of(request: Request) -> str | None:
    """The request id assigned by the middleware, if any."""
    return getattr(request.state, "request_id", None)


def error_response(
    request: Request,
    status_code: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: Any = None,
) -> JSONResponse:
    """Render the one error shape every client sees."""
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "request_id": request_id_of(request),
    }
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status_code, headers=headers)


def app_error_response(request: Request, exc: AppError) -> JSONResponse:
    """The response of an `AppError` (also used by the hot path, which has no handlers)."""
    code = exc.code
    if isinstance(exc, ServiceUnavailable):
        named = outage_of(exc.__cause__)
        if named is not None and code == ServiceUnavailable.code:
            code = named.code  # a store's generic refusal raised from a connection error
        if code in _OUTAGE_CODES:
            _log_outage(request, code, exc.__cause__ or exc)
            return _render(request, exc, code)
    if exc.status_code >= 500:
        log.warning("request_failed", code=code, status=exc.status_code)
    return _render(request, exc, code)


def _render(request: Request, exc: AppError, code: str) -> JSONResponse:
    return error_response(request, exc.status_code, code, exc.message, exc.headers, exc.details)


def _log_outage(request: Request, code: str, cause: BaseException) -> None:
    """One line per refused request: which dependency, what failed; no traceback."""
    log.warning(
        "dependency_unavailable",
        code=code,
        status=503,
        path=request.url.path,
        error=type(cause).__name__,
        detail=str(cause)[:200],
    )


def outage_response(request: Request, exc: BaseException) -> JSONResponse | None:
    """The 503 for an exception caused by an unavailable dependency, else None."""
    outage = outage_of(exc)
    if outage is None:
        return None
    _log_outage(request, outage.code, exc)
    return _render(request, outage, outage.code)


def validation_error_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming every bad field."""
    message, problems = _format_validation(exc)
    log.info("validation_failed", problems=problems)
    return error_response(request, 422, "validation_error", message, details=problems)


def internal_error_response(request: Request, exc: Exception) -> JSONResponse:
    """500 for a bug: logged with its traceback, never shown to the client. An unexpected
    exception caused by a dependency outage (database or Redis unreachable, frozen, timed out)
    is no bug: it is a 503 with `Retry-After`, logged in one line."""
    outage = outage_response(request, exc)
    if outage is not None:
        return outage
    log.error("unhandled_error", exc_info=exc)
    return error_response(request, 500, "internal_error", "Internal server error.")


def _format_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body",)]
        field = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "json_invalid":
            msg = "malformed JSON"
            field = "body"
        problems.append({"field": field, "message": msg})
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5]) or "invalid input"
    return f"Invalid input: {summary}", problems


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the single error shape; nothing else reaches clients."""

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return app_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail) if exc.detail else "Error."
        headers = dict(exc.headers) if exc.headers else None
        return error_response(request, exc.status_code, code, message, headers)

    async def _outage(request: Request, exc: Exception) -> JSONResponse:
        response = outage_response(request, exc)
        if response is None:
            raise exc  # not an outage (a constraint, a bug): the 500 below, as before
        return response

    # Registered by type, so they are handled inside the app (a response, the connection kept)
    # rather than by the last-resort handler, which re-raises to the server.
    for outage_type in (
        sa_errors.OperationalError,
        sa_errors.InterfaceError,
        sa_errors.TimeoutError,
        *_DB_DRIVER_OUTAGES,
        *_REDIS_OUTAGES,
    ):
        app.add_exception_handler(outage_type, _outage)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(request, exc)
