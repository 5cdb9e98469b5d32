"""Expired revocations are pruned — rows and this process's memory — so the fast path of the
revocation check (nothing revoked in this process's view: nothing to look up) returns."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlalchemy import select

from app.credentials.models import Revocation
from app.credentials.revocation import RevocationStore


async def test_expired_revocations_go_and_the_fast_path_returns(runtime):
    store = RevocationStore(
        runtime.sessionmaker, None, token_lifetime=timedelta(seconds=1), leeway=timedelta(0)
    )
    dead, alive = uuid.uuid4(), uuid.uuid4()
    async with runtime.sessionmaker() as session, session.begin():
        await store.revoke_tenant(session, dead)
    long_lived = RevocationStore(
        runtime.sessionmaker, None, token_lifetime=timedelta(minutes=5), leeway=timedelta(0)
    )
    async with runtime.sessionmaker() as session, session.begin():
        await long_lived.revoke_tenant(session, alive)
    assert await store.is_revoked(jti=None, user_id=None, tenant_id=str(dead), version=0)
    assert store._memory  # something revoked: every check looks it up

    await asyncio.sleep(1.2)
    assert not await store.is_revoked(jti=None, user_id=None, tenant_id=str(dead), version=0)
    assert await store.prune() >= 1
    assert store._memory == {}  # the fast path is back
    async with runtime.sessionmaker() as session:
        subjects = set(
            (
                await session.execute(
                    select(Revocation.subject).where(
                        Revocation.subject.in_([f"tenant:{dead}", f"tenant:{alive}"])  # type: ignore[attr-defined]
                    )
                )
            ).scalars()
        )
    assert subjects == {f"tenant:{alive}"}  # a live revocation stays
