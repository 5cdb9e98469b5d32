"""Console pages and form posts in process: who may see and do what, CSRF and Origin on every
form, cross-tenant objects as 404, validation messages next to the field, the same services
and audit events as the API."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.routing import APIRoute

from app.core.db import set_session_tenant
from app.identity_providers.models import IdentityProvider
from tests.audit.helpers import append_many, events, tamper
from tests.conftest import PASSWORD, add_policy, make_endpoint
from tests.console.conftest import console_sign_in, signed_in_as
from tests.sessions.conftest import ALLOWED_ORIGIN, PUBLIC_ORIGIN, browser_login

READERS = {"viewer", "admin", "owner"}  # a member's console is their own account
ADMINS = {"admin", "owner"}
EVERYONE = {"viewer", "member", "admin", "owner"}
PAGES = {
    # path: the roles that may see it
    "/console/endpoints": READERS,
    "/console/endpoints/shop": READERS,
    "/console/tenant": READERS,
    "/console/me": EVERYONE,
    "/console/overview": ADMINS,
    "/console/new-endpoint": ADMINS,
    "/console/endpoints/shop/new-policy?type=rule": ADMINS,
    "/console/why": ADMINS,
    "/console/users": ADMINS,
    "/console/issuers": ADMINS,
    "/console/api-keys": ADMINS,
    "/console/audit": ADMINS,
}
LADDER = ["viewer", "member", "admin", "owner"]


async def endpoint_exists(tenant, slug: str) -> bool:
    r = await tenant.client.get(f"/api/v1/endpoints/{slug}", headers=tenant.owner.headers)
    return r.status_code == 200


class TestSignIn:
    async def test_pages_need_a_session_and_say_so_by_redirect(self, client):
        r = await client.get("/console/endpoints")
        assert r.status_code == 303
        assert r.headers["location"] == "/console/sign-in?next=/console/endpoints"

    async def test_a_bearer_token_does_not_open_the_console(self, client, tenant):
        r = await client.get("/console/endpoints", headers=tenant.owner.headers)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/console/sign-in")

    async def test_wrong_password_is_a_page_with_the_message(self, client, tenant):
        r = await client.post(
            "/console/sign-in",
            data={"tenant": tenant.slug, "email": tenant.owner.email, "password": "wrong-" * 3},
            headers={"Origin": PUBLIC_ORIGIN},
        )
        assert r.status_code == 401
        assert 'role="alert"' in r.text
        assert "set-cookie" not in r.headers

    async def test_sign_in_from_a_foreign_origin_is_refused(self, client, tenant):
        r = await client.post(
            "/console/sign-in",
            data={"tenant": tenant.slug, "email": tenant.owner.email, "password": PASSWORD},
            headers={"Origin": "http://evil.example"},
        )
        assert r.status_code == 403
        assert "set-cookie" not in r.headers

    async def test_next_never_leaves_the_console(self, client, tenant):
        for target in ("https://evil.example/", "//evil.example/console/", "/console//evil"):
            r = await client.post(
                "/console/sign-in",
                data={
                    "tenant": tenant.slug,
                    "email": tenant.owner.email,
                    "password": PASSWORD,
                    "next": target,
                },
                headers={"Origin": PUBLIC_ORIGIN},
            )
            assert r.status_code == 303
            assert r.headers["location"] == "/console"
            client.cookies.clear()

    async def test_sign_in_page_is_strict_and_lists_identity_providers(self, client):
        r = await client.get("/console/sign-in", params={"tenant": "acme"})
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["referrer-policy"] == "same-origin"
        assert r.headers["x-frame-options"] == "DENY"
        assert 'id="providers-title"' in r.text
        # No inline script or style anywhere: the CSP would block them.
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)
        assert " style=" not in r.text
        assert "<style" not in r.text

    async def test_sign_out_revokes_the_session(self, client, tenant):
        browser = await console_sign_in(client, tenant)
        r = await browser.post("/console/sign-out")
        assert r.status_code == 303
        assert r.headers["location"] == "/console/sign-in?notice=signed-out"
        r = await browser.get("/console/me")
        assert r.status_code == 303  # the old cookie opens nothing


class TestWhoSeesWhat:
    @pytest.mark.parametrize("role", LADDER)
    async def test_each_page_for_each_role(self, client, tenant, role):
        await make_endpoint(tenant, "shop")
        browser = await signed_in_as(client, tenant, role)
        for path, allowed in PAGES.items():
            r = await browser.get(path)
            expected = 200 if role in allowed else 403
            assert r.status_code == expected, (role, path, r.text[:300])
            # No token in any page: no JWT, and never the HttpOnly session cookie.
            assert "eyJ" not in r.text
            assert browser.cookie not in r.text
            assert r.headers["content-security-policy"].startswith("default-src 'self'")
            if expected == 403:
                assert "Not allowed" in r.text

    @pytest.mark.parametrize(
        ("role", "home"),
        [
            ("owner", "/console/overview"),
            ("admin", "/console/overview"),
            ("member", "/console/me"),
            ("viewer", "/console/endpoints"),
        ],
    )
    async def test_each_role_lands_on_its_page(self, client, tenant, role, home):
        browser = await signed_in_as(client, tenant, role)
        r = await browser.get("/console")
        assert r.headers["location"] == home

    async def test_navigation_shows_only_what_the_role_may_open(self, client, tenant):
        viewer = await signed_in_as(client, tenant, "viewer")
        nav = (await viewer.get("/console/me")).text.split("</nav>")[0]
        assert "/console/endpoints" in nav
        assert "/console/users" not in nav
        assert "/console/audit" not in nav
        member = await signed_in_as(client, tenant, "member")
        nav = (await member.get("/console/me")).text.split('<nav aria-label="Console">')[1]
        nav = nav.split("</nav>")[0]
        assert re.findall(r'href="(/console/[^"]*)"', nav) == ["/console/me"]

    async def test_a_viewer_sees_configuration_without_any_form(self, client, tenant):
        await make_endpoint(tenant, "shop")
        policy = await add_policy(
            tenant, "shop", "access", {"mode": "allow", "patterns": ["*@a.io"]}
        )
        viewer = await signed_in_as(client, tenant, "viewer")
        page = (await viewer.get("/console/endpoints/shop")).text
        main = page.split("<main", 1)[1]
        assert "*@a.io" in main
        assert "<form" not in main
        page = (await viewer.get(f"/console/endpoints/shop/policies/{policy['id']}")).text
        assert "<fieldset disabled>" in page
        assert "Save policy" not in page

    async def test_only_the_owner_sees_tenant_deletion(self, client, tenant):
        admin = await signed_in_as(client, tenant, "admin")
        owner = await console_sign_in(client, tenant)
        assert "Delete the tenant" not in (await admin.get("/console/tenant")).text
        assert "Delete the tenant" in (await owner.get("/console/tenant")).text


class TestViewerAndMemberPostsAreRefused:
    @pytest.mark.parametrize("role", ["viewer", "member"])
    async def test_every_admin_form(self, client, tenant, role):
        await make_endpoint(tenant, "shop")
        policy = await add_policy(
            tenant, "shop", "access", {"mode": "allow", "patterns": ["*@a.io"]}
        )
        browser = await signed_in_as(client, tenant, role)
        posts = {
            "/console/new-endpoint": {"name": "X", "slug": "x-new", "is_active": "on"},
            "/console/endpoints/shop/edit": {"name": "Renamed", "is_active": "on"},
            "/console/endpoints/shop/active": {"active": "false"},
            "/console/endpoints/shop/credential": {"header": "X-Key", "value": "s3cret-value"},
            "/console/endpoints/shop/new-policy": {
                "policy_type": "access",
                "mode": "deny",
                "patterns": "*@*",
            },
            f"/console/endpoints/shop/policies/{policy['id']}/enabled": {"enabled": "false"},
            f"/console/endpoints/shop/policies/{policy['id']}/delete": {},
            "/console/users": {"email": "x@y.io", "password": PASSWORD, "role": "owner"},
            f"/console/users/{tenant.owner.id}": {"role": "viewer"},
            "/console/api-keys": {"name": "k", "scopes": "endpoints:query"},
            "/console/issuers": {"issuer": "https://idp", "jwks_uri": "https://idp/jwks"},
            "/console/tenant": {"name": "Hacked"},
            "/console/tenant/delete": {"confirm": tenant.slug},
            "/console/why": {"endpoint": "shop", "mode": "email", "email": "a@a.io"},
            "/console/audit/verify": {},
            "/console/endpoints/shop/delete": {},
        }
        for path, data in posts.items():
            r = await browser.post(path, data)
            assert r.status_code == 403, (path, r.status_code)
        assert await endpoint_exists(tenant, "shop")
        r = await client.get("/api/v1/endpoints/shop", headers=tenant.owner.headers)
        assert r.json()["name"] == "Shop"
        assert r.json()["credential"] is None
        r = await client.get("/api/v1/endpoints/shop/policies", headers=tenant.owner.headers)
        assert [p["enabled"] for p in r.json()["items"]] == [True]
        forbidden = await events(
            tenant.client._transport.app.state.runtime, tenant.id, "auth.forbidden"
        )
        assert len(forbidden) >= len(posts) - 1


class TestCsrf:
    async def test_a_form_without_its_token_is_refused(self, client, tenant):
        await make_endpoint(tenant, "shop")
        owner = await console_sign_in(client, tenant)
        r = await owner.post("/console/endpoints/shop/delete", csrf=None)
        assert r.status_code == 403
        assert "Cross-site request refused" in r.text
        assert await endpoint_exists(tenant, "shop")

    async def test_a_wrong_token_is_refused(self, client, tenant):
        await make_endpoint(tenant, "shop")
        owner = await console_sign_in(client, tenant)
        r = await owner.post("/console/endpoints/shop/delete", csrf="x" * 43)
        assert r.status_code == 403
        assert await endpoint_exists(tenant, "shop")

    @pytest.mark.parametrize("origin", ["http://evil.example", "null", None])
    async def test_a_forged_cross_origin_post_is_refused(self, client, tenant, origin):
        """The attacker has the cookies and even the token: the Origin gives it away."""
        await make_endpoint(tenant, "shop")
        owner = await console_sign_in(client, tenant)
        r = await owner.post("/console/endpoints/shop/delete", origin=origin)
        assert r.status_code == 403
        assert await endpoint_exists(tenant, "shop")

    async def test_another_sessions_token_is_refused(self, client, tenant):
        await make_endpoint(tenant, "shop")
        first = await console_sign_in(client, tenant)
        second = await console_sign_in(client, tenant)
        r = await first.post("/console/endpoints/shop/delete", csrf=second.csrf)
        assert r.status_code == 403
        assert await endpoint_exists(tenant, "shop")

    async def test_an_allowed_cors_origin_may_post(self, client, tenant):
        await make_endpoint(tenant, "shop")
        owner = await console_sign_in(client, tenant)
        r = await owner.post("/console/endpoints/shop/delete", origin=ALLOWED_ORIGIN)
        assert r.status_code == 303
        assert not await endpoint_exists(tenant, "shop")

    async def test_a_non_form_body_is_refused(self, client, tenant):
        await make_endpoint(tenant, "shop")
        owner = await console_sign_in(client, tenant)
        r = await client.post(
            "/console/endpoints/shop/delete",
            content=f'{{"csrf_token": "{owner.csrf}"}}',
            headers={**owner.headers(), "Content-Type": "text/plain"},
        )
        assert r.status_code == 422
        assert await endpoint_exists(tenant, "shop")


# Form fields a post to each templated console route needs to get past validation.
FORMS = {
    "/console/endpoints/{slug}/edit": {"name": "Mine", "is_active": "on"},
    "/console/endpoints/{slug}/active": {"active": "false"},
    "/console/endpoints/{slug}/credential": {"header": "X-Key", "value": "stolen-1234"},
    "/console/endpoints/{slug}/new-policy": {
        "policy_type": "access",
        "mode": "deny",
        "patterns": "*@*",
    },
    "/console/endpoints/{slug}/policies/{policy_id}/edit": {"mode": "deny", "patterns": "*@*"},
    "/console/endpoints/{slug}/policies/{policy_id}/enabled": {"enabled": "false"},
    "/console/users/{user_id}": {"role": "viewer"},
    "/console/identity-providers/{provider_id}": {
        "issuer": "https://idp.mine.example",
        "client_id": "mine",
        "scopes": "openid",
        "enabled": "on",
    },
    "/console/identity-providers/{provider_id}/enabled": {"enabled": "off"},
}


def console_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the console whose path carries an id or slug."""
    from app.console.router import ROUTERS

    return [
        (method, route.path)
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and "{" in route.path
        for method in sorted(route.methods - {"HEAD", "OPTIONS"})
    ]


async def _their_provider(runtime, tenant_id) -> uuid.UUID:
    """An identity provider of another tenant, stored as registering one stores it (discovery
    needs a live provider; the console's own tests register through one)."""
    row = IdentityProvider(
        tenant_id=uuid.UUID(str(tenant_id)),
        name="theirs",
        issuer="https://idp.theirs.example",
        client_id="theirs",
        client_auth="private_key_jwt",
        provider_metadata={"authorization_endpoint": "https://idp.theirs.example/auth"},
        scopes=["openid"],
        claim_mapping={},
        default_role="member",
    )
    async with runtime.sessionmaker() as db, db.begin():
        set_session_tenant(db, row.tenant_id)
        db.add(row)
    return row.id


class TestCrossTenant:
    async def test_every_templated_route_is_404_for_another_tenants_object(
        self, app, client, tenant, other_tenant
    ):
        """The console's isolation matrix: each route with an id, filled with the other
        tenant's object, is a 404 (never a 403 that would confirm it exists), and the other
        tenant's objects are unchanged afterwards."""
        await make_endpoint(other_tenant, "theirs")
        policy = await add_policy(
            other_tenant, "theirs", "access", {"mode": "allow", "patterns": ["*@b.io"]}
        )
        h = other_tenant.owner.headers
        key = await client.post(
            "/api/v1/api-keys", json={"name": "theirs", "scopes": ["endpoints:query"]}, headers=h
        )
        issuer = await client.post(
            "/api/v1/issuers",
            json={
                "issuer": "https://idp.theirs.example",
                "jwks_uri": "http://127.0.0.1:9/jwks.json",
                "audiences": ["api://theirs"],
                "algorithms": ["RS256"],
            },
            headers=h,
        )
        assert issuer.status_code == 201, issuer.text
        their_session = await browser_login(client, other_tenant)
        their_provider = await _their_provider(app.state.runtime, other_tenant.id)
        their_events = await events(app.state.runtime, other_tenant.id)
        ids = {
            "slug": "theirs",
            "policy_id": policy["id"],
            "user_id": other_tenant.owner.id,
            "key_id": key.json()["id"],
            "issuer_id": issuer.json()["id"],
            "session_id": their_session.id,
            "event_id": str(their_events[0].id),
            "provider_id": str(their_provider),
        }
        owner = await console_sign_in(client, tenant)
        routes = console_routes()
        assert len(routes) >= 15
        for method, path in routes:
            url = path
            for name, value in ids.items():
                url = url.replace("{" + name + "}", value)
            assert "{" not in url, f"add the id of {path} to this matrix"
            if method == "GET":
                r = await owner.get(url)
            else:
                r = await owner.post(url, FORMS.get(path, {}))
            assert r.status_code == 404, (method, path, r.status_code)

        assert await endpoint_exists(other_tenant, "theirs")
        got = (await client.get("/api/v1/endpoints/theirs", headers=h)).json()
        assert got["name"] == "Theirs"
        assert got["is_active"] is True
        assert got["credential"] is None
        items = (await client.get("/api/v1/endpoints/theirs/policies", headers=h)).json()["items"]
        assert [(p["id"], p["enabled"]) for p in items] == [(policy["id"], True)]
        assert (await client.get("/api/v1/api-keys", headers=h)).json()["items"][0][
            "revoked_at"
        ] is None
        assert (await client.get("/api/v1/users", headers=h)).json()["items"][0]["role"] == "owner"
        assert len((await client.get("/api/v1/issuers", headers=h)).json()["items"]) == 1
        r = await client.get("/api/v1/auth/me", headers=their_session.headers(csrf=False))
        assert r.status_code == 200  # their browser session is alive
        async with app.state.runtime.sessionmaker() as db:
            set_session_tenant(db, uuid.UUID(str(other_tenant.id)))
            kept = await db.get(IdentityProvider, their_provider)
        assert kept is not None
        assert kept.enabled is True

    async def test_why_cannot_reach_another_tenants_endpoint_or_user(
        self, client, tenant, other_tenant
    ):
        await make_endpoint(other_tenant, "theirs")
        owner = await console_sign_in(client, tenant)
        r = await owner.post(
            "/console/why", {"endpoint": "theirs", "mode": "email", "email": "a@b.io"}
        )
        assert r.status_code == 404
        await make_endpoint(tenant, "mine")
        r = await owner.post(
            "/console/why", {"endpoint": "mine", "mode": "user", "user": other_tenant.owner.id}
        )
        assert r.status_code == 404


class TestEndpoints:
    async def test_create_edit_search_page_disable_delete(self, client, tenant):
        owner = await console_sign_in(client, tenant)
        r = await owner.post(
            "/console/new-endpoint",
            {
                "name": "Billing API",
                "slug": "billing",
                "upstream_url": "http://127.0.0.1:9/",
                "host": f"billing.{tenant.slug}.example",
                "path_prefix": "/v1/",
                "exempt_paths": "/v1/health\n/v1/status",
                "is_active": "on",
            },
        )
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/console/endpoints/billing?notice=endpoint-created"
        api = (await client.get("/api/v1/endpoints/billing", headers=tenant.owner.headers)).json()
        assert api["exempt_paths"] == ["/v1/health", "/v1/status"]
        assert api["host"] == f"billing.{tenant.slug}.example"
        page = (await owner.get("/console/endpoints/billing")).text
        assert "auth_request /_warden;" in page
        assert "forwardAuth" in page
        assert "ext_authz" in page
        assert "RequestAuthentication" in page

        r = await owner.post(
            "/console/endpoints/billing/edit", {"name": "Billing v2", "is_active": "on"}
        )
        assert r.status_code == 303
        r = await owner.post("/console/endpoints/billing/active", {"active": "false"})
        assert r.status_code == 303
        api = (await client.get("/api/v1/endpoints/billing", headers=tenant.owner.headers)).json()
        assert api["name"] == "Billing v2"
        assert api["is_active"] is False
        assert api["host"] is None  # cleared by the edit form's blank field

        for n in range(22):
            await make_endpoint(tenant, f"svc-{n:02d}")
        page = (await owner.get("/console/endpoints", q="BILLING")).text
        assert "/console/endpoints/billing" in page
        assert "svc-01" not in page
        page = (await owner.get("/console/endpoints", q="svc_0")).text  # _ is no wildcard
        assert "svc-01" not in page
        first = (await owner.get("/console/endpoints")).text
        cursor = re.search(r'cursor=([^"&]+)', first)
        assert cursor is not None
        second = (await owner.get("/console/endpoints", cursor=cursor.group(1))).text
        assert "svc-21" in second
        assert "svc-21" not in first

        r = await owner.post("/console/endpoints/billing/delete")
        assert r.status_code == 303
        assert not await endpoint_exists(tenant, "billing")
        actions = [e.action for e in await events(client._transport.app.state.runtime, tenant.id)]
        assert actions.count("endpoint.updated") == 2
        assert "endpoint.deleted" in actions

    async def test_a_bad_field_is_shown_next_to_it(self, client, tenant):
        owner = await console_sign_in(client, tenant)
        r = await owner.post(
            "/console/new-endpoint", {"name": "Bad", "slug": "Not A Slug", "is_active": "on"}
        )
        assert r.status_code == 422
        assert 'id="f-slug-problem"' in r.text
        await make_endpoint(tenant, "taken")
        r = await owner.post("/console/new-endpoint", {"name": "Dup", "slug": "taken"})
        assert r.status_code == 409
        assert "An endpoint with this slug exists." in r.text

    async def test_credential_is_write_only(self, client, tenant):
        await make_endpoint(tenant, "shop")
        owner = await console_sign_in(client, tenant)
        secret = "sk_live_" + uuid.uuid4().hex
        r = await owner.post(
            "/console/endpoints/shop/credential", {"header": "X-Api-Key", "value": secret}
        )
        assert r.status_code == 303
        page = (await owner.get("/console/endpoints/shop")).text
        assert secret not in page
        assert secret[-4:] in page
        assert "X-Api-Key" in page
        r = await owner.post("/console/endpoints/shop/credential/delete")
        assert r.status_code == 303
        assert "No credential" in (await owner.get("/console/endpoints/shop")).text


class TestPolicies:
    async def test_access_rate_limit_and_rule(self, client, tenant):
        await make_endpoint(tenant, "shop")
        owner = await console_sign_in(client, tenant)
        r = await owner.post(
            "/console/endpoints/shop/new-policy",
            {
                "policy_type": "access",
                "mode": "allow",
                "patterns": "*@example.org\nboss@partner.io",
                "enabled": "on",
                "priority": "5",
            },
        )
        assert r.status_code == 303, r.text
        r = await owner.post(
            "/console/endpoints/shop/new-policy",
            {
                "policy_type": "rate_limit",
                "requests_per_period": "10",
                "period_seconds": "60",
                "scope": "per_ip",
                "enabled": "on",
            },
        )
        assert r.status_code == 303, r.text
        rule = {
            "rule": "not",
            "clause": {"rule": "match", "eval": "==", "f1": "args.request.method", "f2": "DELETE"},
        }
        r = await owner.post(
            "/console/endpoints/shop/new-policy",
            {
                "policy_type": "rule",
                "configuration": __import__("json").dumps(rule),
                "enabled": "on",
            },
        )
        assert r.status_code == 303, r.text
        items = (
            await client.get("/api/v1/endpoints/shop/policies", headers=tenant.owner.headers)
        ).json()["items"]
        by_type = {p["policy_type"]: p for p in items}
        assert by_type["access"]["configuration"] == {
            "mode": "allow",
            "patterns": ["*@example.org", "boss@partner.io"],
        }
        assert by_type["access"]["priority"] == 5
        assert by_type["rate_limit"]["configuration"] == {
            "requests_per_period": 10,
            "period_seconds": 60,
            "scope": "per_ip",
        }
        assert by_type["rule"]["configuration"]["clause"]["f2"] == "DELETE"

        # Edit: disable and change the patterns.
        access = by_type["access"]["id"]
        r = await owner.post(
            f"/console/endpoints/shop/policies/{access}/edit",
            {"mode": "deny", "patterns": "*@evil.io", "priority": "1"},
        )
        assert r.status_code == 303
        got = (
            await client.get(
                f"/api/v1/endpoints/shop/policies/{access}", headers=tenant.owner.headers
            )
        ).json()
        assert got["configuration"] == {"mode": "deny", "patterns": ["*@evil.io"]}
        assert got["enabled"] is False

    @pytest.mark.parametrize(
        ("data", "field", "message"),
        [
            (
                {"policy_type": "access", "mode": "allow", "patterns": "a[b]@x.io"},
                "f-patterns",
                "unsupported character",
            ),
            (
                {
                    "policy_type": "rate_limit",
                    "requests_per_period": "0",
                    "period_seconds": "60",
                    "scope": "per_user",
                },
                "f-requests_per_period",
                "greater than or equal to 1",
            ),
            (
                {
                    "policy_type": "rate_limit",
                    "requests_per_period": "ten",
                    "period_seconds": "60",
                    "scope": "per_user",
                },
                "f-requests_per_period",
                "integer",
            ),
            (
                {
                    "policy_type": "rule",
                    "configuration": '{"rule": "match", "eval": "==", "f1": "args.nope", "f2": 1}',
                },
                "f-configuration",
                "unknown field",
            ),
            ({"policy_type": "rule", "configuration": "{not json"}, "f-configuration", "Not JSON"),
            (
                {
                    "policy_type": "access",
                    "mode": "allow",
                    "patterns": "*@x.io",
                    "priority": "5000",
                },
                "f-priority",
                "less than or equal to 1000",
            ),
        ],
    )
    async def test_validation_messages_sit_next_to_the_field(
        self, client, tenant, data, field, message
    ):
        await make_endpoint(tenant, "shop")
        owner = await console_sign_in(client, tenant)
        r = await owner.post("/console/endpoints/shop/new-policy", {"enabled": "on", **data})
        assert r.status_code == 422, r.text
        problem = re.search(rf'id="{field}-problem">([^<]*)<', r.text)
        assert problem is not None, r.text
        assert message in problem.group(1)
        r = await client.get("/api/v1/endpoints/shop/policies", headers=tenant.owner.headers)
        assert r.json()["items"] == []

    async def test_pattern_matches_come_from_the_engine(self, client, tenant):
        viewer = await signed_in_as(client, tenant, "viewer")
        r = await viewer.get(
            "/console/pattern-matches",
            patterns="*@company.com\nbad[",
            emails="ann@company.com\nx@company.com.evil.io\nANN@Company.com",
        )
        assert r.status_code == 200
        data = r.json()
        assert [m["matched"] for m in data["matches"]] == [["*@company.com"], [], ["*@company.com"]]
        assert "bad[" in data["invalid"]


class TestWhy:
    async def test_explains_with_every_kind_of_principal(self, client, tenant):
        await make_endpoint(tenant, "shop")
        allow = await add_policy(
            tenant, "shop", "access", {"mode": "allow", "patterns": ["*@ok.io"]}
        )
        rule = await add_policy(
            tenant,
            "shop",
            "rule",
            {"rule": "match", "eval": "!=", "f1": "args.request.ip", "f2": "10.9.9.9"},
        )
        member = await tenant.add_user("member", email="ann@ok.io")
        owner = await console_sign_in(client, tenant)

        r = await owner.post(
            "/console/why", {"endpoint": "shop", "mode": "user", "user": member.id}
        )
        assert 'data-verdict="allowed"' in r.text
        r = await owner.post(
            "/console/why",
            {"endpoint": "shop", "mode": "email", "email": "eve@evil.io", "role": "admin"},
        )
        assert 'data-verdict="denied"' in r.text
        assert allow["id"] in r.text
        assert "no pattern of allow policy" in r.text
        r = await owner.post(
            "/console/why",
            {
                "endpoint": "shop",
                "mode": "claims",
                "claims": '{"email": "bob@ok.io", "role": "member"}',
                "ip": "10.9.9.9",
            },
        )
        assert 'data-verdict="denied"' in r.text
        assert rule["id"] in r.text
        r = await owner.post("/console/why", {"endpoint": "shop", "mode": "claims", "claims": "[1"})
        assert r.status_code == 422
        assert 'id="f-claims-problem"' in r.text
        r = await owner.post(
            "/console/why", {"endpoint": "shop", "mode": "email", "email": "a@ok.io", "ip": "nope"}
        )
        assert r.status_code == 422
        assert 'id="f-ip-problem"' in r.text
        checks = await events(client._transport.app.state.runtime, tenant.id, "authz.check")
        assert len(checks) == 3
        assert all(e.details["what_if"] for e in checks)

    async def test_a_denied_query_in_the_audit_view_opens_the_explainer(self, client, tenant):
        await make_endpoint(tenant, "shop")
        await add_policy(tenant, "shop", "access", {"mode": "allow", "patterns": ["*@ok.io"]})
        member = await tenant.add_user("member")
        r = await client.post("/api/v1/endpoints/shop/query", json={}, headers=member.headers)
        assert r.status_code == 403
        await client._transport.app.state.runtime.audit.flush()
        owner = await console_sign_in(client, tenant)
        page = (await owner.get("/console/audit", action="endpoint.query", outcome="denied")).text
        link = re.search(r'href="(/console/why\?[^"]+)"', page)
        assert link is not None
        prefilled = (await owner.get(link.group(1).replace("&amp;", "&"))).text
        assert f'<option value="{member.id}" selected>' in prefilled
        assert '<option value="shop" selected>' in prefilled


class TestUsers:
    async def test_create_change_role_deactivate_and_the_last_owner(self, client, tenant):
        owner = await console_sign_in(client, tenant)
        r = await owner.post(
            "/console/users", {"email": "new@x.io", "password": PASSWORD, "role": "viewer"}
        )
        assert r.status_code == 303
        users = (await client.get("/api/v1/users", headers=tenant.owner.headers)).json()["items"]
        new = next(u for u in users if u["email"] == "new@x.io")
        assert new["role"] == "viewer"
        assert (
            await owner.post(f"/console/users/{new['id']}", {"role": "admin"})
        ).status_code == 303
        assert (
            await owner.post(f"/console/users/{new['id']}", {"active": "false"})
        ).status_code == 303
        got = (await client.get(f"/api/v1/users/{new['id']}", headers=tenant.owner.headers)).json()
        assert got["role"] == "admin"
        assert got["is_active"] is False

        r = await owner.post(f"/console/users/{tenant.owner.id}", {"role": "admin"})
        assert r.status_code == 409
        assert "The tenant must keep at least one owner." in r.text
        r = await owner.post(
            "/console/users", {"email": "x@y.io", "password": "x", "role": "member"}
        )
        assert r.status_code == 422
        assert 'id="f-password-problem"' in r.text
        r = await owner.post(
            "/console/users", {"email": "bad", "password": PASSWORD, "role": "member"}
        )
        assert r.status_code == 422
        assert 'id="f-email-problem"' in r.text

    async def test_an_admin_cannot_make_an_owner(self, client, tenant):
        admin = await signed_in_as(client, tenant, "admin")
        r = await admin.post(
            "/console/users", {"email": "o@x.io", "password": PASSWORD, "role": "owner"}
        )
        assert r.status_code == 403
        assert "Only an owner can create another owner." in r.text


class TestApiKeys:
    async def test_the_secret_is_shown_once(self, client, tenant):
        owner = await console_sign_in(client, tenant)
        r = await owner.post(
            "/console/api-keys",
            [
                ("name", "ci"),
                ("scopes", "endpoints:query"),
                ("scopes", "authz:check"),
                ("expires_on", "2099-01-01"),
            ],
        )
        assert r.status_code == 201
        secret = re.search(r'id="new-key"[^>]*>(wk_[^<]+)<', r.text)
        assert secret is not None
        assert r.headers["cache-control"] == "no-store"
        listed = (await owner.get("/console/api-keys")).text
        assert secret.group(1) not in listed
        assert "authz:check" in listed
        keys = (await client.get("/api/v1/api-keys", headers=tenant.owner.headers)).json()["items"]
        assert keys[0]["expires_at"].startswith("2099-01-01T23:59:59")
        r = await owner.post(f"/console/api-keys/{keys[0]['id']}/revoke")
        assert r.status_code == 303
        r = await client.get("/api/v1/endpoints", headers={"X-API-Key": secret.group(1)})
        assert r.status_code == 401

    async def test_no_scope_is_a_message(self, client, tenant):
        owner = await console_sign_in(client, tenant)
        r = await owner.post("/console/api-keys", {"name": "none"})
        assert r.status_code == 422
        assert "wk_" not in r.text


class TestIssuers:
    async def test_trust_and_remove_with_the_apis_checks(self, client, tenant):
        owner = await console_sign_in(client, tenant)
        r = await owner.post(
            "/console/issuers",
            [
                ("issuer", "https://idp.example"),
                ("source", "jwks_uri"),
                ("jwks_uri", "http://127.0.0.1:9/jwks.json"),
                ("audiences", "api://shop"),
                ("algorithms", "RS256"),
            ],
        )
        assert r.status_code == 303, r.text
        page = (await owner.get("/console/issuers")).text
        assert "https://idp.example" in page
        assert "not fetched yet" in page
        issuer = (await client.get("/api/v1/issuers", headers=tenant.owner.headers)).json()[
            "items"
        ][0]
        r = await owner.post(
            "/console/issuers",
            [
                ("issuer", "https://idp2"),
                ("source", "jwks_uri"),
                ("jwks_uri", "http://127.0.0.1:9/j"),
                ("audiences", "a"),
            ],
        )
        assert r.status_code == 422
        assert "algorithms" in r.text
        assert (await owner.post(f"/console/issuers/{issuer['id']}/delete")).status_code == 303
        assert (await client.get("/api/v1/issuers", headers=tenant.owner.headers)).json()[
            "items"
        ] == []


class TestAuditAndOverview:
    async def test_filters_pages_details_and_verify(self, client, tenant):
        runtime = client._transport.app.state.runtime
        await make_endpoint(tenant, "shop")
        await append_many(runtime.sessionmaker, tenant.id, 60)
        owner = await console_sign_in(client, tenant)
        await runtime.audit.flush()
        first = (await owner.get("/console/audit")).text
        older = re.search(r'href="/console/audit\?(cursor=[^"]+)" rel="next"', first)
        assert older is not None
        second = (await owner.get("/console/audit?" + older.group(1).replace("&amp;", "&"))).text
        assert "<code>tenant.created</code>" in second
        filtered = (await owner.get("/console/audit", action="endpoint.created")).text
        assert filtered.count("<code>endpoint.created</code>") == 1
        assert "<code>session.created</code>" not in filtered
        r = await owner.get("/console/audit", since="yesterday")
        assert r.status_code == 422
        r = await owner.get("/console/audit", actor="", action="endpoint.created")
        assert r.status_code == 303
        assert r.headers["location"] == "/console/audit?action=endpoint.created"
        event = next(e for e in await events(runtime, tenant.id) if e.action == "endpoint.created")
        page = (await owner.get(f"/console/audit/{event.id}")).text
        assert '"slug": "shop"' in page.replace("&#34;", '"')
        assert "/api/v1/audit-events/export?action=endpoint.created&amp;format=csv" in filtered
        export = await client.get(
            "/api/v1/audit-events/export",
            params={"action": "endpoint.created", "format": "csv"},
            headers=owner.headers(None),
        )
        assert export.status_code == 200
        assert len(export.text.strip().splitlines()) == 2

        r = await owner.post("/console/audit/verify")
        assert 'data-verdict="intact"' in r.text
        await tamper(runtime, tenant.id, 2, outcome="failure")
        r = await owner.post("/console/audit/verify")
        assert 'data-verdict="broken"' in r.text
        assert "#2" in r.text

    async def test_overview_counts_the_last_hour(self, client, tenant):
        await make_endpoint(tenant, "shop")
        await add_policy(tenant, "shop", "access", {"mode": "allow", "patterns": ["*@ok.io"]})
        member = await tenant.add_user("member")
        for _ in range(3):
            await client.post("/api/v1/endpoints/shop/query", json={}, headers=member.headers)
        await client.post("/api/v1/endpoints/shop/query", json={}, headers=tenant.owner.headers)
        await client._transport.app.state.runtime.audit.flush()
        owner = await console_sign_in(client, tenant)
        page = (await owner.get("/console/overview")).text
        assert "Decisions in the last hour: 4" in page
        assert re.search(r"<td>shop</td><td>4</td><td>0</td><td>4</td>", page)
        assert page.count('class="bar denied"') >= 1
        assert "Why?" in page


class TestMyAccount:
    async def test_sessions_sign_out_elsewhere_export_and_delete(self, client, tenant):
        member = await tenant.add_user("member")
        here = await console_sign_in(client, tenant, member.email)
        elsewhere = await console_sign_in(client, tenant, member.email)
        page = (await here.get("/console/me")).text
        assert page.count('/revoke">') >= 2 or page.count("Sign out</button>") >= 2
        assert "this browser" in page
        r = await here.post("/console/me/sessions/revoke-others")
        assert r.status_code == 303
        assert (await elsewhere.get("/console/me")).status_code == 303
        assert (await here.get("/console/me")).status_code == 200
        export = await client.get("/api/v1/me/export", headers=here.headers(None))
        assert export.status_code == 200
        assert member.email in export.text

        r = await here.post("/console/me/delete", {"confirm": "someone@else.io"})
        assert r.status_code == 403
        r = await here.post("/console/me/delete", {"confirm": member.email.upper()})
        assert r.status_code == 303
        users = (await client.get("/api/v1/users", headers=tenant.owner.headers)).json()["items"]
        assert member.email not in [u["email"] for u in users]

    async def test_the_last_owner_cannot_delete_the_account(self, client, tenant):
        owner = await console_sign_in(client, tenant)
        r = await owner.post("/console/me/delete", {"confirm": tenant.owner.email})
        assert r.status_code == 409


class TestTenant:
    async def test_rename_and_owner_deletes_with_confirmation(self, client, tenant):
        owner = await console_sign_in(client, tenant)
        r = await owner.post(
            "/console/tenant", {"name": "Renamed Co", "access_token_ttl_seconds": "600"}
        )
        assert r.status_code == 303
        r = await client.get("/api/v1/tenant", headers=tenant.owner.headers)
        assert r.json()["name"] == "Renamed Co"
        assert r.json()["settings"]["access_token_ttl_seconds"] == 600
        r = await owner.post(
            "/console/tenant", {"name": "Renamed Co", "access_token_ttl_seconds": "5"}
        )
        assert r.status_code == 422
        assert 'id="f-access_token_ttl_seconds-problem"' in r.text
        r = await owner.post("/console/tenant", {"name": "Again"})  # blank keeps the value
        assert r.status_code == 303
        r = await client.get("/api/v1/tenant", headers=tenant.owner.headers)
        assert r.json()["settings"]["access_token_ttl_seconds"] == 600
        assert (await owner.post("/console/tenant/delete", {"confirm": "nope"})).status_code == 403
        r = await owner.post("/console/tenant/delete", {"confirm": tenant.slug})
        assert r.status_code == 303
        r = await client.post(
            "/api/v1/auth/login",
            json={"email": tenant.owner.email, "password": PASSWORD, "tenant": tenant.slug},
        )
        assert r.status_code == 401


class TestOfflineDocs:
    @pytest.mark.parametrize("path", ["/docs", "/redoc"])
    async def test_docs_load_nothing_from_elsewhere(self, client, path):
        r = await client.get(path)
        assert r.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert sources
        assert all(s.startswith("/") for s in sources), sources
        assert "cdn" not in r.text.lower()
        assert "fonts.googleapis" not in r.text
        for source in sources:
            if source.startswith("/docs-static/"):
                asset = await client.get(source)
                assert asset.status_code == 200
                assert len(asset.content) > 1000
