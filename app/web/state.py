"""The per-process state built in the app's lifespan: one of each, shared by every request.

Only the web layer and the composition roots see this aggregate; every service receives the one
or two collaborators it uses (the routes pick them out of it)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request

from app.apikeys.cache import ApiKeyCache
from app.audit.service import AuditWriter
from app.authz.bindings import Binding, BindingIndex
from app.authz.compiled import EndpointCache
from app.authz.decision import Decider
from app.authz.gateway import Gateway
from app.authz.pipeline import DecisionPipeline
from app.authz.relay import Relay
from app.authz.upstream import UpstreamTransport
from app.browser_sessions import service as browser_sessions
from app.browser_sessions.oidc import OidcFlow, refresh_expiring
from app.browser_sessions.service import BrowserSessions
from app.core.config import Settings
from app.core.crypto import KeyRing
from app.core.db import make_engine
from app.core.identity import Principal
from app.core.invalidation import InvalidationBus
from app.core.outbound import GuardedBackend
from app.core.ratelimit import AsyncLimiter
from app.core.redis import make_redis
from app.credentials.browser import SessionStore
from app.credentials.revocation import RevocationStore
from app.credentials.signing import SigningKeyring
from app.credentials.tokens import LocalTokens
from app.identity_providers.discovery import ProviderClient
from app.identity_providers.service import ProviderRules, prune_expired
from app.issuers.satellite import SatelliteVerifier
from app.issuers.service import IssuerRules
from app.tenants.schemas import MAX_ACCESS_TTL_SECONDS
from app.users.service import session_holder_loader
from app.web.authenticate import Authenticator, ExchangeGuard, Mode

log = structlog.get_logger("warden.runtime")
KEY_RELOAD_SECONDS = 60


@dataclass
class Runtime:
    """Everything long-lived a request may need."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    master_keys: KeyRing  # the master keys wrapping signing keys and upstream credentials
    redis: Redis | None
    signing_keys: SigningKeyring  # Warden's own token-signing keys
    revocations: RevocationStore
    limiter: AsyncLimiter
    audit: AuditWriter
    bus: InvalidationBus
    upstream: UpstreamTransport  # the forwarding pool (the relay's)
    endpoints: EndpointCache
    apikeys: ApiKeyCache
    bindings: BindingIndex
    satellites: SatelliteVerifier
    browser_store: SessionStore  # browser sessions (not database sessions)
    tokens: LocalTokens
    pipeline: DecisionPipeline
    relay: Relay
    issuer_rules: IssuerRules
    browser: BrowserSessions = field(init=False)
    provider_rules: ProviderRules = field(init=False)
    oidc: OidcFlow = field(init=False)
    authenticator: Authenticator = field(init=False)
    gateway: Gateway = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Built from the state itself: the authenticator reads the credential stores, and the
        # gateway decides with the authenticator in its gateway mode.
        browser = self.browser = BrowserSessions(
            store=self.browser_store,
            revocations=self.revocations,
            tokens=self.tokens,
            limiter=self.limiter,
            audit=self.audit,
            settings=self.settings,
        )
        # Identity providers talk through the satellites' guarded client and share their JWKS
        # cache: one place fetches and caches an IdP's keys.
        self.provider_rules = ProviderRules(
            master=self.master_keys,
            client=ProviderClient(
                http=self.satellites.http,
                jwks=self.satellites.jwks,
                allowed_hosts=tuple(self.settings.upstream_allowed_hosts),
                timeout=self.settings.jwks_timeout_seconds,
            ),
            public_url=self.settings.public_url,
        )
        self.oidc = OidcFlow(browser=browser, rules=self.provider_rules)
        self.authenticator = Authenticator(
            settings=self.settings,
            audit=self.audit,
            apikeys=self.apikeys,
            satellites=self.satellites,
            revocations=self.revocations,
            verify_local=self.tokens.verify,
            cookie=lambda cookie, method, headers: browser_sessions.authenticate_cookie(
                browser, cookie, method, headers
            ),
            exchange=ExchangeGuard(
                check_client_certificate=lambda headers: browser_sessions.check_client_certificate(
                    browser, headers
                ),
                refused=lambda reason: browser_sessions.service_key_refused(browser, reason),
                require_scope=lambda caller: browser_sessions.require_exchange_scope(
                    browser, caller
                ),
            ),
        )

        async def authenticate_for_binding(request: Request, binding: Binding) -> Principal:
            return await self.authenticator.authenticate(
                request, Mode.GATEWAY, tenant_hint=binding.tenant_slug
            )

        self.gateway = Gateway(
            bindings=self.bindings,
            endpoints=self.endpoints,
            pipeline=self.pipeline,
            authenticate=authenticate_for_binding,
            identity_headers=self.settings.forward_identity_headers,
        )

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Create (not yet start) the runtime for these settings."""
        engine = make_engine(settings.database_url, settings)
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        master_keys = KeyRing.from_settings(settings.warden_master_key)
        redis = make_redis(settings)
        publish_for = timedelta(
            seconds=settings.access_token_ttl_seconds + settings.jwt_leeway_seconds + 60
        )
        limiter = AsyncLimiter(settings.redis_url, redis, timeout=settings.redis_timeout_seconds)
        signing_keys = SigningKeyring(sessionmaker, master_keys, publish_for)
        revocations = RevocationStore(
            sessionmaker,
            redis,
            # A tenant may choose a longer lifetime than the server's: a user's or tenant's
            # revocation must outlive the longest token any tenant can be issued.
            token_lifetime=timedelta(
                seconds=max(settings.access_token_ttl_seconds, MAX_ACCESS_TTL_SECONDS)
            ),
            leeway=timedelta(seconds=settings.jwt_leeway_seconds),
        )
        audit = AuditWriter(sessionmaker, settings.audit_flush_interval_ms)
        upstream = UpstreamTransport(
            max_connections=settings.upstream_max_connections,
            max_connections_per_origin=settings.upstream_max_connections_per_origin,
            deadline_seconds=settings.upstream_timeout_seconds,
            receive_buffer=settings.upstream_receive_buffer_bytes,
            network_backend=GuardedBackend(settings.upstream_allowed_hosts),
        )
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            master_keys=master_keys,
            redis=redis,
            signing_keys=signing_keys,
            revocations=revocations,
            limiter=limiter,
            audit=audit,
            bus=InvalidationBus(redis),
            upstream=upstream,
            endpoints=EndpointCache(sessionmaker, master_keys),
            apikeys=ApiKeyCache(sessionmaker, settings.api_key_miss_budget),
            bindings=BindingIndex(sessionmaker),
            satellites=SatelliteVerifier(sessionmaker, settings),
            browser_store=SessionStore(sessionmaker, redis, session_holder_loader(settings)),
            tokens=LocalTokens(signing_keys, settings),
            pipeline=DecisionPipeline(Decider(), limiter, audit),
            relay=Relay(
                upstream,
                httpx.Timeout(settings.upstream_timeout_seconds),
                settings.upstream_allowed_hosts,
            ),
            issuer_rules=IssuerRules(settings.issuer, settings.upstream_allowed_hosts),
        )

    async def start(self) -> None:
        """Load keys and revocations, start background tasks."""
        await self.signing_keys.load()
        await self.revocations.load()
        self.bus.register("endpoint", self.endpoints.invalidate)
        self.bus.register("endpoint", self.bindings.invalidate)
        self.bus.register("apikey", self.apikeys.invalidate)
        self.bus.register("issuer", self.satellites.invalidate)
        self.revocations.attach(self.bus)
        self.bus.start()
        self.audit.start()
        self._tasks.append(asyncio.create_task(self._reload_keys(), name="key-reload"))
        self._tasks.append(
            asyncio.create_task(self._refresh_provider_tokens(), name="idp-token-refresh")
        )

    async def _refresh_provider_tokens(self) -> None:
        # Its own task: a slow identity provider must not hold up key reloads.
        while True:
            await asyncio.sleep(KEY_RELOAD_SECONDS)
            try:
                await refresh_expiring(self.sessionmaker, self.oidc)
            except Exception as exc:  # a transient database error must not kill the loop
                log.error("idp_token_refresh_failed", error=repr(exc))

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(KEY_RELOAD_SECONDS)
            try:
                await self.signing_keys.load(create_if_missing=False)
                await self.revocations.prune()
                await prune_expired(self.sessionmaker)
                await self.apikeys.flush_usage()
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
            await self.apikeys.flush_usage()
        except Exception as exc:
            log.error("key_usage_flush_failed", error=repr(exc))
        await self.audit.stop()
        await self.limiter.aclose()
        await self.revocations.aclose()
        await self.upstream.aclose()
        await self.satellites.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()
