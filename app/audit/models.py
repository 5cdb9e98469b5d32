"""The audit trail: one hash chain of events per tenant."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, new_id, utcnow


class AuditEvent(SQLModel, table=True):
    """One security-relevant event. `hash = SHA-256(prev_hash || canonical event)`."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_tenant_seq", "tenant_id", "seq", unique=True),
        Index("ix_audit_events_tenant_at", "tenant_id", "at"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID | None = Field(
        default=None, foreign_key="tenants.id", ondelete="CASCADE", nullable=True
    )
    seq: int = Field(sa_type=BigInteger)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    actor_type: str = Field(max_length=16)
    actor_id: str | None = Field(default=None, max_length=256)
    actor_email: str | None = Field(default=None, max_length=254)
    # SHA-256 over (actor_id, actor_email, ip): the chain hashes this digest, not the personal
    # fields, so erasure can replace them with a pseudonym and the chain still verifies.
    actor_digest: str = Field(default="", max_length=64)
    action: str = Field(max_length=64, index=True)
    target_type: str | None = Field(default=None, max_length=32)
    target_id: str | None = Field(default=None, max_length=256)
    outcome: str = Field(max_length=16)
    ip: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(default=None, max_length=64)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditChainHead(SQLModel, table=True):
    """The head of one tenant's chain (`chain` is the tenant id, or `system`); locked per append."""

    __tablename__ = "audit_chain_heads"

    chain: str = Field(primary_key=True, max_length=64)
    seq: int = Field(default=0, sa_type=BigInteger)
    last_hash: str = Field(max_length=64)
    # Retention checkpoint: events up to `base_seq` were pruned; the first kept event's
    # prev_hash must equal `base_hash`.
    base_seq: int = Field(default=0, sa_type=BigInteger)
    base_hash: str = Field(default="0" * 64, max_length=64)
