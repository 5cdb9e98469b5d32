"""Identity value types: who is calling (`Principal`, whatever the credential), the role ladder,
and how a caller appears in the audit trail (`Actor`)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Actor:
    """Who did it: `user`, `api_key`, `satellite`, `service`, `anonymous` or `system`."""

    type: str
    id: str | None = None
    email: str | None = None


ANONYMOUS = Actor("anonymous")
SYSTEM = Actor("system")


class Role(StrEnum):
    """`owner` > `admin` > `member` > `viewer`."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        """Higher is more powerful."""
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        """True when this role includes everything `other` may do."""
        return self.rank >= other.rank


_RANKS = {Role.VIEWER: 1, Role.MEMBER: 2, Role.ADMIN: 3, Role.OWNER: 4}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, bound to exactly one tenant."""

    kind: str  # user | api_key | satellite | service
    id: str
    tenant_id: uuid.UUID
    tenant_slug: str
    role: Role
    email: str | None = None
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    jti: str | None = None
    expires_at: int | None = None
    session_id: str | None = None

    @property
    def user_id(self) -> uuid.UUID | None:
        """The local user's id, when the principal is a local user."""
        return uuid.UUID(self.id) if self.kind == "user" else None

    # Cached (written to the instance's __dict__, which a frozen dataclass allows): a verified
    # token's principal is reused for every request that presents the token.
    @functools.cached_property
    def actor(self) -> Actor:
        """How the principal appears in the audit trail."""
        return Actor(self.kind, self.id, self.email)

    @functools.cached_property
    def tenant_text(self) -> str:
        """`tenant_id` as text (cache and revocation keys)."""
        return str(self.tenant_id)
