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


async def _probe(name: str, check: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(check, PROBE_TIMEOUT_SECONDS)
    except Exception as exc:  # TimeoutError included: any failure means not ready
        log.warning("dependency_unavailable", dependency=name, error=type(exc).__name__)
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
