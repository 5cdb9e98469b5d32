"""The identity providers offered on the sign-in page."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class IdentityProviderLink:
    """One "Sign in with …" button: the provider's display name and where it starts."""

    name: str
    url: str


async def identity_provider_links(
    session: AsyncSession, tenant_slug: str | None
) -> list[IdentityProviderLink]:
    """The sign-in links of `tenant_slug`'s enabled identity providers (the sign-in page lists
    them under the password form). Empty until the OIDC sign-in package exists: this is the one
    place that asks it for the tenant's providers."""
    del session, tenant_slug
    return []
