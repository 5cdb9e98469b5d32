"""`GET /me/export` and `DELETE /me`: a user's right of access and right to erasure."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.apikeys.models import ApiKey
from app.audit.service import prune_chain
from app.audit.verify import verify_chain
from app.core.types import utcnow
from app.credentials.models import BrowserSession
from app.privacy.service import pseudonym
from tests.audit.helpers import events, flush, scoped, tamper
from tests.conftest import PASSWORD, make_endpoint, make_tenant

EXPORT = "/api/v1/me/export"
ME = "/api/v1/me"


async def add_browser_session(runtime, tenant_id: str, user_id: str) -> str:
    """A browser session row for the user, as a browser login would leave it."""
    async with scoped(runtime, tenant_id) as session, session.begin():
        row = BrowserSession(
            tenant_id=uuid.UUID(tenant_id),
            user_id=uuid.UUID(user_id),
            token_hash=hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
            csrf_hash=hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
            expires_at=utcnow() + timedelta(hours=1),
            user_agent="Mozilla/5.0 (test)",
            ip="127.0.0.1",
        )
        session.add(row)
    return str(row.id)


class TestAccess:
    async def test_requires_a_local_user(self, client, tenant):
        assert (await client.get(EXPORT)).status_code == 401
        assert (await client.delete(ME)).status_code == 401
        r = await client.post(
            "/api/v1/api-keys",
            headers=tenant.owner.headers,
            json={"name": "svc", "scopes": ["endpoints:query"]},
        )
        key = {"X-API-Key": r.json()["key"]}
        for method, url in (("GET", EXPORT), ("DELETE", ME)):
            r = await client.request(method, url, headers=key)
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "local_user_required"

    async def test_same_email_in_another_tenant_is_someone_else(self, client, tenant, runtime):
        email = f"twin-{uuid.uuid4().hex[:6]}@example.com"
        mine = await tenant.add_user("member", email=email)
        elsewhere = await make_tenant(client)
        theirs = await elsewhere.add_user("admin", email=email)
        await client.post(
            "/api/v1/api-keys",
            headers=theirs.headers,
            json={"name": "theirs", "scopes": ["endpoints:query"]},
        )
        await flush(runtime)
        data = json.loads((await client.get(EXPORT, headers=mine.headers)).text)
        assert data["profile"]["id"] == mine.id
        assert data["tenant"]["id"] == tenant.id
        assert data["api_keys"] == []
        assert {e["actor"]["id"] for e in data["audit_events"]} == {mine.id}
        assert theirs.id not in json.dumps(data)
        assert elsewhere.id not in json.dumps(data)


class TestExport:
    async def test_everything_about_the_caller_and_no_secret(self, client, tenant, runtime):
        admin = await tenant.add_user("admin")
        refreshed = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": admin.refresh_token}
        )
        assert refreshed.status_code == 200
        await flush(runtime)  # the refresh is a batched event: in the chain before what follows
        r = await client.post(
            "/api/v1/api-keys",
            headers=admin.headers,
            json={"name": "admin-key", "scopes": ["endpoints:query"]},
        )
        api_key = r.json()["key"]
        browser = await add_browser_session(runtime, tenant.id, admin.id)
        await flush(runtime)

        r = await client.get(EXPORT, headers=admin.headers)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["content-disposition"].startswith("attachment;")
        data = r.json()
        assert set(data) == {
            "exported_at",
            "profile",
            "tenant",
            "refresh_sessions",
            "browser_sessions",
            "api_keys",
            "identity_links",
            "audit_events",
        }
        assert data["profile"]["id"] == admin.id
        assert data["profile"]["email"] == admin.email
        assert data["profile"]["role"] == "admin"
        assert "password_hash" not in data["profile"]
        assert data["tenant"]["slug"] == tenant.slug
        sessions = data["refresh_sessions"]
        assert len(sessions) == 2
        assert sessions[0]["used_at"] is not None  # rotated by the refresh
        assert sessions[0]["family_id"] == sessions[1]["family_id"]
        assert set(sessions[0]) == {
            "id",
            "family_id",
            "created_at",
            "expires_at",
            "used_at",
            "revoked_at",
        }
        assert [s["id"] for s in data["browser_sessions"]] == [browser]
        assert data["browser_sessions"][0]["user_agent"] == "Mozilla/5.0 (test)"
        assert [k["name"] for k in data["api_keys"]] == ["admin-key"]
        actions = [e["action"] for e in data["audit_events"]]
        assert actions == ["auth.login", "auth.refresh", "api_key.created", "privacy.exported"]
        assert {e["actor"]["id"] for e in data["audit_events"]} == {admin.id}

        for secret in (
            PASSWORD,
            admin.access_token,
            admin.refresh_token,
            refreshed.json()["refresh_token"],
            api_key,
            hashlib.sha256(api_key.encode()).hexdigest(),
            "argon2",
        ):
            assert secret not in r.text
        assert not re.search(r"token_hash|csrf_hash|key_hash", r.text)

    async def test_the_export_is_audited(self, client, tenant, runtime):
        member = await tenant.add_user("member")
        assert (await client.get(EXPORT, headers=member.headers)).status_code == 200
        (event,) = await events(runtime, tenant.id, "privacy.exported")
        assert (event.actor_id, event.target_id) == (member.id, member.id)


class TestErasure:
    async def test_the_last_owner_cannot_erase_themselves(self, client, tenant):
        r = await client.delete(ME, headers=tenant.owner.headers)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "last_owner"
        assert (
            await client.get("/api/v1/auth/me", headers=tenant.owner.headers)
        ).status_code == 200
        await tenant.login(tenant.owner.email)

    async def test_an_owner_with_a_co_owner_can(self, client, tenant):
        co_owner = await tenant.add_user("owner")
        assert (await client.delete(ME, headers=co_owner.headers)).status_code == 204
        assert (await client.delete(ME, headers=tenant.owner.headers)).status_code == 409

    async def test_erasure_removes_access_and_pseudonymises_the_trail(
        self, client, tenant, runtime
    ):
        h = tenant.owner.headers
        member = await tenant.add_user("member")
        r = await client.post(
            "/api/v1/api-keys", headers=h, json={"name": "k", "scopes": ["endpoints:query"]}
        )
        assert r.status_code == 201
        promoted = await tenant.add_user("admin")
        r = await client.post(
            "/api/v1/api-keys",
            headers=promoted.headers,
            json={"name": "made-by-leaver", "scopes": ["endpoints:query"]},
        )
        leaver_key = r.json()["key"]
        browser = await add_browser_session(runtime, tenant.id, member.id)
        ep = await make_endpoint(tenant)
        # A decision still queued in the batched writer when the erasure starts.
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=member.headers)
        assert r.status_code == 200
        r = await client.delete(ME, headers=member.headers)
        assert r.status_code == 204

        # Gone: the login, the token, the refresh token, the browser session.
        r = await client.post(
            "/api/v1/auth/login",
            json={"email": member.email, "password": PASSWORD, "tenant": tenant.slug},
        )
        assert r.status_code == 401
        r = await client.get("/api/v1/auth/me", headers=member.headers)
        assert r.status_code == 401
        r = await client.post("/api/v1/auth/refresh", json={"refresh_token": member.refresh_token})
        assert r.status_code == 401
        assert (await client.get(f"/api/v1/users/{member.id}", headers=h)).status_code == 404
        async with scoped(runtime, tenant.id) as session:
            left = await session.get(BrowserSession, uuid.UUID(browser))
        assert left is None

        # The trail keeps every event, under one stable pseudonym, with no email and no ip.
        alias = pseudonym(
            runtime.settings.warden_master_key[0], uuid.UUID(tenant.id), uuid.UUID(member.id)
        )
        assert re.fullmatch(r"erased:[0-9a-f]{16}", alias)
        trail = await events(runtime, tenant.id)
        assert not [e for e in trail if e.actor_id == member.id]
        theirs = [e for e in trail if e.actor_id == alias]
        assert [e.action for e in theirs] == ["auth.login", "endpoint.query", "privacy.erased"]
        assert all(e.actor_email is None and e.ip is None for e in theirs)
        erased = theirs[-1]
        assert (erased.target_type, erased.target_id) == ("user", alias)
        # The user's email survives nowhere in the tenant's trail (other actors' rows included).
        assert all(member.email not in json.dumps(e.details) for e in trail)

        # ...and the chain still verifies, over the API too.
        report = await verify_chain(runtime.sessionmaker, uuid.UUID(tenant.id))
        assert report.status == "intact"
        r = await client.post("/api/v1/audit-events/verify", headers=h)
        assert r.json()["status"] == "intact"
        r = await client.get("/api/v1/audit-events", headers=h, params={"actor": alias})
        assert [e["action"] for e in r.json()["items"]] == [
            "privacy.erased",
            "endpoint.query",
            "auth.login",
        ]
        assert r.json()["items"][0]["actor"] == {"type": "user", "id": alias, "email": None}

        # Keys the admin made stay the tenant's, credited to the admin until they leave too.
        assert (await client.delete(ME, headers=promoted.headers)).status_code == 204
        async with scoped(runtime, tenant.id) as session:
            keys = (await session.execute(select(ApiKey))).scalars().all()
        promoted_alias = pseudonym(
            runtime.settings.warden_master_key[0], uuid.UUID(tenant.id), uuid.UUID(promoted.id)
        )
        assert {k.name: k.created_by for k in keys} == {
            "k": tenant.owner.id,
            "made-by-leaver": promoted_alias,
        }
        r = await client.post(
            f"/api/v1/endpoints/{ep['slug']}/query", headers={"X-API-Key": leaver_key}
        )
        assert r.status_code == 200
        assert (await verify_chain(runtime.sessionmaker, uuid.UUID(tenant.id))).status == "intact"

    async def test_erasing_twice_is_a_401(self, client, tenant):
        member = await tenant.add_user("member")
        assert (await client.delete(ME, headers=member.headers)).status_code == 204
        assert (await client.delete(ME, headers=member.headers)).status_code == 401
        assert (await client.get(EXPORT, headers=member.headers)).status_code == 401


class TestPseudonym:
    @pytest.mark.parametrize(
        "user_id",
        [uuid.UUID("00000000-0000-4000-8000-000000000001"), uuid.UUID(int=2**122 - 1)],
    )
    def test_stable_per_user_and_scoped_per_tenant(self, runtime, user_id):
        tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
        first = pseudonym(runtime.settings.warden_master_key[0], tenant_a, user_id)
        assert first == pseudonym(runtime.settings.warden_master_key[0], tenant_a, user_id)
        assert first != pseudonym(runtime.settings.warden_master_key[0], tenant_b, user_id)
        assert first != pseudonym(runtime.settings.warden_master_key[0], tenant_a, uuid.uuid4())
        assert str(user_id) not in first


class TestErasedRowsStayAccountable:
    """An erasure tallies the rows it rewrites: no other row can be passed off as erased."""

    @pytest.fixture
    async def erased(self, client, tenant, runtime):
        member = await tenant.add_user("member")
        ep = await make_endpoint(tenant)
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=member.headers)
        assert r.status_code == 200
        assert (await client.delete(ME, headers=member.headers)).status_code == 204
        alias = pseudonym(
            runtime.settings.warden_master_key[0], uuid.UUID(tenant.id), uuid.UUID(member.id)
        )
        (erasure,) = await events(runtime, tenant.id, "privacy.erased")
        assert erasure.details["events"] == 2  # the login and the query
        return alias, erasure

    async def test_an_older_row_moved_onto_the_pseudonym(self, runtime, tenant, erased):
        alias, erasure = erased
        owner_login = next(
            e for e in await events(runtime, tenant.id, "auth.login") if e.actor_id != alias
        )
        await tamper(runtime, tenant.id, owner_login.seq, actor_id=alias, actor_email=None, ip=None)
        report = await verify_chain(runtime.sessionmaker, uuid.UUID(tenant.id))
        assert report.first_broken is not None
        assert (report.first_broken.seq, report.first_broken.reason) == (
            erasure.seq,
            "actor_mismatch",
        )

    async def test_a_later_row_moved_onto_the_pseudonym(self, client, runtime, tenant, erased):
        alias, erasure = erased
        assert (
            await client.patch("/api/v1/tenant", headers=tenant.owner.headers, json={"name": "N"})
        ).status_code == 200
        later = (await events(runtime, tenant.id, "tenant.updated"))[-1]
        assert later.seq > erasure.seq
        await tamper(runtime, tenant.id, later.seq, actor_id=alias, actor_email=None, ip=None)
        report = await verify_chain(runtime.sessionmaker, uuid.UUID(tenant.id))
        assert report.first_broken is not None
        assert (report.first_broken.seq, report.first_broken.reason) == (
            later.seq,
            "actor_mismatch",
        )

    async def test_an_erased_row_given_back_an_address(self, runtime, tenant, erased):
        alias, _ = erased
        row = next(e for e in await events(runtime, tenant.id) if e.actor_id == alias)
        await tamper(runtime, tenant.id, row.seq, ip="198.51.100.7")
        report = await verify_chain(runtime.sessionmaker, uuid.UUID(tenant.id))
        assert report.first_broken is not None
        assert (report.first_broken.seq, report.first_broken.reason) == (row.seq, "actor_mismatch")

    async def test_pruning_some_erased_rows_keeps_the_chain_intact(self, runtime, tenant, erased):
        alias, _ = erased
        query = next(e for e in await events(runtime, tenant.id) if e.action == "endpoint.query")
        async with runtime.sessionmaker() as session, session.begin():
            assert await prune_chain(session, uuid.UUID(tenant.id), query.at) > 0
        remaining = [e for e in await events(runtime, tenant.id) if e.actor_id == alias]
        assert [e.action for e in remaining] == ["endpoint.query", "privacy.erased"]
        report = await verify_chain(runtime.sessionmaker, uuid.UUID(tenant.id))
        assert report.status == "intact"

    async def test_a_verify_racing_an_erasure_is_not_a_false_alarm(self, client, runtime, tenant):
        member = await tenant.add_user("member")
        for _ in range(3):
            await tenant.login(member.email)
        erased_midway = EraseBeforeSession(runtime.sessionmaker, client, member.headers, 3)
        report = await verify_chain(erased_midway, uuid.UUID(tenant.id), chunk=2)  # type: ignore[arg-type]
        assert erased_midway.erased  # rows the walk had not read yet now carry the pseudonym
        assert report.status == "intact"


class EraseBeforeSession:
    """A session factory that lets `DELETE /me` commit just before one of its sessions opens."""

    def __init__(self, maker, client, headers: dict[str, str], at_call: int) -> None:
        self.maker, self.client, self.headers, self.at_call = maker, client, headers, at_call
        self.calls = 0
        self.erased = False

    def __call__(self) -> object:
        self.calls += 1
        session = self.maker()
        return session if self.calls != self.at_call else _EraseFirst(session, self)


class _EraseFirst:
    def __init__(self, session, owner: EraseBeforeSession) -> None:
        self.session, self.owner = session, owner

    @property
    def info(self) -> dict:
        return self.session.info

    async def __aenter__(self) -> object:
        r = await self.owner.client.delete(ME, headers=self.owner.headers)
        assert r.status_code == 204
        self.owner.erased = True
        return await self.session.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self.session.__aexit__(*exc)
