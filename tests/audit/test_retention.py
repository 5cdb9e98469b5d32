"""Retention: pruning old events leaves a checkpoint, so what remains still verifies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.audit.models import AuditChainHead, AuditEvent
from app.audit.service import ChainBroken, parse_age, prune_chain
from app.audit.verify import verify_chain
from app.core.types import utcnow
from app.tenants.models import Tenant
from tests.audit.helpers import add_tenant, append_many, events, own_database, scoped, warden

OLD = datetime(2020, 1, 1, tzinfo=UTC)


async def bare_tenant(maker: async_sessionmaker) -> uuid.UUID:
    """A tenant row with no events yet (sign-up would add three current ones first)."""
    async with maker() as session, session.begin():
        tenant = Tenant(slug=f"r-{uuid.uuid4().hex[:10]}", name="Retention")
        session.add(tenant)
    return tenant.id


async def prune(maker: async_sessionmaker, tenant_id: uuid.UUID, older_than: timedelta) -> int:
    async with maker() as session, session.begin():
        return await prune_chain(session, tenant_id, utcnow() - older_than)


async def head_of(maker: async_sessionmaker, tenant_id: uuid.UUID) -> AuditChainHead:
    async with maker() as session:
        stmt = select(AuditChainHead).where(AuditChainHead.chain == str(tenant_id))  # type: ignore[arg-type]
        return (await session.execute(stmt)).scalar_one()


@pytest.fixture
async def aged(runtime) -> uuid.UUID:
    """A chain of 5 events from 2020 followed by 3 current ones."""
    tenant_id = await bare_tenant(runtime.sessionmaker)
    await append_many(runtime.sessionmaker, tenant_id, 5, action="old.event", at=OLD)
    await append_many(runtime.sessionmaker, tenant_id, 3, action="new.event")
    return tenant_id


class TestRefusals:
    async def test_a_chain_with_missing_events_is_left_alone(self, runtime, aged):
        async with scoped(runtime, aged) as session, session.begin():
            await session.execute(delete(AuditEvent).where(AuditEvent.seq == 2))  # type: ignore[arg-type]
        with pytest.raises(ChainBroken):
            await prune(runtime.sessionmaker, aged, timedelta(days=90))
        assert len(await events(runtime, aged)) == 7  # the evidence is still there
        report = await verify_chain(runtime.sessionmaker, aged)
        assert report.first_broken is not None
        assert report.first_broken.seq == 2

    @pytest.mark.parametrize("text", ["", "90", "3w", "-1d", "1.5d", "d", "9999999d"])
    def test_bad_ages(self, text):
        with pytest.raises(ValueError, match="invalid age"):
            parse_age(text)


class TestPrune:
    async def test_old_events_go_and_the_rest_verifies(self, runtime, aged):
        before = {e.seq: e for e in await events(runtime, aged)}
        assert await prune(runtime.sessionmaker, aged, timedelta(days=90)) == 5
        kept = await events(runtime, aged)
        assert [e.action for e in kept] == ["new.event"] * 3 + ["audit.pruned"]
        assert kept[-1].details["count"] == 5
        assert kept[-1].details["through_seq"] == 5
        assert kept[-1].actor_type == "system"
        head = await head_of(runtime.sessionmaker, aged)
        assert (head.base_seq, head.base_hash) == (5, before[5].hash)
        assert (head.seq, head.last_hash) == (9, kept[-1].hash)
        report = await verify_chain(runtime.sessionmaker, aged)
        assert report.status == "intact"
        assert report.checked == 4

    async def test_prune_everything(self, runtime, aged):
        assert await prune(runtime.sessionmaker, aged, timedelta(0)) == 8
        (only,) = await events(runtime, aged)
        assert only.action == "audit.pruned"
        assert only.seq == 9
        report = await verify_chain(runtime.sessionmaker, aged)
        assert (report.status, report.checked) == ("intact", 1)

    async def test_prune_twice(self, runtime, aged):
        assert await prune(runtime.sessionmaker, aged, timedelta(days=90)) == 5
        # Nothing more is due: nothing deleted, nothing recorded.
        assert await prune(runtime.sessionmaker, aged, timedelta(days=90)) == 0
        assert len(await events(runtime, aged)) == 4
        assert (await verify_chain(runtime.sessionmaker, aged)).status == "intact"
        # Later, everything is due, the first prune's record included.
        assert await prune(runtime.sessionmaker, aged, timedelta(0)) == 4
        (only,) = await events(runtime, aged)
        assert only.details["through_seq"] == 9
        report = await verify_chain(runtime.sessionmaker, aged)
        assert (report.status, report.checked) == ("intact", 1)
        await append_many(runtime.sessionmaker, aged, 2)
        assert (await verify_chain(runtime.sessionmaker, aged)).checked == 3

    async def test_only_a_prefix_goes(self, runtime):
        # A batched event can be older than the one before it; the prefix stops at the first
        # event not yet due, so the chain never gets a hole.
        tenant_id = await bare_tenant(runtime.sessionmaker)
        await append_many(runtime.sessionmaker, tenant_id, 2, at=OLD)
        await append_many(runtime.sessionmaker, tenant_id, 1, action="new.event")
        await append_many(runtime.sessionmaker, tenant_id, 2, at=OLD)
        assert await prune(runtime.sessionmaker, tenant_id, timedelta(days=1)) == 2
        assert [e.seq for e in await events(runtime, tenant_id)] == [3, 4, 5, 6]
        assert (await verify_chain(runtime.sessionmaker, tenant_id)).status == "intact"

    async def test_other_chains_are_untouched(self, runtime, aged):
        other = await bare_tenant(runtime.sessionmaker)
        await append_many(runtime.sessionmaker, other, 4, at=OLD)
        await prune(runtime.sessionmaker, aged, timedelta(0))
        assert len(await events(runtime, other)) == 4
        assert (await head_of(runtime.sessionmaker, other)).base_seq == 0

    async def test_a_verify_racing_a_prune_is_not_a_false_alarm(self, runtime, aged):
        maker = PruneBeforeSession(runtime.sessionmaker, aged, at_call=3)
        report = await verify_chain(maker, aged, chunk=2)  # type: ignore[arg-type]
        assert maker.pruned  # the rows the walk expected next were gone when it read them
        assert report.status == "intact"
        assert report.checked == 4


class TestPruneCommand:
    async def test_default_retention_explicit_age_and_a_refused_chain(self, tmp_path):
        url, maker = await own_database(tmp_path)
        try:
            keep = await add_tenant(maker, "keep-co", 3, at=OLD)
            await append_many(maker, keep, 2)
            result = warden(url, "audit", "prune", AUDIT_RETENTION_DAYS="30")
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "keep-co: 3 pruned"
            again = warden(url, "audit", "prune", AUDIT_RETENTION_DAYS="30")
            assert again.stdout.strip() == "keep-co: 0 pruned"

            broken = await add_tenant(maker, "broken-co", 3, at=OLD)
            async with maker() as session, session.begin():
                await session.execute(
                    delete(AuditEvent)
                    .where(AuditEvent.tenant_id == broken, AuditEvent.seq == 1)  # type: ignore[arg-type]
                    .execution_options(skip_tenant_filter=True)
                )
            result = warden(url, "audit", "prune", "--older-than", "0s")
            assert result.returncode == 1
            assert "broken-co: refused: chain" in result.stdout
            assert "keep-co: 3 pruned" in result.stdout  # 2 events + the first prune's record

            result = warden(url, "audit", "verify", "--tenant", "keep-co")
            assert result.returncode == 0, result.stdout
            assert "keep-co: intact, 1 event(s) checked" in result.stdout
            bad = warden(url, "audit", "prune", "--older-than", "3w")
            assert bad.returncode == 2
            assert "invalid age" in bad.stderr
        finally:
            await maker.kw["bind"].dispose()


class PruneBeforeSession:
    """A session factory that lets a prune commit just before one of the sessions it hands out.

    The walk opens one session for the head, then one per chunk: a prune committing between
    two chunks removes rows the walk still expects, exactly as a concurrent `warden audit prune`."""

    def __init__(self, maker: async_sessionmaker, tenant_id: uuid.UUID, at_call: int) -> None:
        self.maker, self.tenant_id, self.at_call = maker, tenant_id, at_call
        self.calls = 0
        self.pruned = False

    def __call__(self) -> object:
        self.calls += 1
        session = self.maker()
        if self.calls != self.at_call:
            return session
        return _PruneFirst(session, self)


class _PruneFirst:
    def __init__(self, session: object, owner: PruneBeforeSession) -> None:
        self.session, self.owner = session, owner

    @property
    def info(self) -> dict:
        return self.session.info  # type: ignore[attr-defined]

    async def __aenter__(self) -> object:
        await prune(self.owner.maker, self.owner.tenant_id, timedelta(days=90))
        self.owner.pruned = True
        return await self.session.__aenter__()  # type: ignore[attr-defined]

    async def __aexit__(self, *exc: object) -> None:
        await self.session.__aexit__(*exc)  # type: ignore[attr-defined]
