"""Satellite tokens: bearer JWTs from issuers that tenants trust, verified per RFC 8725.

A token whose `iss` is not Warden's own is looked up in a per-process index of every tenant's
trusted issuers (one cross-tenant query, reloaded after an issuer change or after 60 s). The
candidates are the tenants trusting that `iss` whose audiences intersect the token's `aud`: one
candidate is the tenant; several need `X-Tenant: <slug>`; an `X-Tenant` naming a tenant that does
not trust the issuer is refused. The key is looked up by `kid` in that issuer's keys only, pinned
to an algorithm of the issuer's allow-list that the key itself may verify; `app.core.jose`
checks the signature and the registered claims. Verified tokens are cached (bounded by `exp` and
five minutes), so a warm satellite token costs what a local one does.

A satellite principal's role is the highest Warden role named in its roles claim (default
member), capped at member: an external IdP can never make anyone an admin or owner of Warden.
"""

from __future__ import annotations

import asyncio
import math
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import jose
from app.core.config import Settings
from app.core.emails import normalize_email
from app.core.identity import Principal, Role
from app.core.jose import TokenError, VerificationKey
from app.core.outbound import GuardedTransport
from app.issuers import repository
from app.issuers.jwks import InvalidKeySet, IssuerUnavailable, JwksCache, KeySet
from app.issuers.service import inline_key_set

log = structlog.get_logger("warden.satellite")

INDEX_TTL_SECONDS = 60.0
TOKEN_CACHE_SECONDS = 300.0
TOKEN_CACHE_MAX = 10_000
MAX_PRINCIPAL_ID = 256  # the audit trail's actor id column
SATELLITE_ROLE_CAP = Role.MEMBER
_ROLES_HIGH_TO_LOW = (Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER)

__all__ = ["AmbiguousTenant", "InvalidClaims", "IssuerUnavailable", "SatelliteVerifier"]


class AmbiguousTenant(TokenError):
    """Several tenants trust the token's issuer and audience; `X-Tenant` must name one."""


class InvalidClaims(TokenError):
    """A verified token's identity claims cannot be used as they are (control characters)."""


# Characters no identity may hold: C0/C1 controls and DEL (Cc; CR, LF and NUL split or end a
# header line), lone surrogates (Cs; not encodable), and the line/paragraph separators (Zl, Zp).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


# (claim mapping key, claim read when the mapping names none), as `build_principal` reads them.
_IDENTITY_CLAIMS = (("subject", "sub"), ("email", "email"), ("roles", "roles"))


def _clean(value: str) -> bool:
    return not any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in value)


def check_identity_claims(claims: Mapping[str, Any], mapping: Mapping[str, str]) -> None:
    """Refuse control characters in every claim that becomes part of an identity: the mapped
    subject, email and roles (the subject and email travel on in `X-User-ID`/`X-User-Email`,
    into the audit trail and the logs) and `jti` (a revocation key). Checked once, here, at
    verification: a claim refused here can never reach a header, a log line or a policy."""
    names = [mapping.get(role, default) for role, default in _IDENTITY_CLAIMS]
    values: list[tuple[str, Any]] = [(name, claim_value(claims, name)) for name in names]
    values.append(("jti", claims.get("jti")))
    for name, value in values:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str) and not _clean(item):
                raise InvalidClaims(f"claim {name!r} holds control characters")


@dataclass(frozen=True)
class IssuerConfig:
    """One tenant's trust in one issuer, as verification needs it."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    issuer: str
    audiences: frozenset[str]
    algorithms: frozenset[str]
    claim_mapping: Mapping[str, str]
    jwks_uri: str | None
    inline_keys: KeySet | None


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; a dotted name not present as such walks nested objects."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def mapped_role(value: Any) -> Role:
    """The highest Warden role named in a roles claim (list or space-separated), else member."""
    if isinstance(value, str):
        names = value.split()
    elif isinstance(value, list):
        names = [item for item in value if isinstance(item, str)]
    else:
        names = []
    present = {name.lower() for name in names}
    for role in _ROLES_HIGH_TO_LOW:
        if role.value in present:
            return role
    return Role.MEMBER


def capped_role(role: Role) -> Role:
    """A satellite principal is never more than a member of Warden's admin API."""
    return role if SATELLITE_ROLE_CAP.at_least(role) else SATELLITE_ROLE_CAP


def mapped_email(claims: Mapping[str, Any], name: str) -> str | None:
    """The normalised email, or None (absent, malformed, or marked unverified by the IdP)."""
    value = claim_value(claims, name)
    if not isinstance(value, str) or claims.get("email_verified") is False:
        return None
    try:
        email = normalize_email(value)
    except ValueError:
        return None
    return email if len(email) <= 254 else None


def token_audiences(claims: Mapping[str, Any]) -> frozenset[str]:
    """The token's `aud` as a set (a string or an array of strings)."""
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not values or not all(isinstance(a, str) for a in values):
        raise TokenError("audience missing or malformed")
    return frozenset(values)


def choose_config(
    configs: tuple[IssuerConfig, ...], audiences: frozenset[str], tenant_hint: str | None
) -> IssuerConfig:
    """The one tenant this token speaks for, or a refusal."""
    if tenant_hint is not None:
        named = [c for c in configs if c.tenant_slug == tenant_hint]
        if not named:
            raise TokenError("X-Tenant names a tenant that does not trust this issuer")
        matching = [c for c in named if c.audiences & audiences]
        if not matching:
            raise TokenError("audience mismatch")
        return matching[0]
    trusting = [c for c in configs if c.audiences & audiences]
    if not trusting:
        raise TokenError("audience mismatch")
    if len(trusting) > 1:
        raise AmbiguousTenant("ambiguous tenant")
    return trusting[0]


def build_principal(config: IssuerConfig, claims: Mapping[str, Any]) -> Principal:
    """The principal of verified claims: keyed by (`iss`, subject), role capped at member."""
    check_identity_claims(claims, config.claim_mapping)
    subject = claim_value(claims, config.claim_mapping.get("subject", "sub"))
    if not isinstance(subject, str) or not subject:
        raise TokenError("subject claim missing or not a string")
    principal_id = f"{config.issuer}#{subject}"
    if len(principal_id) > MAX_PRINCIPAL_ID:
        raise TokenError("issuer and subject too long")
    email = mapped_email(claims, config.claim_mapping.get("email", "email"))
    role = capped_role(mapped_role(claim_value(claims, config.claim_mapping.get("roles", "roles"))))
    jti = claims.get("jti")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):  # jose.verify checked it too
        raise TokenError("exp is not a number")
    return Principal(
        kind="satellite",
        id=principal_id,
        tenant_id=config.tenant_id,
        tenant_slug=config.tenant_slug,
        role=role,
        email=email,
        # Policies read the mapped email, not a raw claim the mapping chose to ignore.
        claims={**claims, "email": email},
        # Namespaced so an IdP's jti can never name (and let a logout revoke) a Warden token.
        jti=f"{config.issuer}#{jti}" if isinstance(jti, str) and jti else None,
        expires_at=int(exp),
    )


class IssuerIndex:
    """`iss` → every tenant's trust in it, loaded whole (issuers are few and change rarely)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        ttl: float = INDEX_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.ttl = ttl
        self.clock = clock
        self._by_iss: dict[str, tuple[IssuerConfig, ...]] = {}
        self._inline: dict[tuple[uuid.UUID, datetime], KeySet | None] = {}
        self._loaded_at = -math.inf
        self._generation = 0
        self._lock = asyncio.Lock()

    def known(self, iss: str) -> tuple[IssuerConfig, ...]:
        """What the index holds for `iss` now, without loading."""
        return self._by_iss.get(iss, ())

    def invalidate(self) -> None:
        """Reload before the next lookup."""
        self._generation += 1
        self._loaded_at = -math.inf

    async def lookup(self, iss: str) -> tuple[IssuerConfig, ...]:
        """The configurations of every tenant trusting `iss`."""
        if self.clock() - self._loaded_at >= self.ttl:
            await self._reload()
        return self._by_iss.get(iss, ())

    async def _reload(self) -> None:
        async with self._lock:
            if self.clock() - self._loaded_at < self.ttl:
                return  # another request loaded it while this one waited
            generation = self._generation
            started = self.clock()
            async with self.sessionmaker() as session:
                rows = await repository.all_with_tenant_slugs(session)
                owned = await repository.all_owned_audiences(session)
            by_iss: dict[str, list[IssuerConfig]] = {}
            inline: dict[tuple[uuid.UUID, datetime], KeySet | None] = {}
            for row, slug in rows:
                version = (row.id, row.updated_at)
                try:
                    # Inline keys are parsed once per process (rows are immutable).
                    keys = self._inline[version] if version in self._inline else inline_key_set(row)
                except InvalidKeySet as exc:  # validated on write: only a hand-edited row
                    log.error("issuer_keys_invalid", issuer_id=str(row.id), error=str(exc))
                    continue
                inline[version] = keys
                # Only the audiences this tenant owns count (an (issuer, audience) pair belongs
                # to the tenant that registered it first; see `IssuerAudience`).
                audiences = frozenset(a for a in row.audiences if (row.id, a) in owned)
                if not audiences:
                    continue
                by_iss.setdefault(row.issuer, []).append(
                    IssuerConfig(
                        id=row.id,
                        tenant_id=row.tenant_id,
                        tenant_slug=slug,
                        issuer=row.issuer,
                        audiences=audiences,
                        algorithms=frozenset(row.algorithms) & jose.ASYMMETRIC_ALGORITHMS,
                        claim_mapping=dict(row.claim_mapping),
                        jwks_uri=row.jwks_uri,
                        inline_keys=keys,
                    )
                )
            self._by_iss = {iss: tuple(configs) for iss, configs in by_iss.items()}
            self._inline = inline
            # An invalidation that arrived during the load may not be in it: load again next time.
            self._loaded_at = started if generation == self._generation else -math.inf


class SatelliteTokenCache:
    """(token, X-Tenant) → verified principal, until `exp` and at most five minutes."""

    def __init__(self, max_entries: int = TOKEN_CACHE_MAX) -> None:
        self.max_entries = max_entries
        self.generation = 0
        self._entries: OrderedDict[tuple[str, str | None], tuple[Principal, float, str]] = (
            OrderedDict()
        )

    def get(self, token: str, tenant_hint: str | None) -> Principal | None:
        """A cached principal for a token still within its cache deadline."""
        entry = self._entries.get((token, tenant_hint))
        if entry is None:
            return None
        if entry[1] <= time.time():
            self._entries.pop((token, tenant_hint), None)
            return None
        return entry[0]

    def put(
        self,
        token: str,
        tenant_hint: str | None,
        principal: Principal,
        issuer: str,
        generation: int,
    ) -> None:
        """Remember a verification unless an invalidation happened while it ran."""
        if generation != self.generation:
            return
        deadline = min(float(principal.expires_at or 0), time.time() + TOKEN_CACHE_SECONDS)
        self._entries[(token, tenant_hint)] = (principal, deadline, issuer)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop(self, issuer: str | None) -> None:
        """Forget the tokens of one issuer, or all."""
        self.generation += 1
        if issuer is None:
            self._entries.clear()
            return
        for key in [k for k, v in self._entries.items() if v[2] == issuer]:
            del self._entries[key]


class SatelliteVerifier:
    """Authenticates satellite tokens; one per process (`runtime.satellites`)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.leeway = settings.jwt_leeway_seconds
        self.index = IssuerIndex(sessionmaker)
        # Its own small pool: JWKS fetches never queue behind upstream forwarding.
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            # Every connection passes the outbound guard on the address it is opened to.
            transport=GuardedTransport(
                settings.upstream_allowed_hosts, max_connections=20, max_keepalive_connections=10
            ),
        )
        self.jwks = JwksCache(
            self.http,
            allowed_hosts=settings.upstream_allowed_hosts,
            timeout=settings.jwks_timeout_seconds,
            refetch_floor=settings.jwks_refetch_floor_seconds,
            stale_for=settings.jwks_stale_seconds,
        )
        self.tokens = SatelliteTokenCache()

    async def aclose(self) -> None:
        """Release the JWKS client."""
        if self._owns_http:
            await self.http.aclose()

    def invalidate(self, issuer: str | None) -> None:
        """An issuer changed (bus topic `issuer`): drop its index entry, keys and tokens."""
        if issuer is None:
            self.jwks.forget(None)
        else:
            for config in self.index.known(issuer):
                if config.jwks_uri is not None:
                    self.jwks.forget(config.jwks_uri)
        self.index.invalidate()
        self.tokens.drop(issuer)

    async def authenticate(self, parsed: jose.ParsedToken, tenant_hint: str | None) -> Principal:
        """Verify a parsed satellite token; every failure is a `TokenError`."""
        cached = self.tokens.get(parsed.raw, tenant_hint)
        if cached is not None:
            return cached
        generation = self.tokens.generation
        try:
            principal, issuer = await self._verify(parsed, tenant_hint)
        except TokenError:
            raise
        except Exception as exc:  # hostile input must never become a 500
            log.error("satellite_verification_crashed", error=type(exc).__name__)
            raise TokenError("verification failed") from exc
        self.tokens.put(parsed.raw, tenant_hint, principal, issuer, generation)
        return principal

    async def _verify(
        self, parsed: jose.ParsedToken, tenant_hint: str | None
    ) -> tuple[Principal, str]:
        iss = parsed.claims.get("iss")
        if not isinstance(iss, str) or not iss or len(iss) > 512:
            raise TokenError("untrusted issuer")
        configs = await self.index.lookup(iss)
        if not configs:
            raise TokenError("untrusted issuer")
        config = choose_config(configs, token_audiences(parsed.claims), tenant_hint)
        alg = parsed.header["alg"]
        if alg not in config.algorithms:
            raise TokenError("algorithm not allowed for this issuer")
        key = await self._key(config, parsed.header.get("kid"), alg)
        claims = jose.verify(
            parsed, key, issuer=config.issuer, audiences=config.audiences, leeway=self.leeway
        )
        return build_principal(config, claims), config.issuer

    async def _key(self, config: IssuerConfig, kid: str | None, alg: str) -> VerificationKey:
        if config.inline_keys is not None:
            key = config.inline_keys.select(kid, alg)
        elif config.jwks_uri is not None:
            key = (await self.jwks.get(config.jwks_uri)).select(kid, alg)
            if key is None:  # maybe the IdP rotated: refetch (at most once per floor)
                key = (await self.jwks.refresh_for_kid(config.jwks_uri)).select(kid, alg)
        else:
            raise TokenError("issuer has no keys")
        if key is None:
            raise TokenError("unknown kid")
        return key
