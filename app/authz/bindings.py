"""Gateway bindings: which endpoint answers for a forwarded host and path.

An endpoint with a `host` (and optionally a `path_prefix`) is bound to that part of the web.
Gateways ask `/authz/forward` about any request they see, without naming a tenant, so the index
is across tenants: forwarded host → bindings, loaded from the database on first use and kept
per process. Any endpoint change (topic `endpoint`) may move a host, so it drops the whole index;
a TTL bounds staleness should an invalidation ever be lost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.cache import TtlCache
from app.core.hosts import covers, prefix_of, split_host
from app.endpoints import service as endpoints

log = structlog.get_logger("warden.bindings")


@dataclass(frozen=True)
class Binding:
    """One endpoint's claim on a host (and a path prefix under it)."""

    tenant_id: uuid.UUID
    tenant_slug: str
    slug: str
    host: str
    prefix: str  # normalised; "" binds the whole host
    rank: tuple[float, str]  # (created_at, id): the earliest binding of a host owns it


def _specificity(binding: Binding) -> tuple[int, bool]:
    return len(binding.prefix), ":" in binding.host


class BindingIndex:
    """Forwarded host → the bindings of the tenant that owns it (per process)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker
        self.cache: TtlCache[tuple[Binding, ...]] = TtlCache()

    def invalidate(self, key: str | None) -> None:
        """Any endpoint change drops every host: the key names the endpoint, not its old host."""
        self.cache.invalidate(None)

    async def resolve(self, forwarded_host: str | None, path: str) -> Binding | None:
        """The binding for a host and a normalised path: longest covering prefix wins, and a
        binding naming the port beats one that does not."""
        parsed = split_host(forwarded_host)
        if parsed is None:
            return None
        bindings = await self._bindings(*parsed)
        best: Binding | None = None
        for binding in bindings:  # earliest first, so among equals the oldest binding stays
            if covers(binding.prefix, path) and (
                best is None or _specificity(binding) > _specificity(best)
            ):
                best = binding
        return best

    async def _bindings(self, name: str, port: str | None) -> tuple[Binding, ...]:
        key = f"{name}:{port}" if port else name
        return await self.cache.get_or_load(key, lambda: self._load(name, port))

    async def _load(self, name: str, port: str | None) -> tuple[Binding, ...]:
        hosts = [name, f"{name}:{port}"] if port else [name]
        async with self.sessionmaker() as session:
            rows = await endpoints.bound_to_hosts(session, hosts)
        found = [
            Binding(
                tenant_id=row.tenant_id,
                tenant_slug=row.tenant_slug,
                slug=row.slug,
                host=row.host,
                prefix=prefix_of(row.path_prefix),
                rank=(row.created_at.timestamp(), str(row.id)),
            )
            for row in rows
        ]
        if not found:
            return ()
        # A host belongs to the tenant that bound it first. Without this, any tenant could bind
        # another's host (or a longer prefix under it) and have its own tokens open it.
        owner = min(found, key=lambda b: b.rank).tenant_id
        kept = tuple(sorted((b for b in found if b.tenant_id == owner), key=lambda b: b.rank))
        if len(kept) != len(found):
            log.warning(
                "host_bound_by_several_tenants",
                host=name,
                owner=str(owner),
                ignored=sorted({str(b.tenant_id) for b in found if b.tenant_id != owner}),
            )
        return kept
