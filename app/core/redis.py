"""Redis clients whose every call is bounded: a frozen or unreachable Redis costs a request at
most `REDIS_TIMEOUT_SECONDS` per attempt (two attempts: one retry on a dropped connection, no
backoff), then a 503 `redis_unavailable`, instead of hanging it."""

from __future__ import annotations

from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from app.core.config import Settings

# One retry, only for a connection that dropped (a pooled connection to a restarted server);
# a timeout is not retried: a frozen server would only double the wait.
_RETRY_ON = (redis_errors.ConnectionError,)


def redis_options(timeout: float) -> dict[str, Any]:
    """Keyword arguments bounding every call of a `redis.asyncio` client."""
    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "retry": AsyncRetry(NoBackoff(), 1, supported_errors=_RETRY_ON),
    }


def make_redis(settings: Settings) -> Redis | None:
    """The process's Redis client (None without `REDIS_URL`), every call bounded."""
    if not settings.redis_url:
        return None
    return Redis.from_url(settings.redis_url, **redis_options(settings.redis_timeout_seconds))
