"""The compiled endpoint: an endpoint with its enabled policies parsed and its credential
decrypted, as the decision needs it, and the per-process cache of them. Invalidated across
processes through the invalidation bus (topic `endpoint`); a TTL bounds staleness should a
message ever be lost."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cached_property

from limits import RateLimitItem, RateLimitItemPerSecond
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.cache import TtlCache
from app.core.crypto import KeyRing
from app.core.db import set_session_tenant
from app.endpoints import service as endpoints
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
from app.policies.service import policies_of
from app.upstream_secrets.service import decrypt_credential, find_credential


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
        self.cache: TtlCache[CompiledEndpoint | None] = TtlCache()

    def invalidate(self, key: str | None) -> None:
        """Drop one endpoint (`tenant:slug`) or everything."""
        self.cache.invalidate(key)

    async def get(
        self, tenant_id: uuid.UUID, slug: str, *, tenant_text: str | None = None
    ) -> CompiledEndpoint | None:
        """The compiled endpoint, from memory when warm (`tenant_text`: `tenant_id` as text,
        when the caller has it already)."""
        return await self.cache.get_or_load(
            cache_key(tenant_text or tenant_id, slug), lambda: self._load(tenant_id, slug)
        )

    async def _load(self, tenant_id: uuid.UUID, slug: str) -> CompiledEndpoint | None:
        async with self.sessionmaker() as session:
            set_session_tenant(session, tenant_id)
            endpoint = await endpoints.find_by_slug(session, slug)
            if endpoint is None:
                return None
            policies = await policies_of(session, endpoint.id)
            row = await find_credential(session, endpoint.id)
            credential = (row.header, decrypt_credential(self.master, row)) if row else None
            return compile_endpoint(endpoint, policies, credential)
