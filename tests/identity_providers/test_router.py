"""`/identity-providers`: who may manage them, discovery validated on write (422 naming the
problem), the write-only secret, isolation between tenants, pagination, audit; and the sign-in
links a console lists."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.audit.models import AuditEvent
from app.core.db import set_session_tenant
from app.identity_providers import service
from app.identity_providers.models import IdentityProvider
from tests.identity_providers.conftest import new_tenant, sign_in
from tests.support.oidc_provider import TestProvider
from tests.support.servers import free_port, serve_in_thread

URL = "/api/v1/identity-providers"
SECRET = "s3cr3t-value-of-the-client-WXYZ"


def body(provider: TestProvider, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "corp",
        "issuer": provider.issuer,
        "client_id": "warden",
        "client_secret": SECRET,
        "jit_provisioning": True,
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture(scope="module")
def broken_idp(provider: TestProvider) -> Iterator[str]:
    """Discovery documents with one thing wrong each, under `/<case>`."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def document(case: str) -> dict[str, Any]:
        issuer = f"{base}/{case}"
        doc: dict[str, Any] = {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/auth",
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{provider.issuer}/jwks",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        if case == "mismatch":
            doc["issuer"] = "https://someone-else.example"
        elif case == "plain":
            doc["code_challenge_methods_supported"] = ["plain"]
        elif case == "nojwks":
            doc["jwks_uri"] = f"{issuer}/missing-jwks"
        elif case == "hs256":
            doc["id_token_signing_alg_values_supported"] = ["HS256"]
        elif case == "private":
            doc["token_endpoint"] = "https://10.0.0.1/token"
        return doc

    async def well_known(request: Request) -> Response:
        case = request.path_params["case"]
        if case == "broken":
            return Response("<html>", media_type="text/html")
        return JSONResponse(document(case))

    async def missing(request: Request) -> Response:
        return Response(status_code=404)

    app = Starlette(
        routes=[
            Route("/{case}/.well-known/openid-configuration", well_known),
            Route("/{case}/missing-jwks", missing),
        ]
    )
    with serve_in_thread(app, port) as url:
        yield url


async def create(client: httpx.AsyncClient, handle: Any, payload: dict[str, Any]) -> Any:
    return await client.post(URL, json=payload, headers=handle.owner.headers)


class TestWhoMayManage:
    async def test_unauthenticated_is_401(self, client, provider):
        assert (await client.get(URL)).status_code == 401
        assert (await client.post(URL, json=body(provider))).status_code == 401

    @pytest.mark.parametrize("role", ["member", "viewer"])
    async def test_below_admin_cannot_change(self, client, tenant, provider, role):
        user = await tenant.add_user(role)
        r = await client.post(URL, json=body(provider), headers=user.headers)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_role"

    async def test_viewers_read_but_never_the_secret(self, client, tenant, provider):
        created = await create(client, tenant, body(provider))
        assert created.status_code == 201, created.text
        viewer = await tenant.add_user("viewer")
        r = await client.get(URL, headers=viewer.headers)
        assert r.status_code == 200
        assert [item["name"] for item in r.json()["items"]] == ["corp"]
        for response in (created, r):
            assert SECRET not in response.text
            assert SECRET[:-4] not in response.text
        secret = created.json()["client_secret"]
        assert secret["last4"] == "WXYZ"
        assert len(secret["fingerprint"]) == 16

    async def test_api_keys_cannot_manage(self, client, tenant, provider):
        r = await client.post(
            "/api/v1/api-keys",
            headers=tenant.owner.headers,
            json={"name": "k", "scopes": ["sessions:exchange"]},
        )
        key = r.json()["key"]
        r = await client.post(URL, json=body(provider), headers={"X-API-Key": key})
        assert r.status_code == 403


class TestIsolation:
    async def test_another_tenants_provider_is_404(self, client, tenant, other_tenant, provider):
        r = await create(client, tenant, body(provider))
        provider_id = r.json()["id"]
        for method in ("GET", "PATCH", "DELETE"):
            r = await client.request(
                method,
                f"{URL}/{provider_id}",
                headers=other_tenant.owner.headers,
                json={"enabled": False} if method == "PATCH" else None,
            )
            assert r.status_code == 404, (method, r.text)
            assert r.json()["error"]["code"] == "identity_provider_not_found"
        listed = await client.get(URL, headers=other_tenant.owner.headers)
        assert listed.json()["items"] == []
        # The same name is free in another tenant.
        assert (await create(client, other_tenant, body(provider))).status_code == 201


class TestValidation:
    @pytest.mark.parametrize(
        ("case", "needle"),
        [
            ("mismatch", "issuer mismatch"),
            ("plain", "no S256 in code_challenge_methods_supported"),
            ("nojwks", "no usable JWKS"),
            ("hs256", "no ID-token signing algorithm"),
            ("broken", "not a JSON object"),
            ("private", "token_endpoint"),
        ],
    )
    async def test_discovery_problems_are_named(self, client, tenant, broken_idp, case, needle):
        r = await create(client, tenant, body_for(f"{broken_idp}/{case}"))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_discovery"
        assert needle in r.json()["error"]["message"]

    async def test_unreachable_issuer(self, client, tenant):
        r = await create(client, tenant, body_for(f"http://127.0.0.1:{free_port()}"))
        assert r.status_code == 422
        assert "unreachable" in r.json()["error"]["message"]

    async def test_issuer_must_pass_the_outbound_guard(self, client, tenant):
        for issuer in ("http://10.1.2.3", "http://idp.example", "file:///etc/passwd"):
            r = await create(client, tenant, body_for(issuer))
            assert r.status_code == 422, (issuer, r.text)

    @pytest.mark.parametrize(
        "changes",
        [
            {"default_role": "admin"},
            {"default_role": "owner"},
            {"client_secret": None},
            {"client_auth": "private_key_jwt"},  # with a secret
            {"scopes": ["email"]},
            {"allowed_email_domains": ["not a domain"]},
            {"name": "Has Spaces"},
            {"claim_mapping": {"subject": "sub", "extra": "x"}},
            {"unknown": True},
        ],
    )
    async def test_bad_bodies_are_422(self, client, tenant, provider, changes):
        r = await create(client, tenant, body(provider, **changes))
        assert r.status_code == 422, r.text

    async def test_duplicate_name_is_409(self, client, tenant, provider):
        assert (await create(client, tenant, body(provider))).status_code == 201
        r = await create(client, tenant, body(provider))
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "identity_provider_exists"


def body_for(issuer: str) -> dict[str, Any]:
    return {"name": "corp", "issuer": issuer, "client_id": "w", "client_secret": SECRET}


class TestLifecycle:
    async def test_update_rotates_the_secret_and_delete_audits(
        self, client, tenant, provider, runtime
    ):
        r = await create(client, tenant, body(provider))
        first = r.json()
        r = await client.patch(
            f"{URL}/{first['id']}",
            headers=tenant.owner.headers,
            json={"client_secret": "another-secret-9876", "jit_provisioning": False},
        )
        assert r.status_code == 200, r.text
        assert r.json()["client_secret"]["last4"] == "9876"
        assert r.json()["jit_provisioning"] is False
        async with runtime.sessionmaker() as db:
            set_session_tenant(db, uuid.UUID(tenant.id))
            row = await db.get(IdentityProvider, uuid.UUID(first["id"]))
            assert row is not None
            assert "another-secret" not in (row.secret_ciphertext or "")
            assert service.client_secret(runtime.master_keys, row) == "another-secret-9876"
        r = await client.delete(f"{URL}/{first['id']}", headers=tenant.owner.headers)
        assert r.status_code == 204
        assert (
            await client.get(f"{URL}/{first['id']}", headers=tenant.owner.headers)
        ).status_code == 404
        await runtime.audit.flush()
        async with runtime.sessionmaker() as db:
            set_session_tenant(db, uuid.UUID(tenant.id))
            stmt = (
                select(AuditEvent)
                .where(AuditEvent.action.like("identity_provider.%"))  # type: ignore[attr-defined]
                .order_by(AuditEvent.seq)  # type: ignore[arg-type]
            )
            events = list((await db.execute(stmt)).scalars())
        assert [e.action for e in events] == [
            "identity_provider.created",
            "identity_provider.updated",
            "identity_provider.deleted",
        ]
        assert all(SECRET not in str(e.details) for e in events)
        assert events[1].details["changed"] == ["client_secret", "jit_provisioning"]

    async def test_pagination(self, client, tenant, provider):
        for n in range(3):
            assert (
                await create(client, tenant, body(provider, name=f"idp-{n}"))
            ).status_code == 201
        r = await client.get(URL, params={"limit": 2}, headers=tenant.owner.headers)
        page = r.json()
        assert len(page["items"]) == 2
        assert page["next_cursor"]
        r = await client.get(
            URL, params={"limit": 2, "cursor": page["next_cursor"]}, headers=tenant.owner.headers
        )
        assert [i["name"] for i in r.json()["items"]] == ["idp-2"]
        assert r.json()["next_cursor"] is None

    async def test_sign_in_links_list_enabled_providers(self, client, tenant, provider, runtime):
        await create(client, tenant, body(provider, name="alpha"))
        await create(client, tenant, body(provider, name="beta", enabled=False))
        async with runtime.sessionmaker() as db:
            set_session_tenant(db, uuid.UUID(tenant.id))
            links = await service.enabled_sign_in_links(db, "http://warden.test", tenant.slug)
        assert [(link.name, link.start_url) for link in links] == [
            ("alpha", f"http://warden.test/api/v1/sessions/oidc/{tenant.slug}/alpha/start")
        ]


class TestPrivateKeyJwt:
    async def test_sign_in_with_a_client_key_warden_made(self, warden, provider):
        tenant = await new_tenant(warden.url)
        name = "keyed"
        async with httpx.AsyncClient(base_url=warden.url, timeout=15) as c:
            r = await c.post(
                URL,
                headers=tenant.headers,
                json={
                    "name": name,
                    "issuer": provider.issuer,
                    "client_id": "pending",
                    "client_auth": "private_key_jwt",
                    "jit_provisioning": True,
                },
            )
            assert r.status_code == 201, r.text
            created = r.json()
            assert created["client_secret"] is None
            jwk = created["client_jwk"]
            assert jwk["kty"] == "EC"
            assert "d" not in jwk
            client = await provider.register_client(
                [created["redirect_uri"]], auth="private_key_jwt", jwks={"keys": [jwk]}
            )
            r = await c.patch(
                f"{URL}/{created['id']}",
                headers=tenant.headers,
                json={"client_id": client["client_id"]},
            )
            assert r.status_code == 200, r.text
            registered = type("R", (), {"start_url": created["sign_in_url"]})()
        async with httpx.AsyncClient(timeout=10) as browser:
            signed = await sign_in(browser, warden.url, registered, f"kim@{tenant.domain}")  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=warden.url, timeout=10) as c:
            r = await c.get("/api/v1/auth/me", headers={"Cookie": f"session_id={signed.cookie}"})
        assert r.json()["email"] == f"kim@{tenant.domain}"
