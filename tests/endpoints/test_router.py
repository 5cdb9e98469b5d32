"""Endpoints, their policies and their encrypted upstream credential."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import select

from app.core.db import SKIP_TENANT_FILTER
from app.upstream_secrets.models import UpstreamCredential
from tests.conftest import add_policy, make_endpoint

SECRET = "sk-upstream-9f8e7d6c5b4a"


class TestPermissions:
    @pytest.mark.parametrize("role", ["member", "viewer"])
    async def test_non_admins_read_but_cannot_write(self, client, tenant, role):
        ep = await make_endpoint(tenant)
        user = await tenant.add_user(role)
        h = user.headers
        if role == "viewer":
            assert (await client.get("/api/v1/endpoints", headers=h)).status_code == 200
            assert (
                await client.get(f"/api/v1/endpoints/{ep['slug']}", headers=h)
            ).status_code == 200
        r = await client.post("/api/v1/endpoints", headers=h, json={"name": "X", "slug": "xyz"})
        assert r.status_code == 403
        r = await client.patch(
            f"/api/v1/endpoints/{ep['slug']}", headers=h, json={"is_active": False}
        )
        assert r.status_code == 403
        r = await client.put(
            f"/api/v1/endpoints/{ep['slug']}/credential",
            headers=h,
            json={"header": "X-Key", "value": "whatever-value"},
        )
        assert r.status_code == 403
        r = await client.post(
            f"/api/v1/endpoints/{ep['slug']}/policies",
            headers=h,
            json={"policy_type": "rule", "configuration": {"rule": "allow"}},
        )
        assert r.status_code == 403


class TestEndpointCrud:
    async def test_create_get_update_delete(self, client, tenant, upstream):
        h = tenant.owner.headers
        ep = await make_endpoint(
            tenant,
            upstream_url=f"{upstream}/echo",
            host="api.acme.example",
            path_prefix="/v1",
            description="demo",
        )
        assert ep["host"] == "api.acme.example"
        r = await client.post(
            "/api/v1/endpoints", headers=h, json={"name": "Dup", "slug": ep["slug"]}
        )
        assert r.status_code == 409
        r = await client.patch(
            f"/api/v1/endpoints/{ep['slug']}",
            headers=h,
            json={"description": None, "upstream_url": None},
        )
        assert r.status_code == 200
        assert r.json()["description"] is None
        assert r.json()["upstream_url"] is None
        r = await client.get("/api/v1/endpoints", headers=h, params={"limit": 1})
        assert len(r.json()["items"]) == 1
        assert (
            await client.delete(f"/api/v1/endpoints/{ep['slug']}", headers=h)
        ).status_code == 204
        assert (await client.get(f"/api/v1/endpoints/{ep['slug']}", headers=h)).status_code == 404

    @pytest.mark.parametrize(
        ("body", "fragment"),
        [
            ({"name": "X", "slug": "Bad Slug"}, "slug"),
            ({"name": "X", "slug": "ab"}, "slug"),
            ({"name": "X", "slug": "okay-1", "upstream_url": "ftp://x.example/a"}, "scheme"),
            ({"name": "X", "slug": "okay-2", "upstream_url": "http://10.0.0.5/x"}, "https"),
            ({"name": "X", "slug": "okay-3", "upstream_url": "https://10.0.0.5/x"}, "non-public"),
            (
                {"name": "X", "slug": "okay-4", "upstream_url": "https://169.254.169.254/x"},
                "non-public",
            ),
            ({"name": "X", "slug": "okay-5", "upstream_url": "https://[::1]/x"}, "non-public"),
            (
                {"name": "X", "slug": "okay-6", "upstream_url": "https://u:p@api.example/x"},
                "credentials",
            ),
            ({"name": "X", "slug": "okay-7", "host": "bad host!"}, "host"),
            ({"name": "X", "slug": "okay-8", "path_prefix": "no-slash"}, "path_prefix"),
            ({"name": "X", "slug": "okay-9", "surprise": 1}, "unknown field"),
            ({"name": "", "slug": "okay-10"}, "name"),
        ],
    )
    async def test_bad_input_is_422_and_names_the_field(self, client, tenant, body, fragment):
        r = await client.post("/api/v1/endpoints", headers=tenant.owner.headers, json=body)
        assert r.status_code == 422, r.text
        assert fragment in r.json()["error"]["message"]
        r = await client.get(f"/api/v1/endpoints/{body['slug']}", headers=tenant.owner.headers)
        assert r.status_code in (404, 422)


class TestPolicies:
    @pytest.mark.parametrize(
        ("policy_type", "configuration", "fragment"),
        [
            ("access", {"mode": "allow", "patterns": ["*"]}, "patterns"),
            ("access", {"mode": "allow", "patterns": ["a@@b"]}, "patterns"),
            ("access", {"mode": "maybe", "patterns": ["*@x.example"]}, "mode"),
            ("rate_limit", {"requests_per_period": 5, "period_seconds": 0}, "period_seconds"),
            (
                "rate_limit",
                {"requests_per_period": 5, "period_seconds": 60, "scope": "galaxy"},
                "scope",
            ),
            ("rule", {"rule": "match", "eval": "~=", "f1": "args.auth.role", "f2": "x"}, "eval"),
            ("rule", {"rule": "match", "eval": "==", "f1": "args.nope.x", "f2": "x"}, "args.nope"),
            ("rule", {"rule": "explode"}, "rule"),
        ],
    )
    async def test_bad_configurations_are_422(
        self, client, tenant, policy_type, configuration, fragment
    ):
        ep = await make_endpoint(tenant)
        r = await client.post(
            f"/api/v1/endpoints/{ep['slug']}/policies",
            headers=tenant.owner.headers,
            json={"policy_type": policy_type, "configuration": configuration},
        )
        assert r.status_code == 422, r.text
        assert fragment in r.json()["error"]["message"]
        r = await client.get(
            f"/api/v1/endpoints/{ep['slug']}/policies", headers=tenant.owner.headers
        )
        assert r.json()["items"] == []

    async def test_crud_and_unknown_type(self, client, tenant):
        ep = await make_endpoint(tenant)
        h = tenant.owner.headers
        policy = await add_policy(
            tenant,
            ep["slug"],
            "access",
            {"mode": "allow", "patterns": ["*@Corp.Example"]},
            priority=5,
        )
        assert policy["configuration"]["patterns"] == ["*@corp.example"]
        url = f"/api/v1/endpoints/{ep['slug']}/policies/{policy['id']}"
        r = await client.patch(
            url, headers=h, json={"configuration": {"mode": "deny", "patterns": ["x@y.z"]}}
        )
        assert r.status_code == 200
        assert r.json()["configuration"]["mode"] == "deny"
        r = await client.patch(url, headers=h, json={"configuration": {"mode": "deny"}})
        assert r.status_code == 422
        assert (await client.get(url, headers=h)).json()["configuration"]["patterns"] == ["x@y.z"]
        assert (await client.delete(url, headers=h)).status_code == 204
        assert (await client.get(url, headers=h)).status_code == 404
        r = await client.post(
            f"/api/v1/endpoints/{ep['slug']}/policies",
            headers=h,
            json={"policy_type": "magic", "configuration": {}},
        )
        assert r.status_code == 422

    async def test_policy_change_takes_effect_at_once(self, client, tenant):
        ep = await make_endpoint(tenant)
        member = await tenant.add_user("member")
        url = f"/api/v1/endpoints/{ep['slug']}/query"
        assert (await client.post(url, headers=member.headers)).status_code == 200
        policy = await add_policy(tenant, ep["slug"], "rule", {"rule": "deny"})
        assert (await client.post(url, headers=member.headers)).status_code == 403
        await client.patch(
            f"/api/v1/endpoints/{ep['slug']}/policies/{policy['id']}",
            headers=tenant.owner.headers,
            json={"enabled": False},
        )
        assert (await client.post(url, headers=member.headers)).status_code == 200


class TestCredential:
    async def test_write_only_and_encrypted_at_rest(self, client, tenant, runtime):
        ep = await make_endpoint(tenant)
        h = tenant.owner.headers
        r = await client.put(
            f"/api/v1/endpoints/{ep['slug']}/credential",
            headers=h,
            json={"header": "X-Api-Key", "value": SECRET},
        )
        assert r.status_code == 200
        info = r.json()
        assert info["header"] == "X-Api-Key"
        assert info["last4"] == SECRET[-4:]
        assert SECRET not in r.text
        r = await client.get(f"/api/v1/endpoints/{ep['slug']}", headers=h)
        assert r.json()["credential"]["fingerprint"] == info["fingerprint"]
        assert SECRET not in r.text
        async with runtime.sessionmaker() as session:
            rows = (
                (
                    await session.execute(
                        select(UpstreamCredential).execution_options(**{SKIP_TENANT_FILTER: True})
                    )
                )
                .scalars()
                .all()
            )
            assert rows
            assert all(SECRET not in row.ciphertext for row in rows)
        events = await _audit_details(runtime)
        assert SECRET not in events

    async def test_ciphertext_copied_to_another_row_fails(
        self, client, tenant, other_tenant, runtime
    ):
        from app.core.crypto import DecryptionError
        from app.upstream_secrets.service import decrypt_credential

        eps = []
        for handle in (tenant, other_tenant):
            ep = await make_endpoint(handle)
            await client.put(
                f"/api/v1/endpoints/{ep['slug']}/credential",
                headers=handle.owner.headers,
                json={"header": "X-Key", "value": f"value-of-{handle.slug}"},
            )
            eps.append(ep)
        async with runtime.sessionmaker() as session:
            rows = {}
            for ep in eps:
                rows[ep["id"]] = (
                    await session.execute(
                        select(UpstreamCredential)
                        .where(UpstreamCredential.endpoint_id == uuid.UUID(ep["id"]))
                        .execution_options(**{SKIP_TENANT_FILTER: True})
                    )
                ).scalar_one()
        a, b = rows[eps[0]["id"]], rows[eps[1]["id"]]
        assert decrypt_credential(runtime.master_keys, a) == f"value-of-{tenant.slug}"
        b.ciphertext = a.ciphertext  # an attacker with database access swaps ciphertexts
        with pytest.raises(DecryptionError):
            decrypt_credential(runtime.master_keys, b)

    @pytest.mark.parametrize("header", ["Host", "X-User-Email", "bad header", "Content-Length"])
    async def test_reserved_or_invalid_header(self, client, tenant, header):
        ep = await make_endpoint(tenant)
        r = await client.put(
            f"/api/v1/endpoints/{ep['slug']}/credential",
            headers=tenant.owner.headers,
            json={"header": header, "value": "some-value-1234"},
        )
        assert r.status_code == 422

    async def test_value_with_newline_refused_and_delete(self, client, tenant):
        ep = await make_endpoint(tenant)
        url = f"/api/v1/endpoints/{ep['slug']}/credential"
        h = tenant.owner.headers
        r = await client.put(url, headers=h, json={"header": "X-Key", "value": "a\r\nInjected: 1"})
        assert r.status_code == 422
        assert (await client.delete(url, headers=h)).status_code == 404
        await client.put(url, headers=h, json={"header": "X-Key", "value": "fine-value-1234"})
        assert (await client.delete(url, headers=h)).status_code == 204
        r = await client.get(f"/api/v1/endpoints/{ep['slug']}", headers=h)
        assert r.json()["credential"] is None


async def _audit_details(runtime) -> str:
    from app.audit.models import AuditEvent

    await runtime.audit.flush()
    async with runtime.sessionmaker() as session:
        rows = (
            (
                await session.execute(
                    select(AuditEvent).execution_options(**{SKIP_TENANT_FILTER: True})
                )
            )
            .scalars()
            .all()
        )
    return " ".join(str(r.details) + str(r.actor_email) for r in rows)


def test_rotate_encryption_cli(database, tmp_path):
    """A new master key first in the list: the CLI re-encrypts everything, the old key can go."""
    import asyncio

    from app.core.crypto import KeyRing, generate_master_key
    from app.core.db import make_engine
    from app.upstream_secrets.service import decrypt_credential

    old = os.environ["WARDEN_MASTER_KEY"]
    new = generate_master_key()
    env = {**os.environ, "WARDEN_MASTER_KEY": f"{new},{old}"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "rotate-encryption"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "re-encrypted" in result.stdout
    only_new = KeyRing.from_settings([new])

    async def check() -> int:
        from sqlalchemy.ext.asyncio import async_sessionmaker

        engine = make_engine(os.environ["DATABASE_URL"])
        try:
            async with async_sessionmaker(engine)() as session:
                rows = (
                    (
                        await session.execute(
                            select(UpstreamCredential).execution_options(
                                **{SKIP_TENANT_FILTER: True}
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
                for row in rows:
                    assert row.key_id == only_new.active_kid
                    decrypt_credential(only_new, row)
                return len(rows)
        finally:
            await engine.dispose()

    assert asyncio.run(check()) >= 0
    # Put the original key back first so later tests (same database) keep working.
    env = {**os.environ, "WARDEN_MASTER_KEY": f"{old},{new}"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "rotate-encryption"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


class TestHostOwnership:
    async def test_a_host_bound_by_another_tenant_is_refused(self, client, tenant, other_tenant):
        host = f"api-{uuid.uuid4().hex[:6]}.example"
        await make_endpoint(tenant, host=host)
        for candidate in (host, f"{host}:8443", host.upper()):
            r = await client.post(
                "/api/v1/endpoints",
                headers=other_tenant.owner.headers,
                json={"name": "Squat", "slug": f"sq-{uuid.uuid4().hex[:6]}", "host": candidate},
            )
            assert r.status_code == 409, candidate
            assert r.json()["error"]["code"] == "host_taken"
        mine = await make_endpoint(other_tenant)
        r = await client.patch(
            f"/api/v1/endpoints/{mine['slug']}",
            headers=other_tenant.owner.headers,
            json={"host": host},
        )
        assert r.status_code == 409
        # The owner may bind the same host again (another prefix).
        await make_endpoint(tenant, host=host, path_prefix="/v2")
