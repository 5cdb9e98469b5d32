"""Identity providers: registered with discovery validated on write, audited in the
transaction; the client secret is write-only (AES-256-GCM, reads show fingerprint + last 4).

With `private_key_jwt` Warden makes the client key pair itself: the private key never leaves
Warden (encrypted like a secret) and reads show the public JWK to register at the provider."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import record
from app.core import jose
from app.core.crypto import DecryptionError, KeyRing
from app.core.errors import Conflict, Unprocessable
from app.core.identity import Principal
from app.core.pagination import PageParams
from app.core.types import utcnow
from app.identity_providers import repository
from app.identity_providers.discovery import DiscoveryError, ProviderClient, discover
from app.identity_providers.models import IdentityProvider, OidcSession
from app.identity_providers.schemas import (
    IdentityProviderCreate,
    IdentityProviderPublic,
    IdentityProviderUpdate,
    SecretView,
    SignInLink,
)

MAX_PROVIDERS_PER_TENANT = 20
API_PREFIX = "/api/v1"
BACKCHANNEL_PATH = "/sessions/oidc/backchannel-logout"


@dataclass(frozen=True)
class ProviderRules:
    """What registering a provider needs: the master keys, the provider client (discovery
    through the outbound guard) and Warden's public URL (for the redirect URIs)."""

    master: KeyRing
    client: ProviderClient
    public_url: str


# --- URLs ---------------------------------------------------------------------------------


def _base(public_url: str) -> str:
    return public_url.rstrip("/") + API_PREFIX


def start_url(public_url: str, tenant_slug: str, name: str) -> str:
    """Where a browser starts signing in through a provider."""
    return f"{_base(public_url)}/sessions/oidc/{quote(tenant_slug)}/{quote(name)}/start"


def redirect_uri(public_url: str, tenant_slug: str, name: str) -> str:
    """The redirect URI to register at the provider (exact match)."""
    return f"{_base(public_url)}/sessions/oidc/{quote(tenant_slug)}/{quote(name)}/callback"


def backchannel_logout_uri(public_url: str) -> str:
    """The back-channel logout URI to register at the provider (one for every tenant)."""
    return _base(public_url) + BACKCHANNEL_PATH


# --- secrets ------------------------------------------------------------------------------


def _aad(tenant_id: uuid.UUID, row_id: uuid.UUID, what: str) -> str:
    return f"tenant={tenant_id}|identity_provider={row_id}|{what}"


def _ciphertext(row: IdentityProvider) -> str:
    if row.secret_ciphertext is None:
        raise DecryptionError("the provider has no client credential")
    return row.secret_ciphertext


def client_secret(master: KeyRing, row: IdentityProvider) -> str:
    """The plaintext client secret (only for the token endpoint)."""
    return master.decrypt(_ciphertext(row), _aad(row.tenant_id, row.id, "secret")).decode()


def client_private_key(master: KeyRing, row: IdentityProvider) -> ec.EllipticCurvePrivateKey:
    """The `private_key_jwt` signing key."""
    pem = master.decrypt(_ciphertext(row), _aad(row.tenant_id, row.id, "private_key"))
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DecryptionError("the client key is not an EC key")
    return key


def client_key_id(key: ec.EllipticCurvePrivateKey) -> str:
    """The `kid` of the client key (its RFC 7638 thumbprint)."""
    return jose.jwk_thumbprint(key.public_key())


def _set_secret(master: KeyRing, row: IdentityProvider, secret: str | None) -> None:
    if row.client_auth == "private_key_jwt":
        if row.secret_ciphertext is None or row.secret_last4 is not None:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            row.secret_ciphertext = master.encrypt(pem, _aad(row.tenant_id, row.id, "private_key"))
            row.secret_fingerprint = client_key_id(key)[:16]
            row.secret_last4 = None
        return
    if secret is None:
        return
    row.secret_ciphertext = master.encrypt(secret.encode(), _aad(row.tenant_id, row.id, "secret"))
    row.secret_fingerprint = master.fingerprint(row.tenant_id, secret)
    row.secret_last4 = secret[-4:]


def seal_tokens(master: KeyRing, row: OidcSession, tokens: dict[str, Any]) -> None:
    """Store a session's IdP tokens encrypted, bound to its tenant and browser session."""
    aad = f"tenant={row.tenant_id}|oidc_session={row.browser_session_id}"
    row.tokens_ciphertext = master.encrypt(json.dumps(tokens).encode(), aad)


def open_tokens(master: KeyRing, row: OidcSession) -> dict[str, Any]:
    """A session's IdP tokens (access, refresh, ID)."""
    aad = f"tenant={row.tenant_id}|oidc_session={row.browser_session_id}"
    value: dict[str, Any] = json.loads(master.decrypt(row.tokens_ciphertext, aad))
    return value


# --- views --------------------------------------------------------------------------------


def public_view(
    rules: ProviderRules, tenant_slug: str, row: IdentityProvider
) -> IdentityProviderPublic:
    """The API view of a provider: never the secret; the URIs to register at the provider."""
    secret = None
    jwk = None
    if row.client_auth == "private_key_jwt":
        try:
            key = client_private_key(rules.master, row)
            jwk = jose.public_jwk(key.public_key(), kid=client_key_id(key), alg="ES256")
            jwk["use"] = "sig"
        except Exception:  # a display problem (e.g. a retired master key) is not a 500
            jwk = None
    elif row.secret_fingerprint and row.secret_last4 is not None:
        secret = SecretView(fingerprint=row.secret_fingerprint, last4=row.secret_last4)
    metadata = row.provider_metadata
    return IdentityProviderPublic(
        id=row.id,
        name=row.name,
        issuer=row.issuer,
        client_id=row.client_id,
        client_auth=row.client_auth,
        client_secret=secret,
        client_jwk=jwk,
        scopes=row.scopes,
        claim_mapping=row.claim_mapping,
        allowed_email_domains=row.allowed_email_domains,
        default_role=row.default_role,
        jit_provisioning=row.jit_provisioning,
        enabled=row.enabled,
        redirect_uri=redirect_uri(rules.public_url, tenant_slug, row.name),
        backchannel_logout_uri=backchannel_logout_uri(rules.public_url),
        sign_in_url=start_url(rules.public_url, tenant_slug, row.name),
        authorization_endpoint=metadata.get("authorization_endpoint", ""),
        end_session_endpoint=metadata.get("end_session_endpoint"),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


# --- CRUD ---------------------------------------------------------------------------------


async def _discover_or_422(rules: ProviderRules, issuer: str, client_auth: str) -> dict[str, Any]:
    try:
        return await discover(rules.client, issuer, client_auth)
    except DiscoveryError as exc:
        raise Unprocessable(str(exc), code="invalid_discovery") from exc


def _details(row: IdentityProvider) -> dict[str, Any]:
    return {
        "name": row.name,
        "issuer": row.issuer,
        "client_id": row.client_id,
        "client_auth": row.client_auth,
        "secret_fingerprint": row.secret_fingerprint,
        "scopes": row.scopes,
        "allowed_email_domains": row.allowed_email_domains,
        "default_role": row.default_role,
        "jit_provisioning": row.jit_provisioning,
        "enabled": row.enabled,
    }


def _name_taken() -> Conflict:
    return Conflict("An identity provider with this name exists.", code="identity_provider_exists")


async def list_providers(
    session: AsyncSession, params: PageParams
) -> tuple[list[IdentityProvider], str | None]:
    """A page of the tenant's identity providers."""
    return await repository.page(session, params)


async def get_provider(session: AsyncSession, provider_id: uuid.UUID) -> IdentityProvider:
    """One of the tenant's providers (another tenant's is a 404)."""
    return await repository.get(session, provider_id)


async def create_provider(
    session: AsyncSession, rules: ProviderRules, principal: Principal, data: IdentityProviderCreate
) -> IdentityProvider:
    """`POST /identity-providers`: discovery fetched and checked now (a 422 names the problem)."""
    if await repository.find_by_name(session, data.name) is not None:
        raise _name_taken()
    if await repository.count(session) >= MAX_PROVIDERS_PER_TENANT:
        raise Conflict("Too many identity providers.", code="too_many")
    metadata = await _discover_or_422(rules, data.issuer, data.client_auth)
    row = IdentityProvider(
        tenant_id=principal.tenant_id,
        name=data.name,
        issuer=data.issuer,
        client_id=data.client_id,
        client_auth=data.client_auth,
        provider_metadata=metadata,
        scopes=list(data.scopes),
        claim_mapping=data.claim_mapping.model_dump(),
        allowed_email_domains=list(data.allowed_email_domains),
        default_role=data.default_role,
        jit_provisioning=data.jit_provisioning,
        enabled=data.enabled,
    )
    _set_secret(rules.master, row, data.client_secret)
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name
        raise _name_taken() from exc
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="identity_provider.created",
        actor=principal.actor,
        target_type="identity_provider",
        target_id=str(row.id),
        details=_details(row),
    )
    return row


async def update_provider(
    session: AsyncSession,
    rules: ProviderRules,
    principal: Principal,
    provider_id: uuid.UUID,
    data: IdentityProviderUpdate,
) -> IdentityProvider:
    """`PATCH /identity-providers/{id}`: an `issuer` in the body is discovered and checked
    again."""
    row = await repository.get(session, provider_id)
    changes = data.model_dump(exclude_unset=True, exclude={"client_secret"})
    if data.client_secret is not None and row.client_auth == "private_key_jwt":
        raise Unprocessable("client_secret: not used with private_key_jwt", code="validation_error")
    if changes.get("issuer") is not None:
        # Sending the issuer again (even unchanged) re-reads its discovery document: the way to
        # pick up endpoints the provider moved.
        row.provider_metadata = await _discover_or_422(rules, changes["issuer"], row.client_auth)
    for name, value in changes.items():
        if value is not None:
            setattr(row, name, value)
    _set_secret(rules.master, row, data.client_secret)
    row.updated_at = utcnow()
    await session.flush()
    details = _details(row)
    details["changed"] = sorted(data.model_dump(exclude_unset=True))
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="identity_provider.updated",
        actor=principal.actor,
        target_type="identity_provider",
        target_id=str(row.id),
        details=details,
    )
    return row


async def delete_provider(
    session: AsyncSession, principal: Principal, provider_id: uuid.UUID, *, sessions_ended: int
) -> None:
    """Delete a provider (its links and pending sign-ins go with it); the caller has ended the
    browser sessions it vouched for (`sessions_ended`, audited)."""
    row = await repository.get(session, provider_id)
    details = _details(row) | {"sessions_ended": sessions_ended}
    await session.delete(row)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="identity_provider.deleted",
        actor=principal.actor,
        target_type="identity_provider",
        target_id=str(provider_id),
        details=details,
    )


async def enabled_sign_in_links(
    session: AsyncSession, public_url: str, tenant_slug: str
) -> list[SignInLink]:
    """The session tenant's enabled providers with their start URLs (for a sign-in page)."""
    return [
        SignInLink(
            name=row.name, issuer=row.issuer, start_url=start_url(public_url, tenant_slug, row.name)
        )
        for row in await repository.enabled(session)
    ]


async def prune_expired(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Forget expired pending sign-ins and logout tokens past their replay window."""
    async with sessionmaker() as session, session.begin():
        await repository.prune_logins(session, utcnow())
