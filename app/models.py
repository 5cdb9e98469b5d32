"""Every table model, imported in one place so alembic and the mappers see one metadata."""

from app.apikeys.models import ApiKey
from app.audit.models import AuditChainHead, AuditEvent
from app.credentials.models import BrowserSession, RefreshToken, Revocation, SigningKey
from app.endpoints.models import Endpoint
from app.identity_providers.models import (
    IdentityLink,
    IdentityProvider,
    OidcLogin,
    OidcLogoutToken,
    OidcSession,
)
from app.issuers.models import IssuerAudience, TrustedIssuer
from app.policies.models import Policy
from app.tenants.models import Tenant
from app.upstream_secrets.models import UpstreamCredential
from app.users.models import User

__all__ = [
    "ApiKey",
    "AuditChainHead",
    "AuditEvent",
    "BrowserSession",
    "Endpoint",
    "IdentityLink",
    "IdentityProvider",
    "IssuerAudience",
    "OidcLogin",
    "OidcLogoutToken",
    "OidcSession",
    "Policy",
    "RefreshToken",
    "Revocation",
    "SigningKey",
    "Tenant",
    "TrustedIssuer",
    "UpstreamCredential",
    "User",
]
