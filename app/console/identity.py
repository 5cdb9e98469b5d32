"""The identity providers offered on the sign-in page."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncSession

from app.console.render import PREFIX
from app.core.db import session_tenant, set_session_tenant
from app.identity_providers import service as providers
from app.tenants import service as tenants


@dataclass(frozen=True)
class IdentityProviderLink:
    """One "Sign in with …" button: the provider's display name and where it starts."""

    name: str
    url: str


async def identity_provider_links(
    session: AsyncSession, public_url: str, tenant_slug: str | None
) -> list[IdentityProviderLink]:
    """The sign-in links of `tenant_slug`'s enabled identity providers (the sign-in page lists
    them under the password form); each starts the provider's flow and comes back to the
    console. An unknown tenant has none, like a tenant without providers: the page says no
    more about a tenant's existence than the password form does."""
    if not tenant_slug:
        return []
    tenant = await tenants.get_by_slug(session, tenant_slug)
    if tenant is None:
        return []
    previous = session_tenant(session)
    set_session_tenant(session, tenant.id)
    try:
        links = await providers.enabled_sign_in_links(session, public_url, tenant.slug)
    finally:
        set_session_tenant(session, previous)
    back = urlencode({"return_to": PREFIX})
    return [IdentityProviderLink(name=link.name, url=f"{link.start_url}?{back}") for link in links]
