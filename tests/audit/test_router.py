"""`GET /audit-events` and `GET /audit-events/export`: who may read, what they see, filters."""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.audit.schemas import CSV_COLUMNS
from app.audit.service import EventData, append_events
from app.core.identity import Actor
from tests.audit.helpers import append_many, events, flush
from tests.conftest import add_policy, make_endpoint

LIST = "/api/v1/audit-events"
EXPORT = "/api/v1/audit-events/export"
VERIFY = "/api/v1/audit-events/verify"


async def all_pages(client, headers, **params) -> list[dict]:
    """Every event the list returns, following next_cursor."""
    seen: list[dict] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get(LIST, headers=headers, params=query)
        assert r.status_code == 200, r.text
        seen += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return seen


class TestAccess:
    """Only the tenant's admins and owners, with a token; never another tenant's events."""

    async def test_requires_authentication(self, client):
        assert (await client.get(LIST)).status_code == 401
        assert (await client.get(EXPORT)).status_code == 401
        assert (await client.post(VERIFY)).status_code == 401

    @pytest.mark.parametrize("role", ["member", "viewer"])
    async def test_members_and_viewers_are_refused_and_audited(self, client, tenant, runtime, role):
        user = await tenant.add_user(role)
        for method, url in (("GET", LIST), ("GET", EXPORT), ("POST", VERIFY)):
            r = await client.request(method, url, headers=user.headers)
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "insufficient_role"
        refused = await events(runtime, tenant.id, "auth.forbidden")
        assert [e.actor_id for e in refused] == [user.id] * 3
        assert {e.details["path"] for e in refused} == {LIST, EXPORT, VERIFY}
        assert all(e.outcome == "denied" and e.details["required"] == "admin" for e in refused)

    async def test_api_keys_are_refused(self, client, tenant):
        r = await client.post(
            "/api/v1/api-keys",
            headers=tenant.owner.headers,
            json={"name": "k", "scopes": ["endpoints:query", "authz:check"]},
        )
        key = r.json()["key"]
        for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
            r = await client.get(LIST, headers=headers)
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "insufficient_scope"
            assert (await client.get(EXPORT, headers=headers)).status_code == 403
            assert (await client.post(VERIFY, headers=headers)).status_code == 403

    async def test_another_tenants_events_never_show(self, client, tenant, other_tenant):
        await make_endpoint(other_tenant, slug="shared-slug")
        await make_endpoint(tenant, slug="shared-slug")
        theirs = {other_tenant.owner.id, other_tenant.id}
        mine = await all_pages(client, tenant.owner.headers)
        assert mine
        assert not {e["actor"]["id"] for e in mine} & theirs
        assert not {e["target"]["id"] for e in mine} & theirs
        by_their_actor = await all_pages(client, tenant.owner.headers, actor=other_tenant.owner.id)
        assert by_their_actor == []
        by_their_email = await all_pages(
            client, tenant.owner.headers, actor=other_tenant.owner.email
        )
        assert by_their_email == []
        r = await client.get(
            EXPORT, headers=tenant.owner.headers, params={"endpoint": "shared-slug"}
        )
        exported = [json.loads(line) for line in r.text.splitlines()]
        assert len(exported) == 1
        assert exported[0]["actor"]["id"] == tenant.owner.id
        r = await client.post(VERIFY, headers=tenant.owner.headers)
        assert r.json()["checked"] == len(mine) + 1  # + audit.exported


class TestList:
    async def test_events_newest_first_with_masked_emails(self, client, tenant):
        r = await client.get(LIST, headers=tenant.owner.headers)
        assert r.status_code == 200
        items = r.json()["items"]
        assert [e["action"] for e in items] == ["auth.login", "user.created", "tenant.created"]
        assert [e["seq"] for e in items] == [3, 2, 1]
        login = items[0]
        assert set(login) == {
            "id",
            "seq",
            "at",
            "actor",
            "action",
            "target",
            "outcome",
            "ip",
            "request_id",
            "details",
        }
        assert login["actor"] == {
            "type": "user",
            "id": tenant.owner.id,
            "email": f"o***@{tenant.slug}.example",
        }
        assert login["target"] == {"type": "user", "id": tenant.owner.id}
        assert login["outcome"] == "success"
        assert login["ip"]
        assert login["request_id"]
        assert datetime.fromisoformat(login["at"]).tzinfo is not None
        assert tenant.owner.email not in r.text

    async def test_cursor_pages_are_stable_while_events_arrive(self, client, tenant, runtime):
        await append_many(runtime.sessionmaker, tenant.id, 7)
        before = {e.seq for e in await events(runtime, tenant.id)}
        seen: list[int] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            r = await client.get(LIST, headers=tenant.owner.headers, params=params)
            page = r.json()
            assert len(page["items"]) <= 3
            seen += [e["seq"] for e in page["items"]]
            # New events keep arriving at the head; pages already handed out do not shift.
            await append_many(runtime.sessionmaker, tenant.id, 2)
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == sorted(before, reverse=True)

    async def test_filters(self, client, tenant, runtime):
        h = tenant.owner.headers
        admin = await tenant.add_user("admin", email=f"zed@{tenant.slug}.example")
        ep = await make_endpoint(tenant, slug="filtered")
        await add_policy(tenant, "filtered", "rule", {"rule": "allow"})
        await make_endpoint(tenant, slug="unrelated")
        r = await client.post("/api/v1/endpoints/filtered/query", headers=admin.headers)
        assert r.status_code == 200
        r = await client.post(
            "/api/v1/auth/login",
            json={"email": admin.email, "password": "wrong-password", "tenant": tenant.slug},
        )
        assert r.status_code == 401
        await flush(runtime)

        async def actions(**params) -> list[str]:
            return [e["action"] for e in await all_pages(client, h, **params)]

        assert await actions(actor=admin.id) == ["auth.login", "endpoint.query", "auth.login"]
        # A full address matches its masked form; so does the masked form itself.
        assert await actions(actor=admin.email) == ["auth.login", "endpoint.query", "auth.login"]
        assert await actions(actor=f"z***@{tenant.slug}.example") == await actions(
            actor=admin.email
        )
        assert await actions(action="auth.login", outcome="failure") == ["auth.login"]
        failed = await all_pages(client, h, action="auth.login", outcome="failure")
        assert failed[0]["details"] == {"reason": "bad_password"}
        assert await actions(endpoint="filtered") == [
            "endpoint.query",
            "policy.created",
            "endpoint.created",
        ]
        assert (await all_pages(client, h, endpoint="filtered"))[-1]["target"]["id"] == ep["id"]
        assert await actions(endpoint="no-such-endpoint") == []

    async def test_since_and_until(self, client, tenant, runtime):
        past = datetime(2020, 1, 1, tzinfo=UTC)
        await append_many(runtime.sessionmaker, tenant.id, 2, action="old.event", at=past)
        h = tenant.owner.headers
        r = await client.get(
            LIST, headers=h, params={"until": (past + timedelta(days=1)).isoformat()}
        )
        assert [e["action"] for e in r.json()["items"]] == ["old.event", "old.event"]
        r = await client.get(LIST, headers=h, params={"since": "2021-01-01T00:00:00Z"})
        assert "old.event" not in {e["action"] for e in r.json()["items"]}
        assert len(r.json()["items"]) == 3
        r = await client.get(
            LIST,
            headers=h,
            params={"since": past.isoformat(), "until": (past + timedelta(seconds=1)).isoformat()},
        )
        assert len(r.json()["items"]) == 2

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": 0},
            {"limit": 201},
            {"cursor": "garbage!!"},
            {"cursor": base64.urlsafe_b64encode(b'{"seq": -1}').decode()},
            {"since": "2024-01-01T00:00:00"},  # no time zone
            {"until": "not a date"},
            {"since": "0001-01-01T00:00:00+01:00"},
            {"since": "2024-02-01T00:00:00Z", "until": "2024-01-01T00:00:00Z"},
            {"endpoint": "Bad Slug"},
            {"action": "x" * 65},
            {"actor": "a" * 257},
        ],
    )
    async def test_bad_input_is_422(self, client, tenant, params):
        r = await client.get(LIST, headers=tenant.owner.headers, params=params)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] in ("validation_error", "invalid_cursor")


class TestExport:
    async def test_jsonl_has_every_matching_event_oldest_first(self, client, tenant, runtime):
        await append_many(runtime.sessionmaker, tenant.id, 5)
        listed = await all_pages(client, tenant.owner.headers, limit=2)
        r = await client.get(EXPORT, headers=tenant.owner.headers)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        disposition = r.headers["content-disposition"]
        assert disposition.startswith(f'attachment; filename="audit-{tenant.slug}-')
        assert disposition.endswith('.jsonl"')
        exported = [json.loads(line) for line in r.text.splitlines()]
        # The export itself is recorded before it is read, so it is the last line.
        assert exported[-1]["action"] == "audit.exported"
        assert exported[:-1] == list(reversed(listed))

    async def test_csv_with_filters_and_formula_cells_defused(self, client, tenant, runtime):
        # An attacker-chosen login email lands in the trail (masked): it must not run as a formula.
        r = await client.post(
            "/api/v1/auth/login",
            json={"email": "=HYPERLINK(x)@evil.example", "password": "x", "tenant": tenant.slug},
        )
        assert r.status_code == 401
        await flush(runtime)
        r = await client.get(
            EXPORT,
            headers=tenant.owner.headers,
            params={"format": "csv", "action": "auth.login"},
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        assert r.headers["content-disposition"].endswith('.csv"')
        rows = list(csv.reader(io.StringIO(r.text)))
        assert tuple(rows[0]) == CSV_COLUMNS
        body = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
        assert [row["outcome"] for row in body] == ["success", "failure"]
        assert body[0]["actor_email"] == f"o***@{tenant.slug}.example"
        assert body[1]["actor_email"] == "'=***@evil.example"
        assert json.loads(body[1]["details"]) == {"reason": "unknown_user"}

    async def test_the_export_is_audited_with_its_filters(self, client, tenant, runtime):
        r = await client.get(
            EXPORT,
            headers=tenant.owner.headers,
            params={"format": "csv", "actor": tenant.owner.email, "since": "2024-01-01T00:00:00Z"},
        )
        assert r.status_code == 200
        (event,) = await events(runtime, tenant.id, "audit.exported")
        assert event.actor_id == tenant.owner.id
        assert event.details == {
            "format": "csv",
            "filters": {
                "actor": f"o***@{tenant.slug}.example",
                "since": "2024-01-01T00:00:00+00:00",
            },
        }

    async def test_unknown_format_is_422(self, client, tenant):
        r = await client.get(EXPORT, headers=tenant.owner.headers, params={"format": "xml"})
        assert r.status_code == 422

    async def test_an_empty_export_is_empty(self, client, tenant):
        r = await client.get(EXPORT, headers=tenant.owner.headers, params={"action": "nothing"})
        assert r.status_code == 200
        assert r.text == ""


class TestSystemChainIsolation:
    async def test_events_without_a_tenant_stay_out_of_tenant_reads(self, client, tenant, runtime):
        marker = f"sys-{uuid.uuid4().hex[:8]}"
        async with runtime.sessionmaker() as session, session.begin():
            await append_events(
                session,
                [
                    EventData(
                        tenant_id=None, action=marker, outcome="success", actor=Actor("system")
                    )
                ],
            )
        assert await all_pages(client, tenant.owner.headers, action=marker) == []
        r = await client.get(EXPORT, headers=tenant.owner.headers, params={"action": marker})
        assert r.text == ""
