"""Gateway bindings: which endpoint answers for a forwarded host and path.

An endpoint with a `host` (and optionally a `path_prefix`) is bound to that part of the web.
Gateways ask `/authz/forward` about any request they see, without naming a tenant, so the index
is across tenants: forwarded host → bindings, loaded from the database on first use and kept
per process. Any endpoint change (topic `endpoint`) may move a host, so it drops the whole index;
a TTL bounds staleness should an invalidation ever be lost.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.authz.compiled import _Cache  # the same TTL + generation-checked cache as endpoints
from app.core.db import SKIP_TENANT_FILTER
from app.endpoints.models import Endpoint
from app.tenants.models import Tenant

log = structlog.get_logger("warden.bindings")
_NAME = re.compile(r"\A[a-z0-9_]([a-z0-9_.-]{0,252})\Z")
_BRACKETED = re.compile(r"\A\[[0-9a-f:.]{2,45}\]\Z")


@dataclass(frozen=True)
class Binding:
    """One endpoint's claim on a host (and a path prefix under it)."""

    tenant_id: uuid.UUID
    tenant_slug: str
    slug: str
    host: str
    prefix: str  # normalised; "" binds the whole host
    rank: tuple[float, str]  # (created_at, id): the earliest binding of a host owns it


def split_host(raw: str | None) -> tuple[str, str | None] | None:
    """`Example.COM.:8080` → ("example.com", "8080"); None when it is not a plausible host."""
    if not raw:
        return None
    value = raw.split(",")[0].strip().lower()
    name, port = value, None
    head, sep, tail = value.rpartition(":")
    if sep and tail.isascii() and tail.isdigit() and (head.endswith("]") or "[" not in head):
        name, port = head, tail
        if len(port) > 5 or int(port) > 65535:
            return None
    name = name.rstrip(".")
    if not (_NAME.match(name) or _BRACKETED.match(name)):
        return None
    return name, port


def normalize_path(raw: str | None, *, decode: bool = True) -> str:
    """The path a decision is about: query dropped, percent-decoded once (unless the server
    already did), dot segments resolved and empty segments dropped, so `/health/../admin` and
    `/health%2F..%2Fadmin` are `/admin` and can never pass for an exempt `/health`."""
    if not raw:
        return "/"
    value = raw.split("?", 1)[0].split("#", 1)[0]
    if not value.startswith("/"):
        value = urlsplit(value).path if "://" in value else "/" + value
    if decode:
        value = unquote(value)
    segments: list[str] = []
    for segment in value.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def prefix_of(path_prefix: str | None) -> str:
    """A binding's prefix in the form `covers` expects ("" for none or `/`)."""
    return "" if not path_prefix else normalize_path(path_prefix, decode=False).rstrip("/")


def covers(prefix: str, path: str) -> bool:
    """Segment-prefix match: `/api` covers `/api` and `/api/x`, never `/apix`."""
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _specificity(binding: Binding) -> tuple[int, bool]:
    return len(binding.prefix), ":" in binding.host


class BindingIndex:
    """Forwarded host → the bindings of the tenant that owns it (per process)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker
        self.cache: _Cache[tuple[Binding, ...]] = _Cache()

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
        hit, value = self.cache.get(key)
        if hit and value is not None:
            return value
        generation = self.cache.generation
        value = await self._load(name, port)
        self.cache.put(key, value, generation)
        return value

    async def _load(self, name: str, port: str | None) -> tuple[Binding, ...]:
        hosts = [name, f"{name}:{port}"] if port else [name]
        stmt = (
            select(  # type: ignore[call-overload]
                Endpoint.id,
                Endpoint.tenant_id,
                Endpoint.slug,
                Endpoint.host,
                Endpoint.path_prefix,
                Endpoint.created_at,
                Tenant.slug.label("tenant_slug"),  # type: ignore[attr-defined]
            )
            .join(Tenant, Tenant.id == Endpoint.tenant_id)
            .where(Endpoint.host.in_(hosts))  # type: ignore[union-attr]
            # Across tenants on purpose: a gateway names a host, not a tenant; the caller then
            # requires the principal's tenant to own the binding it gets.
            .execution_options(**{SKIP_TENANT_FILTER: True})
        )
        async with self.sessionmaker() as session:
            rows = (await session.execute(stmt)).all()
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
