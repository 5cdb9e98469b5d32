"""Trusted issuers: validated on write, audited in the transaction, invalidated everywhere after
commit (the satellite index, cached JWKS and cached verified tokens of that `iss`)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import record
from app.core.errors import Conflict, Unprocessable
from app.core.identity import Principal
from app.core.invalidation import InvalidationBus
from app.core.outbound import OutboundRefused, check_outbound_url
from app.core.pagination import PageParams
from app.issuers import repository
from app.issuers.jwks import InvalidKeySet, KeySet, keys_from_pems, parse_jwks
from app.issuers.models import IssuerAudience, TrustedIssuer, audience_key
from app.issuers.schemas import IssuerCreate, IssuerPublic

ISSUER_TOPIC = "issuer"
MAX_ISSUERS_PER_TENANT = 100


def inline_key_set(row: TrustedIssuer) -> KeySet | None:
    """The parsed inline keys of an issuer (None when it uses a `jwks_uri`)."""
    if row.jwks is not None:
        return parse_jwks(row.jwks, strict=True, algorithms=row.algorithms)
    if row.public_keys_pem is not None:
        return keys_from_pems(row.public_keys_pem, row.algorithms)
    return None


def public_view(row: TrustedIssuer) -> IssuerPublic:
    """The API view of an issuer, with the ids of its inline keys."""
    view = IssuerPublic.model_validate(row)
    try:
        keys = inline_key_set(row)
    except InvalidKeySet:  # validated on write; never let a display problem become a 500
        keys = None
    view.key_ids = keys.kids if keys is not None else None
    return view


def invalidate_after_commit(session: AsyncSession, bus: InvalidationBus, issuer: str) -> None:
    """Drop what every process caches for this `iss` once the change is committed."""
    bus.publish_after_commit(session, ISSUER_TOPIC, issuer)


@dataclass(frozen=True)
class IssuerRules:
    """What an issuer registration is checked against: Warden's own `iss` (never trusted as a
    satellite) and the hosts that may be private for `jwks_uri`."""

    own_issuer: str
    allowed_hosts: Collection[str]


async def all_issuers(session: AsyncSession) -> list[TrustedIssuer]:
    """Every issuer the session's tenant trusts."""
    return await repository.all_of_tenant(session)


async def _checked_source(rules: IssuerRules, data: IssuerCreate) -> None:
    if data.issuer == rules.own_issuer:
        raise Unprocessable("issuer: this is Warden's own issuer", code="issuer_refused")
    if data.jwks_uri is not None:
        try:
            await check_outbound_url(data.jwks_uri, rules.allowed_hosts)
        except OutboundRefused as exc:
            raise Unprocessable(f"jwks_uri: {exc}", code="jwks_uri_refused") from exc
        return
    try:
        if data.jwks is not None:
            parse_jwks(data.jwks, strict=True, algorithms=data.algorithms)
        elif data.public_keys_pem is not None:
            keys_from_pems(data.public_keys_pem, data.algorithms)
    except InvalidKeySet as exc:
        raise Unprocessable(str(exc), code="invalid_key") from exc


def _issuer_taken() -> Conflict:
    return Conflict(
        "Another tenant already trusts this issuer for one of these audiences; an (issuer,"
        " audience) pair belongs to one tenant.",
        code="issuer_taken",
    )


async def list_issuers(
    session: AsyncSession, params: PageParams
) -> tuple[list[TrustedIssuer], str | None]:
    """A page of the tenant's trusted issuers."""
    return await repository.page(session, params)


async def create_issuer(
    session: AsyncSession,
    bus: InvalidationBus,
    rules: IssuerRules,
    principal: Principal,
    data: IssuerCreate,
) -> TrustedIssuer:
    """`POST /issuers`: keys parsed now, so a bad key is a 422 today, not a 401 later."""
    await _checked_source(rules, data)
    if await repository.find_by_issuer(session, data.issuer) is not None:
        raise Conflict("This issuer is already trusted.", code="issuer_exists")
    if await repository.count(session) >= MAX_ISSUERS_PER_TENANT:
        raise Conflict("Too many trusted issuers.", code="too_many")
    keys = {audience_key(data.issuer, audience): audience for audience in data.audiences}
    owners = await repository.audience_owners(session, list(keys))
    if any(owner != principal.tenant_id for owner in owners.values()):
        raise _issuer_taken()
    row = TrustedIssuer(
        tenant_id=principal.tenant_id,
        issuer=data.issuer,
        jwks_uri=data.jwks_uri,
        jwks=data.jwks,
        public_keys_pem=data.public_keys_pem,
        audiences=list(data.audiences),
        algorithms=list(data.algorithms),
        claim_mapping=data.claim_mapping.model_dump(),
    )
    session.add(row)
    try:
        await session.flush()
        # The unique pair key settles a race the check above cannot see: of two tenants
        # registering one (issuer, audience) at once, the second flush fails.
        session.add_all(
            IssuerAudience(
                tenant_id=principal.tenant_id,
                issuer_id=row.id,
                key=key,
                issuer=row.issuer,
                audience=audience,
            )
            for key, audience in keys.items()
        )
        await session.flush()
    except IntegrityError as exc:
        if "issuer_audiences" in str(exc.orig):
            raise _issuer_taken() from exc
        # a concurrent create of the same issuer in this tenant
        raise Conflict("This issuer is already trusted.", code="issuer_exists") from exc
    source = "jwks_uri" if data.jwks_uri else ("jwks" if data.jwks else "public_keys_pem")
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="issuer.created",
        actor=principal.actor,
        target_type="issuer",
        target_id=str(row.id),
        details={
            "issuer": row.issuer,
            "key_source": source,
            "audiences": row.audiences,
            "algorithms": row.algorithms,
        },
    )
    invalidate_after_commit(session, bus, row.issuer)
    return row


async def get_issuer(session: AsyncSession, issuer_id: uuid.UUID) -> TrustedIssuer:
    """`GET /issuers/{id}`."""
    return await repository.get(session, issuer_id)


async def delete_issuer(
    session: AsyncSession, bus: InvalidationBus, principal: Principal, issuer_id: uuid.UUID
) -> None:
    """`DELETE /issuers/{id}`: its tokens are refused in every process from the commit on."""
    row = await repository.get(session, issuer_id)
    issuer = row.issuer
    await session.delete(row)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="issuer.deleted",
        actor=principal.actor,
        target_type="issuer",
        target_id=str(issuer_id),
        details={"issuer": issuer},
    )
    invalidate_after_commit(session, bus, issuer)
