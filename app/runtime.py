"""The per-process state built in the app's lifespan: one of each, shared by every request."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.service import AuditWriter
from app.auth.keys import SigningKeyring
from app.auth.revocation import RevocationStore
from app.authz.bindings import BindingIndex
from app.authz.cache import ApiKeyCache, EndpointCache
from app.authz.upstream import NoCookies, UpstreamTransport
from app.core.config import Settings
from app.core.crypto import KeyRing
from app.core.db import make_engine
from app.core.invalidation import InvalidationBus
from app.core.ratelimit import AsyncLimiter
from app.core.redis import make_redis
from app.issuers.satellite import SatelliteVerifier
from app.sessions.store import SessionStore

log = structlog.get_logger("warden.runtime")
KEY_RELOAD_SECONDS = 60


@dataclass
class Runtime:
    """Everything long-lived a request may need."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    master: KeyRing
    redis: Redis | None
    keyring: SigningKeyring
    revocations: RevocationStore
    limiter: AsyncLimiter
    audit: AuditWriter
    bus: InvalidationBus
    http: httpx.AsyncClient
    endpoints: EndpointCache
    apikeys: ApiKeyCache
    bindings: BindingIndex
    satellites: SatelliteVerifier
    sessions: SessionStore
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _used_keys: set[uuid.UUID] = field(default_factory=set)

    def touch_api_key(self, key_id: uuid.UUID) -> None:
        """Note a key's use; `last_used_at` is written in the background, not per request."""
        self._used_keys.add(key_id)

    async def flush_key_usage(self) -> None:
        """Write `last_used_at` for the keys used since the last flush."""
        if not self._used_keys:
            return
        used, self._used_keys = self._used_keys, set()
        from app.apikeys.service import mark_used

        await mark_used(self.sessionmaker, used)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Create (not yet start) the runtime for these settings."""
        engine = make_engine(settings.database_url, settings)
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        master = KeyRing.from_settings(settings.warden_master_key)
        redis = make_redis(settings)
        publish_for = timedelta(
            seconds=settings.access_token_ttl_seconds + settings.jwt_leeway_seconds + 60
        )
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            master=master,
            redis=redis,
            keyring=SigningKeyring(sessionmaker, master, publish_for),
            revocations=RevocationStore(redis),
            limiter=AsyncLimiter(settings.redis_url, redis, timeout=settings.redis_timeout_seconds),
            audit=AuditWriter(sessionmaker, settings.audit_flush_interval_ms),
            bus=InvalidationBus(redis),
            http=httpx.AsyncClient(
                timeout=httpx.Timeout(settings.upstream_timeout_seconds),
                follow_redirects=False,
                transport=UpstreamTransport(max_connections=settings.upstream_max_connections),
                trust_env=False,
                cookies=NoCookies(),
            ),
            endpoints=EndpointCache(sessionmaker, master),
            apikeys=ApiKeyCache(sessionmaker),
            bindings=BindingIndex(sessionmaker),
            satellites=SatelliteVerifier(sessionmaker, settings),
            sessions=SessionStore(sessionmaker, redis, settings),
        )

    async def start(self) -> None:
        """Load keys and revocations, start background tasks."""
        await self.keyring.load()
        await self.revocations.load(self.sessionmaker)
        self.bus.register("endpoint", self.endpoints.invalidate)
        self.bus.register("endpoint", self.bindings.invalidate)
        self.bus.register("apikey", self.apikeys.invalidate)
        self.bus.register("issuer", self.satellites.invalidate)
        self.revocations.attach(self.bus)
        self.bus.start()
        self.audit.start()
        self._tasks.append(asyncio.create_task(self._reload_keys(), name="key-reload"))

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(KEY_RELOAD_SECONDS)
            try:
                await self.keyring.load(create_if_missing=False)
                await self.flush_key_usage()
            except Exception as exc:  # a transient database error must not kill the loop
                log.error("background_refresh_failed", error=repr(exc))

    async def stop(self) -> None:
        """Flush the audit queue and release connections."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.bus.stop()
        try:
            await self.flush_key_usage()
        except Exception as exc:
            log.error("key_usage_flush_failed", error=repr(exc))
        await self.audit.stop()
        await self.limiter.aclose()
        await self.revocations.aclose()
        await self.http.aclose()
        await self.satellites.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


def settle_heap() -> None:
    """Move everything alive after start-up (modules, models, caches) out of the garbage
    collector's reach: a full collection then walks the request garbage, not the ~200k
    long-lived objects, which had stalled the event loop for ~100 ms each."""
    gc.collect()
    gc.freeze()


def runtime_lifespan(
    settings: Settings, shared: Runtime | None = None
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """An app lifespan that puts a runtime on `app.state`: its own (built, started, stopped
    here), or a shared one whose owner (`warden serve`) manages its lifecycle."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if shared is not None:
            app.state.runtime = shared
            yield
            return
        runtime = Runtime.build(settings)
        await runtime.start()
        app.state.runtime = runtime
        settle_heap()
        try:
            yield
        finally:
            await runtime.stop()

    return lifespan
