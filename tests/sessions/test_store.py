"""The session store: fails closed without its Redis; with Redis, records and tombstones."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from redis.asyncio import Redis

from app.core.db import set_session_tenant
from app.core.errors import ServiceUnavailable
from app.credentials.browser import SessionStore
from app.credentials.models import BrowserSession
from app.users.service import session_holder_loader
from tests.sessions.conftest import browser_login
from tests.support.servers import free_port
from tests.support.services import REDIS, needs_redis


def _hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


async def _row(runtime, db, tenant_id: str, session_id: str) -> BrowserSession:
    set_session_tenant(db, uuid.UUID(tenant_id))
    row = await db.get(BrowserSession, uuid.UUID(session_id))
    assert row is not None
    return row


class TestRedisDown:
    """A configured Redis that does not answer is a 503, never a session served from nowhere."""

    async def test_lookup_and_revocation_fail_closed(self, client, tenant, runtime):
        login = await browser_login(client, tenant)
        dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
        store = SessionStore(runtime.sessionmaker, dead, session_holder_loader(runtime.settings))
        try:
            with pytest.raises(ServiceUnavailable):
                await store.lookup(_hash(login.cookie))
            async with runtime.sessionmaker() as db:
                row = await _row(runtime, db, tenant.id, login.id)
                with pytest.raises(ServiceUnavailable):
                    await store.revoke(db, [row])
                await db.rollback()
        finally:
            await dead.aclose()
        # The failed revocation left nothing half-done: the session still works.
        r = await client.get("/api/v1/auth/me", headers=login.headers())
        assert r.status_code == 200


@needs_redis
class TestRedisRecords:
    """Records live as long as the session; a tombstone beats the database and any refill."""

    @pytest.fixture
    async def store(self, runtime):
        redis = Redis.from_url(REDIS)
        yield (
            SessionStore(runtime.sessionmaker, redis, session_holder_loader(runtime.settings)),
            redis,
        )
        await redis.aclose()

    async def test_record_ttl_is_the_remaining_lifetime(self, client, tenant, store):
        sessions, redis = store
        login = await browser_login(client, tenant)
        found = await sessions.lookup(_hash(login.cookie))
        assert found is not None
        assert str(found.id) == login.id
        ttl = await redis.ttl(f"warden:session:{_hash(login.cookie)}")
        assert 43_200 - 10 < ttl <= 43_200

    async def test_tombstone_is_written_inside_the_revoking_transaction(
        self, client, tenant, runtime, store
    ):
        sessions, redis = store
        login = await browser_login(client, tenant)
        assert await sessions.lookup(_hash(login.cookie)) is not None
        async with runtime.sessionmaker() as db:
            row = await _row(runtime, db, tenant.id, login.id)
            await sessions.revoke(db, [row])
            # Not committed yet, and already refused by every process reading Redis.
            assert await sessions.lookup(_hash(login.cookie)) is None
            await db.rollback()
        # Even though the database still says live, no refill resurrects the session.
        assert await sessions.lookup(_hash(login.cookie)) is None
        ttl = await redis.ttl(f"warden:session:{_hash(login.cookie)}")
        assert 43_200 - 10 < ttl <= 43_201
