"""One error hierarchy and the handlers that render it as `{"error": {...}}`."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


class ServiceUnavailable(AppError):
    """A dependency needed to decide is unavailable; we fail closed."""

    status_code = 503
    code = "service_unavailable"
    message = "A required service is unavailable."


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
    if exc.status_code >= 500:
        log.warning("request_failed", code=exc.code, status=exc.status_code)
    return error_response(request, exc.status_code, exc.code, exc.message, exc.headers, exc.details)


def validation_error_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming every bad field."""
    message, problems = _format_validation(exc)
    log.info("validation_failed", problems=problems)
    return error_response(request, 422, "validation_error", message, details=problems)


def internal_error_response(request: Request, exc: Exception) -> JSONResponse:
    """500 for a bug: logged with its traceback, never shown to the client."""
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

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(request, exc)
