"""Upstream credentials: encrypted before storage, write-only through the API, rotatable."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from pydantic import StringConstraints, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import record
from app.core.crypto import KeyRing
from app.core.db import SKIP_TENANT_FILTER
from app.core.errors import NotFound
from app.core.identity import Principal
from app.core.invalidation import InvalidationBus
from app.core.schemas import StrictModel
from app.core.types import utcnow
from app.endpoints import service as endpoints
from app.upstream_secrets.models import UpstreamCredential

_TOKEN = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}\Z")
# Headers Warden sets or that would break the forwarded request.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "content-type",
        "cookie",
        "x-user-id",
        "x-user-email",
        "x-tenant",
        "x-request-id",
        "x-forwarded-for",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-authorization",
        "trailer",
    }
)


class CredentialPut(StrictModel):
    """`PUT /endpoints/{slug}/credential`: the header Warden injects upstream."""

    header: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=2048)]

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _TOKEN.match(value):
            raise ValueError("header must be a valid HTTP header name")
        if value.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {value} is reserved")
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        if any(ch in value for ch in "\r\n\x00") or not value.isprintable():
            raise ValueError("value must be printable, without line breaks")
        return value


def associated_data(tenant_id: uuid.UUID, row_id: uuid.UUID, endpoint_id: uuid.UUID) -> str:
    """Binds a ciphertext to its tenant, row and endpoint."""
    return f"tenant={tenant_id}|credential={row_id}|endpoint={endpoint_id}"


def fingerprint(master: KeyRing, tenant_id: uuid.UUID, value: str) -> str:
    """A keyed fingerprint: recognisable, but no offline guessing of the value."""
    return master.fingerprint(tenant_id, value)


def decrypt_credential(master: KeyRing, row: UpstreamCredential) -> str:
    """The plaintext value (only for injecting into an upstream request)."""
    aad = associated_data(row.tenant_id, row.id, row.endpoint_id)
    return master.decrypt(row.ciphertext, aad).decode()


async def find_credential(
    session: AsyncSession, endpoint_id: uuid.UUID
) -> UpstreamCredential | None:
    """The credential of an endpoint in the session's tenant."""
    stmt = select(UpstreamCredential).where(UpstreamCredential.endpoint_id == endpoint_id)  # type: ignore[arg-type]
    return (await session.execute(stmt)).scalar_one_or_none()


async def put_credential(
    session: AsyncSession,
    bus: InvalidationBus,
    master: KeyRing,
    principal: Principal,
    slug: str,
    data: CredentialPut,
) -> UpstreamCredential:
    """Create or replace an endpoint's credential."""
    endpoint = await endpoints.get_by_slug(session, slug)
    row = await find_credential(session, endpoint.id)
    created = row is None
    if row is None:
        row = UpstreamCredential(
            tenant_id=principal.tenant_id,
            endpoint_id=endpoint.id,
            header=data.header,
            ciphertext="",
            key_id="",
            fingerprint="",
            last4="",
        )
    row.header = data.header
    row.ciphertext = master.encrypt(
        data.value.encode(), associated_data(principal.tenant_id, row.id, endpoint.id)
    )
    row.key_id = master.active_kid
    row.fingerprint = fingerprint(master, principal.tenant_id, data.value)
    row.last4 = data.value[-4:] if len(data.value) >= 8 else ""
    row.updated_at = utcnow()
    session.add(row)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="credential.created" if created else "credential.replaced",
        actor=principal.actor,
        target_type="endpoint",
        target_id=str(endpoint.id),
        details={"endpoint": slug, "header": row.header, "fingerprint": row.fingerprint},
    )
    endpoints.invalidate_after_commit(session, bus, principal.tenant_id, slug)
    return row


async def delete_credential(
    session: AsyncSession, bus: InvalidationBus, principal: Principal, slug: str
) -> None:
    """Remove an endpoint's credential."""
    endpoint = await endpoints.get_by_slug(session, slug)
    row = await find_credential(session, endpoint.id)
    if row is None:
        raise NotFound("This endpoint has no credential.", code="credential_not_found")
    await session.delete(row)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="credential.deleted",
        actor=principal.actor,
        target_type="endpoint",
        target_id=str(endpoint.id),
        details={"endpoint": slug},
    )
    endpoints.invalidate_after_commit(session, bus, principal.tenant_id, slug)


async def reencrypt_all(session: AsyncSession, master: KeyRing, batch: int = 500) -> int:
    """Re-encrypt every credential not under the active key (rotation; safe to re-run)."""
    done = 0
    stmt = (
        select(UpstreamCredential)
        .where(UpstreamCredential.key_id != master.active_kid)  # type: ignore[arg-type]
        .limit(batch)
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    session.info[SKIP_TENANT_FILTER] = True  # a maintenance job spanning every tenant
    while True:
        rows = list((await session.execute(stmt)).scalars())
        if not rows:
            return done
        for row in rows:
            aad = associated_data(row.tenant_id, row.id, row.endpoint_id)
            plaintext = master.decrypt(row.ciphertext, aad)
            row.ciphertext = master.encrypt(plaintext, aad)
            row.key_id = master.active_kid
            row.fingerprint = fingerprint(master, row.tenant_id, plaintext.decode())
            done += 1
        await session.flush()
