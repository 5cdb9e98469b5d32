"""Rate limits on `limits.aio` storages (async, Redis-backed when `REDIS_URL` is set): the
global per-IP limit (`GlobalRateLimitMiddleware`), the per-IP and per-account login limits and
the per-policy limits. One `AsyncLimiter` per process, built with the web state: two apps in one
process never share counters by accident, and no call blocks the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.storage import storage_from_string
from redis.asyncio import Redis
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.context import current_request
from app.core.errors import RedisUnavailable, ServiceUnavailable
from app.core.redis import redis_options

log = structlog.get_logger("warden.ratelimit")


@dataclass(frozen=True)
class LimitState:
    """The outcome of one limit check, with what the headers need."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: float

    @property
    def retry_after(self) -> int:
        """Seconds until a retry may succeed."""
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        """`X-RateLimit-*` (and `Retry-After` when refused)."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class MovingWindowMemoryStorage(MemoryStorage):
    """limits' in-memory moving window keeps an object per hit in a list and inserts each new
    hit at the front: a copy of the whole window per request (under a 1,000,000/minute policy
    that grew to megabytes a hit) plus a sweeper thread bisecting every list every 10 ms. Same
    semantics here with a deque of timestamps per key: O(1) amortised per hit. Fixed windows
    (the global limit) stay limits' own counters."""

    SWEEP_SECONDS = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.windows: dict[str, tuple[int, deque[float]]] = {}
        self._swept = time.monotonic()

    def _window(self, key: str, expiry: int, now: float) -> deque[float] | None:
        entry = self.windows.get(key)
        if entry is None:
            return None
        window = entry[1]
        horizon = now - expiry
        while window and window[0] < horizon:  # a hit at exactly now - expiry still counts
            window.popleft()
        return window

    def _sweep(self, now: float) -> None:
        """Forget windows whose every hit has left them and counters past their expiry (per-IP
        keys come and go)."""
        if time.monotonic() - self._swept < self.SWEEP_SECONDS:
            return
        self._swept = time.monotonic()
        stale = [k for k, (exp, w) in self.windows.items() if not w or w[-1] < now - exp]
        for key in stale:
            del self.windows[key]
        expired = [key for key, at in self.expirations.items() if at <= now]
        for key in expired:
            self.storage.pop(key, None)
            del self.expirations[key]

    def count(self, key: str, expiry: float, amount: int = 1) -> int:
        """limits' fixed-window counter without its lock, its extra reads and its sweeper task:
        the count of the window after `amount` more (synchronous: nothing here waits)."""
        now = time.time()
        self._sweep(now)
        if self.expirations.get(key, 0) <= now:  # a new or expired window starts over
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
        value = self.storage[key] = self.storage.get(key, 0) + amount
        if value == amount:
            self.expirations[key] = now + expiry
        return value

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """limits' `incr` (its interface): `count`."""
        return self.count(key, expiry, amount)

    def take(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Spend `amount` hits of a moving window if they fit (synchronous)."""
        if amount > limit:
            return False
        now = time.time()
        self._sweep(now)
        window = self._window(key, expiry, now)
        if window is None:
            window = deque()
            self.windows[key] = (expiry, window)
        if len(window) + amount > limit:
            return False
        window.extend([now] * amount)
        return True

    def read(self, key: str, expiry: int) -> tuple[float, int]:
        """The start and the count of a moving window (synchronous)."""
        now = time.time()
        window = self._window(key, expiry, now)
        # As limits' own storage: a hit exactly one period old still blocks `take` but is no
        # longer counted here.
        first = 0
        while window is not None and first < len(window) and window[first] <= now - expiry:
            first += 1
        if window is None or first == len(window):
            return now, 0
        return window[first], len(window) - first

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """limits' interface: `take`."""
        return self.take(key, limit, expiry, amount)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """limits' interface: `read`."""
        return self.read(key, expiry)

    async def clear(self, key: str) -> None:
        self.windows.pop(key, None)
        await super().clear(key)

    async def reset(self) -> int | None:
        self.windows.clear()
        return await super().reset()


@dataclass
class _Window:
    """This process's view of one shared fixed window."""

    shared: int  # the total in Redis at the last sync (this process's flushed hits included)
    pending: int  # hits counted here, not yet added to Redis
    reset_at: float


class SharedFixedWindows:
    """Fixed windows counted in Redis without a round trip per hit (the global per-IP limit,
    which every request passes). Each process counts hits locally and adds them to the Redis
    counter every `FLUSH_SECONDS` in one pipeline, learning the other processes' hits back: a
    process decides exactly on its own hits, and on the others' as of its last flush, so it may
    admit at most one flush interval of its own hits beyond the limit. The first hit of a window
    in a process goes to Redis at once. The counters are limits' own layout (a key with the
    window's TTL). If Redis cannot be reached, hits fail closed (503)."""

    FLUSH_SECONDS = 0.1

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.windows: dict[str, _Window] = {}
        self.failure: Exception | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def hit(self, key: str, item: RateLimitItem) -> LimitState:
        now = time.time()
        window = self.windows.get(key)
        if window is None or now >= window.reset_at:
            window = _Window(0, 1, now + item.get_expiry())
            await self._sync({key: window}, item.get_expiry())  # raises: nothing kept
            self.windows[key] = window
        else:
            if self.failure is not None:
                raise self.failure
            window.pending += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever(), name="global-limit-flush")
        count = window.shared + window.pending
        return LimitState(count <= item.amount, item.amount, item.amount - count, window.reset_at)

    async def _sync(self, windows: dict[str, _Window], expiry: int | None = None) -> None:
        """Add pending hits to Redis; learn each window's total and remaining time."""
        flushed = {key: w.pending for key, w in windows.items()}
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, count in flushed.items():
                ttl = expiry or max(1, math.ceil(windows[key].reset_at - time.time()))
                pipe.incrby(key, count)
                pipe.expire(key, ttl, nx=True)
                pipe.pttl(key)
            results = await pipe.execute()
        now = time.time()
        for index, (key, count) in enumerate(flushed.items()):
            total, _, pttl = results[3 * index : 3 * index + 3]
            window = windows[key]
            window.pending -= count
            window.shared = int(total)
            if int(pttl) > 0:  # the window as Redis keeps it (another process may have opened it)
                window.reset_at = now + int(pttl) / 1000
        self.failure = None

    async def _flush_forever(self) -> None:
        while self.windows:
            await asyncio.sleep(self.FLUSH_SECONDS)
            now = time.time()
            for key in [k for k, w in self.windows.items() if now >= w.reset_at]:
                del self.windows[key]
            due = {k: w for k, w in self.windows.items() if w.pending}
            if not due:
                continue
            try:
                await self._sync(due)
            except Exception as exc:  # kept pending; retried next round; hits fail closed
                log.error("rate_limit_store_unavailable", error=type(exc).__name__)
                self.failure = _unavailable(exc)

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.windows.clear()


# One call spends and reports a moving window. KEYS: the window's entries (a sorted set: score =
# when its units count as spent, member = "<units>:<writer>:<n>") and their running total.
# ARGV: now, limit, period (s), units wanted (0: only report), stamp of the new entry, member
# suffix, lease member to settle ("" if none), units of it actually spent, keys' TTL (ms).
# Returns {units granted, total after, score of the oldest entry or ""}.
SPEND_SCRIPT = """
local entries, totals = KEYS[1], KEYS[2]
local now, limit, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want, stamp, suffix = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local settle, spent, ttl = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local total = tonumber(redis.call('get', totals) or '0')
local horizon = '(' .. (now - period)
local gone = redis.call('zrangebyscore', entries, '-inf', horizon)
if #gone > 0 then
  for _, member in ipairs(gone) do
    total = total - tonumber(string.match(member, '^(%d+):'))
  end
  redis.call('zremrangebyscore', entries, '-inf', horizon)
end
if settle ~= '' then
  local score = redis.call('zscore', entries, settle)
  if score then
    redis.call('zrem', entries, settle)
    total = total - tonumber(string.match(settle, '^(%d+):'))
    if spent > 0 then
      redis.call('zadd', entries, score, spent .. ':' .. suffix .. 's')
      total = total + spent
    end
  end
end
local granted = 0
if want > 0 and total < limit then
  granted = math.min(want, limit - total)
  redis.call('zadd', entries, stamp, granted .. ':' .. suffix)
  total = total + granted
end
if total < 0 then total = 0 end
redis.call('set', totals, total, 'px', ttl)
redis.call('pexpire', entries, ttl)
local oldest = redis.call('zrange', entries, 0, 0, 'withscores')
return {granted, total, oldest[2] or ''}
"""


@dataclass(slots=True)
class _Lease:
    """A slice of a shared window's budget this process spends without asking Redis."""

    member: str  # its entry in Redis (settled with what was spent when the next slice is taken)
    granted: int
    spent: int
    until: float  # time.time() after which nothing more is spent from it
    total: int  # the shared total Redis reported when it was granted (this slice included)
    reset_at: float


class _Peeked(NamedTuple):
    """A recent reading of a large window that had room."""

    state: LimitState
    until: float


class RedisMovingWindows:
    """Moving windows in Redis, one round trip per call (a Lua script that spends and reports
    the window at once, instead of limits' acquire + stats), exact across processes.

    Large limits (at least `LEASE_MIN_LIMIT`) are spent from leases: a process takes a slice of
    the shared budget (at most 1/`LEASE_FRACTION` of the limit, sized to what it spent from
    its previous slice) and spends it locally for at most `LEASE_SECONDS`, returning to Redis
    when it runs out or expires, and then settling the previous slice with what it really spent.

    Precision: a leased unit counts in Redis from the moment its slice is granted until its
    stamp (grant time + `LEASE_SECONDS`, never earlier than the unit is spent) + the period,
    and a slice is granted only from room left, so no window ever admits more than the limit,
    in any number of processes. The price is the other way: while slices are held, up to
    (processes times slice) units are reserved but unspent, so a caller may be refused up to that
    many requests early (at most 1% of the limit per process), and a slice whose process stops
    asking is settled only when its entry leaves the window. Smaller limits are exact. A check
    (`peek`) of a large limit with more than a slice of room left is answered from a reading
    at most `LEASE_SECONDS` old."""

    LEASE_MIN_LIMIT = 1_000
    LEASE_FRACTION = 100
    LEASE_SECONDS = 1.0
    PEEK_CACHE_SIZE = 50_000

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(SPEND_SCRIPT)
        self._writer = secrets.token_hex(6)
        self._serial = itertools.count()
        self._leases: dict[str, _Lease] = {}
        self._refills: dict[str, asyncio.Future[None]] = {}
        self._peeked: dict[str, _Peeked] = {}

    async def _call(
        self,
        key: str,
        limit: int,
        period: int,
        want: int,
        stamp: float,
        now: float,
        settle: _Lease | None = None,
    ) -> tuple[int, int, float, str]:
        """(granted, total, reset_at, member of the new entry)."""
        suffix = f"{self._writer}:{next(self._serial)}"
        ttl = int((period + self.LEASE_SECONDS) * 1000) + 1000
        granted, total, oldest = await self._script(
            keys=[f"LIMITS:{key}:w", f"LIMITS:{key}:n"],
            args=[
                repr(now),
                limit,
                period,
                want,
                repr(stamp),
                suffix,
                settle.member if settle is not None else "",
                settle.spent if settle is not None else 0,
                ttl,
            ],
        )
        reset_at = (float(oldest) if oldest else now) + period
        return int(granted), int(total), reset_at, f"{int(granted)}:{suffix}"

    async def hit(self, key: str, limit: int, period: int) -> LimitState:
        """Spend one unit if the window has room."""
        while True:
            now = time.time()
            lease = self._leases.get(key)
            if lease is not None and lease.spent < lease.granted and now < lease.until:
                lease.spent += 1
                unspent = lease.granted - lease.spent
                return LimitState(True, limit, limit - lease.total + unspent, lease.reset_at)
            if limit < self.LEASE_MIN_LIMIT:
                granted, total, reset_at, _ = await self._call(key, limit, period, 1, now, now)
                return LimitState(granted == 1, limit, limit - total, reset_at)
            pending = self._refills.get(key)
            if pending is None:
                return await self._refill(key, limit, period, lease, now)
            await asyncio.shield(pending)  # another request is taking the next slice: use it

    async def _refill(
        self, key: str, limit: int, period: int, lease: _Lease | None, now: float
    ) -> LimitState:
        """Take the next slice (spending its first unit), settling the previous one."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refills[key] = done
        try:
            cap = max(1, limit // self.LEASE_FRACTION)
            want = min(cap, max(1, 2 * lease.spent)) if lease is not None else 1
            settle = lease if lease is not None and lease.spent < lease.granted else None
            until = now + self.LEASE_SECONDS
            granted, total, reset_at, member = await self._call(
                key, limit, period, want, until, now, settle
            )
            if granted == 0:
                self._leases.pop(key, None)
                return LimitState(False, limit, limit - total, reset_at)
            self._leases[key] = _Lease(member, granted, 1, until, total, reset_at)
            return LimitState(True, limit, limit - total + granted - 1, reset_at)
        finally:
            del self._refills[key]
            done.set_result(None)

    async def peek(self, key: str, limit: int, period: int) -> LimitState:
        """The window without spending (this process's unspent slice counts as room). For a
        large limit, a reading less than `LEASE_SECONDS` old that left more than a slice of room
        answers again without a round trip: a check spends nothing, so it may be that stale."""
        now = time.time()
        seen = self._peeked.get(key)
        if seen is not None and now < seen.until:
            return seen.state
        _, total, reset_at, _ = await self._call(key, limit, period, 0, now, now)
        lease = self._leases.get(key)
        if lease is not None and now < lease.until:
            total -= lease.granted - lease.spent
        state = LimitState(total < limit, limit, limit - total, reset_at)
        if limit >= self.LEASE_MIN_LIMIT and limit - total > limit // self.LEASE_FRACTION:
            if len(self._peeked) >= self.PEEK_CACHE_SIZE:
                self._peeked.clear()
            self._peeked[key] = _Peeked(state, now + self.LEASE_SECONDS)
        return state

    def forget(self) -> None:
        """Drop this process's slices and readings (after the shared counters were reset)."""
        self._leases.clear()
        self._peeked.clear()


class AsyncLimiter:
    """Moving windows (policies) and fixed windows (the global limit) on a `limits.aio`
    storage: Redis when configured, so every process shares one count, else this process's
    memory. The storage is called directly with keys built once: limits' strategy classes
    rebuilt the key string on every call and add nothing else."""

    KEY_CACHE_SIZE = 50_000

    def __init__(
        self, redis_url: str | None, redis: Redis | None = None, *, timeout: float = 0.5
    ) -> None:
        self.distributed = redis_url is not None
        self.storage: Storage
        # This process's counters when no Redis is configured, called synchronously (no
        # coroutine per call: the hot path's limits cost a dict update each).
        self.memory: MovingWindowMemoryStorage | None = None
        self.shared_windows: SharedFixedWindows | None = None
        self.redis_windows: RedisMovingWindows | None = None
        if redis_url:
            uri = redis_url if redis_url.startswith("async+") else "async+" + redis_url
            options = redis_options(timeout)  # `timeout`: REDIS_TIMEOUT_SECONDS
            self.storage = cast(
                Storage, storage_from_string(uri, implementation="redispy", **options)
            )
            client = redis or Redis.from_url(redis_url, **options)
            self.shared_windows = SharedFixedWindows(client)
            self.redis_windows = RedisMovingWindows(client)
        else:
            self.memory = MovingWindowMemoryStorage()
            self.storage = self.memory
        self._keys: dict[tuple[str, RateLimitItem, tuple[str, ...]], str] = {}

    def _key(self, item: RateLimitItem, ids: tuple[str, ...]) -> str:
        cached = (item.namespace, item, ids)
        key = self._keys.get(cached)
        if key is None:
            if len(self._keys) >= self.KEY_CACHE_SIZE:
                self._keys.clear()
            key = self._keys[cached] = item.key_for(*ids)
        return key

    async def hit(self, item: RateLimitItem, *ids: str) -> LimitState:
        """Spend one unit if available; fail closed when the shared store is unreachable."""
        key, expiry = self._key(item, ids), item.get_expiry()
        try:
            if self.redis_windows is not None:
                return await self.redis_windows.hit(key, item.amount, expiry)
            assert self.memory is not None  # noqa: S101  (no Redis: this process's memory)
            allowed = self.memory.take(key, item.amount, expiry)
            start, count = self.memory.read(key, expiry)
        except Exception as exc:
            raise _unavailable(exc) from exc
        return LimitState(allowed, item.amount, item.amount - count, start + expiry)

    async def peek(self, item: RateLimitItem, *ids: str) -> LimitState:
        """Check without spending (one store read: room left means a hit would pass)."""
        key, expiry = self._key(item, ids), item.get_expiry()
        try:
            if self.redis_windows is not None:
                return await self.redis_windows.peek(key, item.amount, expiry)
            assert self.memory is not None  # noqa: S101  (no Redis: this process's memory)
            start, count = self.memory.read(key, expiry)
        except Exception as exc:
            raise _unavailable(exc) from exc
        return LimitState(count < item.amount, item.amount, item.amount - count, start + expiry)

    async def hit_fixed(self, item: RateLimitItem, *ids: str) -> LimitState:
        """A cheaper fixed-window hit (the global per-IP limit); fails closed like `hit`. The
        window figures are read only for a refusal (its headers)."""
        key = self._key(item, ids)
        if self.shared_windows is not None:
            try:
                return await self.shared_windows.hit(key, item)
            except ServiceUnavailable:
                raise
            except Exception as exc:
                raise _unavailable(exc) from exc
        try:
            assert self.memory is not None  # noqa: S101  (no Redis: this process's memory)
            if self.memory.count(key, item.get_expiry()) <= item.amount:
                return LimitState(True, item.amount, 1, 0.0)
            count = await self.storage.get(key)
            reset_at = await self.storage.get_expiry(key)
        except Exception as exc:
            raise _unavailable(exc) from exc
        return LimitState(False, item.amount, item.amount - count, reset_at)

    async def reset(self) -> None:
        """Forget every counter (tests and maintenance)."""
        self._keys.clear()
        if self.shared_windows is not None:
            self.shared_windows.windows.clear()
        if self.redis_windows is not None:
            self.redis_windows.forget()
        await cast(Any, self.storage).reset()

    async def aclose(self) -> None:
        """Stop the background flush (pending global-limit hits are dropped: they only count
        against a limit that expires with its window anyway)."""
        if self.shared_windows is not None:
            await self.shared_windows.aclose()


def _unavailable(exc: Exception) -> ServiceUnavailable:
    # Logged once, where the refusal is rendered (`app_error_response`).
    refusal = RedisUnavailable("The rate-limit store is unavailable.")
    refusal.__cause__ = exc
    return refusal


@functools.lru_cache(maxsize=64)
def parse_limit(text: str) -> RateLimitItem:
    """`10/minute` → a limit item (parsed once per text)."""
    return parse(text)


GLOBAL_LIMIT_EXEMPT = frozenset({"/health", "/ready"})


class GlobalRateLimitMiddleware:
    """The per-IP limit over the whole API (`GLOBAL_RATE_LIMIT`), async and Redis-shared."""

    def __init__(self, app: ASGIApp, *, limit: str) -> None:
        self.app = app
        self.item = parse_limit(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in GLOBAL_LIMIT_EXEMPT:
            await self.app(scope, receive, send)
            return
        runtime = scope["app"].state.runtime
        ctx = current_request()
        try:
            state = await runtime.limiter.hit_fixed(self.item, "global", ctx.ip or "unknown")
        except ServiceUnavailable as exc:
            log.warning("dependency_unavailable", code=exc.code, status=503, path=scope.get("path"))
            await _send_error(send, 503, exc.code, exc.message, ctx.request_id, exc.headers)
            return
        if not state.allowed:
            log.info("rate_limited", scope="ip", path=scope.get("path"))
            await _send_error(
                send,
                429,
                "rate_limited",
                "Too many requests from this address.",
                ctx.request_id,
                state.headers(),
            )
            return
        await self.app(scope, receive, send)


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    headers: dict[str, str],
) -> None:
    body = json.dumps(
        {"error": {"code": code, "message": message, "request_id": request_id}}
    ).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
