"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import RETRY_AFTER_SECONDS

router = APIRouter(tags=["operations"])
log = structlog.get_logger("warden.health")

# Each probe's deadline: a frozen dependency must not hold the readiness check (an orchestrator
# polling /ready would time out instead of being told what is down).
PROBE_TIMEOUT_SECONDS = 0.8


# Both are exempt from the global per-IP limit (GLOBAL_LIMIT_EXEMPT in app/core/ratelimit.py).
@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


async def _database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


# Probes given up on, cancelled but not awaited (kept referenced until they have unwound).
_abandoned: set[asyncio.Task[object]] = set()


def _forget(task: asyncio.Task[object]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a late failure is not "never retrieved" noise


async def _probe(name: str, check: Awaitable[object]) -> str:
    task = asyncio.ensure_future(check)
    # Not `wait_for`: it waits for the cancelled probe to unwind, and a driver may take its time
    # doing so (psycopg tries to cancel the statement on the server for up to 5 s).
    done, _ = await asyncio.wait({task}, timeout=PROBE_TIMEOUT_SECONDS)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        log.warning("dependency_unavailable", dependency=name, error="TimeoutError")
        return "unavailable"
    if task.exception() is not None:
        error = type(task.exception()).__name__
        log.warning("dependency_unavailable", dependency=name, error=error)
        return "unavailable"
    return "ok"


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """The database (and Redis, when configured) answer, each within its probe deadline; the
    probes run together, so the answer comes within about one deadline."""
    runtime = request.app.state.runtime
    probes = {"database": _probe("database", _database(runtime.engine))}
    if runtime.redis is not None:
        probes["redis"] = _probe("redis", runtime.redis.ping())
    results = await asyncio.gather(*probes.values())
    checks = dict(zip(probes, results, strict=True))
    healthy = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
        headers=None if healthy else {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
