"""Which exceptions are a dependency outage (503 + Retry-After, one log line) and which stay
bugs (500): the classification, the app's handlers, and the hot path's renderer."""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from redis import exceptions as redis_errors
from sqlalchemy import exc as sa_errors

from app.core.errors import (
    DatabaseUnavailable,
    RedisUnavailable,
    ServiceUnavailable,
    install_error_handlers,
    outage_of,
)
from tests.conftest import make_tenant


def wrapped(orig: Exception, kind: type[sa_errors.DBAPIError] = sa_errors.OperationalError) -> Any:
    return kind("SELECT 1", {}, orig)


def chained(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


class TestClassification:
    @pytest.mark.parametrize(
        "exc",
        [
            wrapped(psycopg.OperationalError("connection refused")),
            wrapped(psycopg.InterfaceError("the connection is closed"), sa_errors.InterfaceError),
            wrapped(sqlite3.OperationalError("database is locked")),
            sa_errors.TimeoutError("QueuePool limit reached"),
            psycopg.OperationalError("server closed the connection unexpectedly"),
            chained(RuntimeError("while loading"), wrapped(psycopg.OperationalError("gone"))),
        ],
    )
    def test_database_outages(self, exc: Exception) -> None:
        assert isinstance(outage_of(exc), DatabaseUnavailable)

    @pytest.mark.parametrize(
        "exc",
        [
            redis_errors.ConnectionError("Connection refused"),
            redis_errors.TimeoutError("Timeout reading from socket"),
            chained(
                ServiceUnavailable("The session store is unavailable."), redis_errors.TimeoutError()
            ),
        ],
    )
    def test_redis_outages(self, exc: Exception) -> None:
        assert isinstance(outage_of(exc), RedisUnavailable)

    @pytest.mark.parametrize(
        "exc",
        [
            wrapped(psycopg.IntegrityError("duplicate key"), sa_errors.IntegrityError),
            wrapped(sqlite3.IntegrityError("UNIQUE constraint failed"), sa_errors.IntegrityError),
            wrapped(sqlite3.OperationalError("no such table: users")),  # a bug, not an outage
            wrapped(psycopg.ProgrammingError("syntax error"), sa_errors.ProgrammingError),
            redis_errors.ResponseError("WRONGTYPE"),
            RuntimeError("boom"),
            TimeoutError(),
        ],
    )
    def test_bugs_stay_bugs(self, exc: Exception) -> None:
        assert outage_of(exc) is None


def raising_app(exc: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    return app


async def call(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get("/boom")


class TestHandlers:
    async def test_database_error_is_503_with_retry_after(self) -> None:
        r = await call(raising_app(wrapped(psycopg.OperationalError("connection refused"))))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "database_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        assert "connection refused" not in r.text  # nothing of the driver reaches the client

    async def test_redis_error_is_503_with_retry_after(self) -> None:
        r = await call(raising_app(redis_errors.TimeoutError("Timeout reading from socket")))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "redis_unavailable"
        assert int(r.headers["retry-after"]) >= 1

    async def test_store_refusal_names_redis(self) -> None:
        refusal = chained(
            ServiceUnavailable("The session store is unavailable."), redis_errors.ConnectionError()
        )
        r = await call(raising_app(refusal))
        assert r.status_code == 503
        assert r.json()["error"] == {
            "code": "redis_unavailable",
            "message": "The session store is unavailable.",
            "request_id": None,
        }
        assert int(r.headers["retry-after"]) >= 1

    async def test_other_refusals_keep_their_code_and_get_retry_after(self) -> None:
        r = await call(raising_app(ServiceUnavailable("IdP down", code="issuer_unavailable")))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "issuer_unavailable"
        assert "retry-after" in r.headers

    @pytest.mark.parametrize(
        "exc",
        [
            wrapped(psycopg.IntegrityError("duplicate key"), sa_errors.IntegrityError),
            wrapped(sqlite3.OperationalError("no such table: users")),
        ],
    )
    async def test_bugs_stay_500(self, exc: Exception) -> None:
        r = await call(raising_app(exc))
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error"
        assert "retry-after" not in r.headers


async def test_hot_path_renders_outages_as_503(client: httpx.AsyncClient, monkeypatch: Any) -> None:
    """The hot path has no handlers: its renderer of unexpected exceptions knows outages."""
    from app.authz import service

    tenant = await make_tenant(client)

    async def down(*_args: Any, **_kwargs: Any) -> None:
        raise wrapped(psycopg.OperationalError("connection refused"))

    monkeypatch.setattr(service, "check", down)
    r = await client.post(
        "/api/v1/authz/check", json={"endpoint": "any-endpoint"}, headers=tenant.owner.headers
    )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "database_unavailable"
    assert int(r.headers["retry-after"]) >= 1
