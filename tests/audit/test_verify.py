"""Tamper evidence: an edited, deleted or reordered row is reported at its seq; else intact."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, update

from app.audit.models import AuditChainHead, AuditEvent
from app.audit.service import link_hash
from app.audit.verify import verify_chain
from tests.audit.helpers import (
    add_tenant,
    append_many,
    events,
    own_database,
    scoped,
    tamper,
    warden,
)

VERIFY = "/api/v1/audit-events/verify"


@pytest.fixture
async def chain(runtime, tenant):
    """A tenant whose chain holds 13 events (seq 1-3 from sign-up and login, 4-13 appended)."""
    await append_many(runtime.sessionmaker, tenant.id, 10)
    return tenant


async def report(runtime, tenant) -> dict:
    result = await verify_chain(runtime.sessionmaker, uuid.UUID(tenant.id))
    return result.model_dump(mode="json")


async def event_at(runtime, tenant, seq: int) -> AuditEvent:
    return next(e for e in await events(runtime, tenant.id) if e.seq == seq)


class TestTampering:
    """Each kind of tampering is found, at the right place."""

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("action", "auth.logout"),
            ("details", {"n": 999}),
            ("at", datetime(2020, 1, 1, tzinfo=UTC)),
            ("outcome", "failure"),
            ("target_id", "someone-else"),
        ],
    )
    async def test_an_edited_row(self, runtime, chain, field, value):
        victim = await event_at(runtime, chain, 6)
        await tamper(runtime, chain.id, 6, **{field: value})
        result = await report(runtime, chain)
        assert result["status"] == "broken"
        assert result["first_broken"] == {
            "seq": 6,
            "id": str(victim.id),
            "reason": "hash_mismatch",
        }
        assert result["checked"] == 5

    async def test_an_edited_row_with_its_hash_recomputed(self, runtime, chain):
        victim = await event_at(runtime, chain, 7)
        victim.action = "nothing.happened"
        await tamper(
            runtime,
            chain.id,
            7,
            action=victim.action,
            hash=link_hash(victim.prev_hash, victim),
        )
        result = await report(runtime, chain)
        # The row itself now hashes right, so the break shows at the next link.
        assert result["first_broken"]["seq"] == 8
        assert result["first_broken"]["reason"] == "prev_hash_mismatch"

    async def test_a_deleted_row(self, runtime, chain):
        async with scoped(runtime, chain.id) as session, session.begin():
            await session.execute(delete(AuditEvent).where(AuditEvent.seq == 9))  # type: ignore[arg-type]
        result = await report(runtime, chain)
        assert result["first_broken"] == {"seq": 9, "id": None, "reason": "missing"}
        assert result["checked"] == 8

    async def test_the_newest_rows_deleted(self, runtime, chain):
        async with scoped(runtime, chain.id) as session, session.begin():
            await session.execute(delete(AuditEvent).where(AuditEvent.seq >= 12))  # type: ignore[arg-type]
        result = await report(runtime, chain)
        assert result["first_broken"] == {"seq": 12, "id": None, "reason": "missing"}

    async def test_two_rows_swapped(self, runtime, chain):
        five, six = await event_at(runtime, chain, 5), await event_at(runtime, chain, 6)
        await tamper(runtime, chain.id, 5, seq=-1)
        await tamper(runtime, chain.id, 6, seq=5)
        await tamper(runtime, chain.id, -1, seq=6)
        result = await report(runtime, chain)
        assert result["first_broken"] == {
            "seq": 5,
            "id": str(six.id),
            "reason": "prev_hash_mismatch",
        }
        assert five.id != six.id

    @pytest.mark.parametrize(
        "values",
        [
            {"ip": "203.0.113.9"},
            {"actor_email": "m***@elsewhere.example"},
            {"actor_id": "another-user"},
            # Passing a row off as an erased user's without an erasure event.
            {"actor_id": "erased:0123456789abcdef", "actor_email": None, "ip": None},
            {"actor_id": "erased:not-a-pseudonym", "actor_email": None, "ip": None},
        ],
    )
    async def test_edited_personal_fields(self, runtime, chain, values):
        victim = await event_at(runtime, chain, 10)
        await tamper(runtime, chain.id, 10, **values)
        result = await report(runtime, chain)
        assert result["first_broken"] == {
            "seq": 10,
            "id": str(victim.id),
            "reason": "actor_mismatch",
        }

    async def test_a_rewound_head(self, runtime, chain):
        async with runtime.sessionmaker() as session, session.begin():
            await session.execute(
                update(AuditChainHead)
                .where(AuditChainHead.chain == chain.id)  # type: ignore[arg-type]
                .values(last_hash="f" * 64)
            )
        result = await report(runtime, chain)
        assert result["first_broken"] == {"seq": 13, "id": None, "reason": "head_mismatch"}

    async def test_an_untouched_chain_is_intact(self, runtime, chain):
        result = await report(runtime, chain)
        assert result["status"] == "intact"
        assert result["checked"] == 13
        assert result["first_broken"] is None
        last = await event_at(runtime, chain, 13)
        assert result["head"] == {"seq": 13, "hash": last.hash}

    async def test_small_chunks_walk_the_same_chain(self, runtime, chain):
        result = await verify_chain(runtime.sessionmaker, uuid.UUID(chain.id), chunk=2)
        assert result.status == "intact"
        assert result.checked == 13
        await tamper(runtime, chain.id, 11, action="x")
        result = await verify_chain(runtime.sessionmaker, uuid.UUID(chain.id), chunk=2)
        assert result.first_broken is not None
        assert result.first_broken.seq == 11


class TestVerifyRoute:
    async def test_intact_then_broken_and_each_check_audited(self, client, runtime, chain):
        h = chain.owner.headers
        r = await client.post(VERIFY, headers=h)
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "intact"
        assert body["checked"] == 13
        assert body["first_broken"] is None
        await tamper(runtime, chain.id, 4, details={"forged": True})
        r = await client.post(VERIFY, headers=h)
        assert r.json()["status"] == "broken"
        assert r.json()["first_broken"]["seq"] == 4
        checks = await events(runtime, chain.id, "audit.verified")
        assert [c.outcome for c in checks] == ["success", "failure"]
        assert checks[1].details["first_broken"]["reason"] == "hash_mismatch"

    async def test_only_the_callers_chain(self, client, runtime, chain, other_tenant):
        await tamper(runtime, other_tenant.id, 2, action="forged")
        r = await client.post(VERIFY, headers=chain.owner.headers)
        assert r.json()["status"] == "intact"
        r = await client.post(VERIFY, headers=other_tenant.owner.headers)
        assert r.json()["first_broken"]["seq"] == 2


class TestVerifyCommand:
    async def test_every_chain_or_one_tenant_exit_code_1_when_broken(self, tmp_path):
        url, maker = await own_database(tmp_path)
        try:
            good = await add_tenant(maker, "good-co", 3)
            bad = await add_tenant(maker, "bad-co", 5)
            result = warden(url, "audit", "verify")
            assert result.returncode == 0, result.stdout + result.stderr
            assert "good-co: intact, 3 event(s) checked" in result.stdout
            assert "bad-co: intact, 5 event(s) checked" in result.stdout

            async with maker() as session, session.begin():
                await session.execute(
                    update(AuditEvent)
                    .where(AuditEvent.tenant_id == bad, AuditEvent.seq == 4)  # type: ignore[arg-type]
                    .values(action="forged")
                    .execution_options(skip_tenant_filter=True)
                )
            result = warden(url, "audit", "verify")
            assert result.returncode == 1
            assert "good-co: intact" in result.stdout
            assert "bad-co: broken at seq 4 (hash_mismatch" in result.stdout

            only_good = warden(url, "audit", "verify", "--tenant", "good-co")
            assert only_good.returncode == 0
            assert "bad-co" not in only_good.stdout
            unknown = warden(url, "audit", "verify", "--tenant", "nobody")
            assert unknown.returncode == 2
            assert "no tenant nobody" in unknown.stderr
            assert good != bad
        finally:
            await maker.kw["bind"].dispose()
