"""Every table model, imported in one place so alembic and the mappers see one metadata."""

from app.audit.models import AuditChainHead, AuditEvent
from app.auth.models import RefreshToken, Revocation, SigningKey
from app.tenants.models import Tenant
from app.users.models import User

__all__ = [
    "AuditChainHead",
    "AuditEvent",
    "RefreshToken",
    "Revocation",
    "SigningKey",
    "Tenant",
    "User",
]
