"""Per-process caches of what the hot path needs: endpoints compiled with their policies and
credential, and resolved API keys. Invalidated across processes through the invalidation bus;
a TTL bounds staleness should a message ever be lost."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Generic, TypeVar

from limits import RateLimitItem, RateLimitItemPerSecond
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.apikeys.service import ResolvedKey, resolve_key
from app.core.crypto import KeyRing
from app.core.db import set_session_tenant
from app.endpoints.models import Endpoint
from app.endpoints.service import cache_key
from app.policies.engine import (
    AccessConfig,
    AccessPolicy,
    RateLimitConfig,
    RulePolicy,
    parse_rule_config,
    reads_clock,
)
from app.policies.models import Policy
from app.upstream_secrets.service import decrypt_credential, find_credential

V = TypeVar("V")
TTL_SECONDS = 60.0
MAX_ENTRIES = 50_000


@dataclass(frozen=True)
class RateLimitRule:
    """A compiled rate-limit policy."""

    policy_id: str
    item: RateLimitItem
    scope: str


@dataclass(frozen=True)
class CompiledEndpoint:
    """An endpoint with everything a decision needs, parsed once."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    slug: str
    upstream_url: str | None
    host: str | None
    path_prefix: str | None
    exempt_paths: tuple[str, ...]
    require_host_audience: bool
    is_active: bool
    access: tuple[AccessPolicy, ...]
    rules: tuple[RulePolicy, ...]
    limits: tuple[RateLimitRule, ...]
    credential: tuple[str, str] | None

    @cached_property
    def id_text(self) -> str:
        """`str(id)`, made once: counter keys and audit rows need it on every request."""
        return str(self.id)

    @cached_property
    def reads_clock(self) -> bool:
        """Whether a rule policy reads `args.time` (its decisions cannot be remembered)."""
        return any(reads_clock(rule.node) for rule in self.rules)

    @cached_property
    def tenant_text(self) -> str:
        """`str(tenant_id)`, made once."""
        return str(self.tenant_id)


class _Cache(Generic[V]):
    """A dict with TTL and generation-checked fills (a fill racing an invalidation is dropped)."""

    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = ttl
        self.entries: dict[str, tuple[float, V]] = {}
        self.generation = 0

    def get(self, key: str) -> tuple[bool, V | None]:
        entry = self.entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return False, None
        return True, entry[1]

    def put(self, key: str, value: V, generation: int) -> None:
        if generation == self.generation:
            if len(self.entries) >= MAX_ENTRIES:  # bounded: random keys cannot grow it forever
                self.entries.clear()
            self.entries[key] = (time.monotonic(), value)

    def invalidate(self, key: str | None) -> None:
        self.generation += 1
        if key is None:
            self.entries.clear()
        else:
            self.entries.pop(key, None)


def compile_endpoint(
    endpoint: Endpoint, policies: list[Policy], credential: tuple[str, str] | None
) -> CompiledEndpoint:
    """Parse an endpoint's enabled policies into evaluable objects."""
    ordered = sorted((p for p in policies if p.enabled), key=lambda p: (-p.priority, str(p.id)))
    access, rules, limits = [], [], []
    for policy in ordered:
        pid = str(policy.id)
        if policy.policy_type == "access":
            config = AccessConfig.model_validate(policy.configuration)
            access.append(AccessPolicy(id=pid, config=config, priority=policy.priority))
        elif policy.policy_type == "rule":
            node = parse_rule_config(policy.configuration)
            rules.append(RulePolicy(id=pid, node=node, priority=policy.priority))
        elif policy.policy_type == "rate_limit":
            rl = RateLimitConfig.model_validate(policy.configuration)
            item = RateLimitItemPerSecond(rl.requests_per_period, rl.period_seconds)
            limits.append(RateLimitRule(policy_id=pid, item=item, scope=rl.scope))
    return CompiledEndpoint(
        id=endpoint.id,
        tenant_id=endpoint.tenant_id,
        slug=endpoint.slug,
        upstream_url=endpoint.upstream_url,
        host=endpoint.host,
        path_prefix=endpoint.path_prefix,
        exempt_paths=tuple(endpoint.exempt_paths),
        require_host_audience=endpoint.require_host_audience,
        is_active=endpoint.is_active,
        access=tuple(access),
        rules=tuple(rules),
        limits=tuple(limits),
        credential=credential,
    )


class EndpointCache:
    """(tenant, slug) → compiled endpoint, or None for "no such endpoint"."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], master: KeyRing) -> None:
        self.sessionmaker = sessionmaker
        self.master = master
        self.cache: _Cache[CompiledEndpoint | None] = _Cache()

    def invalidate(self, key: str | None) -> None:
        """Drop one endpoint (`tenant:slug`) or everything."""
        self.cache.invalidate(key)

    async def get(self, tenant_id: uuid.UUID, slug: str) -> CompiledEndpoint | None:
        """The compiled endpoint, from memory when warm."""
        key = cache_key(tenant_id, slug)
        hit, value = self.cache.get(key)
        if hit:
            return value
        generation = self.cache.generation
        value = await self._load(tenant_id, slug)
        self.cache.put(key, value, generation)
        return value

    async def _load(self, tenant_id: uuid.UUID, slug: str) -> CompiledEndpoint | None:
        async with self.sessionmaker() as session:
            set_session_tenant(session, tenant_id)
            endpoint = (
                await session.execute(select(Endpoint).where(Endpoint.slug == slug))  # type: ignore[arg-type]
            ).scalar_one_or_none()
            if endpoint is None:
                return None
            policies = list(
                (
                    await session.execute(
                        select(Policy).where(Policy.endpoint_id == endpoint.id)  # type: ignore[arg-type]
                    )
                ).scalars()
            )
            row = await find_credential(session, endpoint.id)
            credential = (row.header, decrypt_credential(self.master, row)) if row else None
            return compile_endpoint(endpoint, policies, credential)


class ApiKeyCache:
    """key hash → resolved key (or None: unknown key, also cached briefly)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker
        self.cache: _Cache[ResolvedKey | None] = _Cache()

    def invalidate(self, key: str | None) -> None:
        """Drop one key hash or everything."""
        self.cache.invalidate(key)

    async def get(self, key_hash: str, presented: str) -> ResolvedKey | None:
        """The key behind a presented secret."""
        hit, value = self.cache.get(key_hash)
        if hit:
            return value
        generation = self.cache.generation
        async with self.sessionmaker() as session:
            value = await resolve_key(session, presented)
        self.cache.put(key_hash, value, generation)
        return value
