"""Tamper evidence: walk a chain and report the first link that does not hold.

For every kept event, in seq order from the retention checkpoint (`base_seq + 1`):
- `missing`: the seq is not the next one (a row was deleted, or its seq edited away);
- `prev_hash_mismatch`: `prev_hash` is not the previous event's hash (rows reordered, or a row
  inserted or deleted and the rest re-numbered); the first kept event links to `base_hash`;
- `hash_mismatch`: the stored hash is not `link_hash(prev_hash, event)` (the row was edited);
- `actor_mismatch`: `actor_digest` does not commit to (actor_id, actor_email, ip). An erased
  user's rows carry `erased:<16 hex>` as actor id and no email or ip; the digest still commits to
  the original values, so it cannot be checked for them. Instead the pseudonym must be one that a
  `privacy.erased` event of the chain introduced, the rows must precede that event, and they must
  be exactly the rows it tallied (count and SHA-256 of their seqs, fewer only where pruned): no
  row can be anonymised quietly, or passed off as an erased user's.
Finally the head must point at the last event (`head_mismatch` otherwise, e.g. the newest rows
were deleted). Each chunk is read in its own short session, so SQLite writers are not held up;
a walk that a concurrent prune or erasure overtook is walked again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import repository
from app.audit.models import AuditEvent
from app.audit.schemas import BrokenLinkView, ChainHeadView, VerifyReport
from app.audit.service import (
    SeqTally,
    actor_digest,
    chain_key,
    link_hash,
    record,
    resolve_chains,
)
from app.core.db import set_session_tenant
from app.core.identity import Actor

VERIFY_CHUNK = 1000
_PSEUDONYM = re.compile(rf"\A{re.escape(repository.ERASED_PREFIX)}[0-9a-f]{{16}}\Z")


@dataclass
class _Erasure:
    event: AuditEvent
    seen: SeqTally = field(default_factory=SeqTally)

    def balanced(self, base_seq: int) -> bool:
        recorded = self.event.details
        count, first = recorded.get("events"), recorded.get("first_seq")
        if not isinstance(count, int):
            return False
        if isinstance(first, int) and first <= base_seq:
            return self.seen.count <= count  # some of its rows were pruned since
        return self.seen.count == count and self.seen.digest == recorded.get("seqs")


class _Erasures:
    """The chain's erasures, and the erased rows the walk has met so far."""

    def __init__(self, events: list[AuditEvent]) -> None:
        self.by_alias = {e.target_id: _Erasure(e) for e in events if e.target_id}

    @property
    def ids(self) -> set[uuid.UUID]:
        return {erasure.event.id for erasure in self.by_alias.values()}

    def admits(self, event: AuditEvent) -> bool:
        erasure = self.by_alias.get(event.actor_id or "")
        if erasure is None or event.actor_email is not None or event.ip is not None:
            return False
        if event.seq == erasure.event.seq:
            return True  # the erasure event itself, rewritten with the rest
        erasure.seen.add(event.seq)
        return event.seq < erasure.event.seq

    def unbalanced(self, base_seq: int, head_seq: int) -> AuditEvent | None:
        for erasure in sorted(self.by_alias.values(), key=lambda e: e.event.seq):
            # An erasure beyond the walked head happened meanwhile: the next walk checks it.
            if erasure.event.seq <= head_seq and not erasure.balanced(base_seq):
                return erasure.event
        return None


@dataclass
class _Walk:
    """Where a walk stands."""

    seq: int
    prev: str
    checked: int = 0


def _problem(event: AuditEvent, walk: _Walk, erasures: _Erasures) -> str | None:
    if event.prev_hash != walk.prev:
        return "prev_hash_mismatch"
    if link_hash(event.prev_hash, event) != event.hash:
        return "hash_mismatch"
    if event.actor_id is not None and _PSEUDONYM.match(event.actor_id):
        return None if erasures.admits(event) else "actor_mismatch"
    if event.actor_digest != actor_digest(event.actor_id, event.actor_email, event.ip):
        return "actor_mismatch"
    return None


def _session(
    sessionmaker: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID | None
) -> AsyncSession:
    session = sessionmaker()
    if tenant_id is not None:
        set_session_tenant(session, tenant_id)
    return session


@dataclass(frozen=True)
class _Snapshot:
    """What a walk started from; a concurrent prune or erasure changes it."""

    base_seq: int
    erasures: frozenset[uuid.UUID]


async def _snapshot(
    sessionmaker: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID | None
) -> _Snapshot | None:
    async with _session(sessionmaker, tenant_id) as session:
        head = await repository.get_head(session, chain_key(tenant_id))
        erasures = await repository.erasures(session, tenant_id)
    if head is None:
        return None
    return _Snapshot(head.base_seq, frozenset(e.id for e in erasures))


async def _walk_once(
    sessionmaker: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID | None, chunk: int
) -> tuple[VerifyReport, _Snapshot | None]:
    async with _session(sessionmaker, tenant_id) as session:
        head = await repository.get_head(session, chain_key(tenant_id))
        erasures = _Erasures(await repository.erasures(session, tenant_id))
        stray = [] if head else await repository.chain_segment(session, tenant_id, 0, 2**62, 1)
    if head is None:
        if stray:
            orphan = BrokenLinkView(seq=stray[0].seq, id=stray[0].id, reason="no_head")
            return VerifyReport(status="broken", checked=0, first_broken=orphan, head=None), None
        return VerifyReport(status="intact", checked=0, first_broken=None, head=None), None
    started = _Snapshot(head.base_seq, frozenset(erasures.ids))
    head_view = ChainHeadView(seq=head.seq, hash=head.last_hash)
    walk = _Walk(seq=head.base_seq, prev=head.base_hash)

    def broken(seq: int, event_id: uuid.UUID | None, reason: str) -> tuple[VerifyReport, _Snapshot]:
        link = BrokenLinkView(seq=seq, id=event_id, reason=reason)
        report = VerifyReport(
            status="broken", checked=walk.checked, first_broken=link, head=head_view
        )
        return report, started

    while walk.seq < head.seq:
        async with _session(sessionmaker, tenant_id) as session:
            # Bounded by the head as read: events appended meanwhile are the next walk's.
            rows = await repository.chain_segment(session, tenant_id, walk.seq, head.seq, chunk)
        if not rows:
            return broken(walk.seq + 1, None, "missing")
        for event in rows:
            if event.seq != walk.seq + 1:
                return broken(walk.seq + 1, None, "missing")
            reason = _problem(event, walk, erasures)
            if reason is not None:
                return broken(event.seq, event.id, reason)
            walk.seq, walk.prev = event.seq, event.hash
            walk.checked += 1
    if walk.prev != head.last_hash:
        return broken(head.seq, None, "head_mismatch")
    erasure = erasures.unbalanced(head.base_seq, head.seq)
    if erasure is not None:
        return broken(erasure.seq, erasure.id, "actor_mismatch")
    intact = VerifyReport(status="intact", checked=walk.checked, first_broken=None, head=head_view)
    return intact, started


async def verify_chain(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID | None,
    chunk: int = VERIFY_CHUNK,
) -> VerifyReport:
    """Walk one chain (a tenant's, or the system chain for `None`) and report on it."""
    report, started = await _walk_once(sessionmaker, tenant_id, chunk)
    for _ in range(3):
        if report.status == "intact" or started is None:
            return report
        # A prune that committed during the walk deletes rows the walk still expected; an
        # erasure rewrites rows under a pseudonym it had not seen yet. Neither is tampering:
        # when one happened, walk again from where the chain now stands.
        if await _snapshot(sessionmaker, tenant_id) == started:
            return report
        report, started = await _walk_once(sessionmaker, tenant_id, chunk)
    return report


@dataclass(frozen=True)
class ChainResult:
    """One chain's report with a name a person recognises."""

    name: str
    report: VerifyReport


async def verify_chains(
    sessionmaker: async_sessionmaker[AsyncSession],
    slugs: Mapping[str, str],
    slug: str | None = None,
) -> list[ChainResult]:
    """Verify one tenant's chain (by slug) or every chain, the system chain included."""
    results = []
    for name, tenant_id in await resolve_chains(sessionmaker, slugs, slug):
        results.append(ChainResult(name, await verify_chain(sessionmaker, tenant_id)))
    return results


async def verify_tenant_chain(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    actor: Actor,
) -> VerifyReport:
    """`POST /audit-events/verify`: walk the tenant's chain, then record the check in it.

    The walk reads through its own short sessions; the result is recorded in the caller's
    transaction afterwards (a broken chain is a security event in its own right)."""
    report = await verify_chain(sessionmaker, tenant_id)
    await record(
        session,
        tenant_id=tenant_id,
        action="audit.verified",
        actor=actor,
        outcome="success" if report.status == "intact" else "failure",
        details=report.model_dump(mode="json", exclude={"head"}),
    )
    return report
