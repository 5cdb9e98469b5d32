"""Satellite tokens end to end: a real IdP on 127.0.0.1 signs, Warden authenticates, resolves
the tenant, and applies every policy exactly as it does to a local user."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core import jose
from app.core.db import SKIP_TENANT_FILTER
from tests.conftest import add_policy, make_endpoint, make_tenant
from tests.issuers.conftest import bearer, trust
from tests.issuers.idp import MISSING, pem_of, raw_token

ME = "/api/v1/auth/me"


async def me(client, token, tenant=None):
    return await client.get(ME, headers=bearer(token, tenant))


class TestTenantResolution:
    async def test_untrusted_issuer_is_401(self, client, realm):
        r = await me(client, realm.token())
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_token"

    async def test_trusting_an_issuer_takes_effect_at_once(self, client, tenant, realm):
        token = realm.token()
        assert (await me(client, token)).status_code == 401
        await trust(tenant, realm)
        assert (await me(client, token)).status_code == 200

    async def test_only_the_trusting_tenant_accepts_the_token(
        self, client, tenant, other_tenant, realm
    ):
        await trust(tenant, realm)
        token = realm.token()
        r = await me(client, token)
        assert r.status_code == 200, r.text
        assert r.json()["tenant"] == tenant.slug
        r = await me(client, token, tenant=other_tenant.slug)
        assert r.status_code == 401
        r = await me(client, token, tenant="no-such-tenant")
        assert r.status_code == 401

    async def test_several_trusting_tenants_need_x_tenant(
        self, client, tenant, other_tenant, realm
    ):
        # One (issuer, audience) pair has one tenant; a token naming two tenants' audiences
        # is still ambiguous.
        await trust(tenant, realm, audiences=["api://a"])
        await trust(other_tenant, realm, audiences=["api://b"])
        token = realm.token(aud=["api://a", "api://b"])
        r = await me(client, token)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "ambiguous_tenant"
        assert (await me(client, token, tenant=tenant.slug)).json()["tenant"] == tenant.slug
        r = await me(client, token, tenant=other_tenant.slug)
        assert r.json()["tenant"] == other_tenant.slug
        third = await make_tenant(client)
        assert (await me(client, token, tenant=third.slug)).status_code == 401

    async def test_audiences_pick_the_tenant(self, client, tenant, other_tenant, realm):
        await trust(tenant, realm, audiences=["api://a"])
        await trust(other_tenant, realm, audiences=["api://b"])
        r = await me(client, realm.token(aud="api://b"))
        assert r.json()["tenant"] == other_tenant.slug
        r = await me(client, realm.token(aud=["api://x", "api://a"]))
        assert r.json()["tenant"] == tenant.slug
        # X-Tenant naming a trusting tenant whose audiences the token does not carry.
        r = await me(client, realm.token(aud="api://a"), tenant=other_tenant.slug)
        assert r.status_code == 401

    async def test_deleting_the_issuer_refuses_its_cached_tokens(self, client, tenant, realm):
        created = await trust(tenant, realm)
        token = realm.token()
        assert (await me(client, token)).status_code == 200
        r = await client.delete(f"/api/v1/issuers/{created['id']}", headers=tenant.owner.headers)
        assert r.status_code == 204
        assert (await me(client, token)).status_code == 401

    async def test_deleting_the_tenant_revokes_its_satellite_tokens(self, client, tenant, realm):
        await trust(tenant, realm)
        token = realm.token()
        assert (await me(client, token)).status_code == 200
        r = await client.delete("/api/v1/tenant", headers=tenant.owner.headers)
        assert r.status_code == 204
        assert (await me(client, token)).status_code == 401

    async def test_rejections_are_audited_with_the_reason(self, client, runtime, realm):
        await me(client, realm.token(sub=f"probe-{uuid.uuid4().hex}"))
        await runtime.audit.flush()
        async with runtime.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(AuditEvent)
                    .where(AuditEvent.action == "auth.token_rejected")  # type: ignore[arg-type]
                    .order_by(AuditEvent.at.desc())  # type: ignore[attr-defined]
                    .limit(20)
                    .execution_options(**{SKIP_TENANT_FILTER: True})
                )
            ).scalars()
            reasons = [row.details.get("reason") for row in rows]
        assert "untrusted issuer" in reasons


class TestPrincipal:
    async def test_me_shows_a_satellite_principal(self, client, tenant, realm):
        await trust(tenant, realm)
        r = await me(client, realm.token(sub="u-42", email="Alice@Corp.Example"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["kind"] == "satellite"
        assert body["id"] == f"{realm.issuer}#u-42"
        assert body["email"] == "alice@corp.example"
        assert body["role"] == "member"
        assert body["tenant_id"] == tenant.id

    async def test_two_idps_with_the_same_sub_are_different_principals(self, client, tenant, idp):
        first, second = idp.realm(), idp.realm()
        await trust(tenant, first)
        await trust(tenant, second)
        a = (await me(client, first.token(sub="same"))).json()
        b = (await me(client, second.token(sub="same"))).json()
        assert a["id"] != b["id"]
        assert a["id"].endswith("#same")
        assert b["id"].endswith("#same")

    async def test_roles_map_to_warden_roles_capped_at_member(self, client, tenant, realm):
        await trust(tenant, realm)
        cases = [
            (["viewer"], "viewer"),
            ("viewer reader", "viewer"),
            (["member", "viewer"], "member"),
            (["admin"], "member"),
            ("owner admin", "member"),
            (["unrelated"], "member"),
            (42, "member"),
        ]
        for roles, expected in cases:
            r = await me(client, realm.token(roles=roles))
            assert r.json()["role"] == expected, roles

    async def test_a_satellite_admin_cannot_use_the_admin_api(self, client, tenant, realm):
        await trust(tenant, realm)
        headers = bearer(realm.token(roles=["owner", "admin"]))
        for path in ("/api/v1/users", "/api/v1/issuers", "/api/v1/api-keys"):
            r = await client.get(path, headers=headers)
            assert r.status_code == 403, path
        r = await client.post(
            "/api/v1/issuers",
            headers=headers,
            json={
                "issuer": "https://evil.example",
                "jwks_uri": realm.jwks_uri,
                "audiences": ["x"],
                "algorithms": ["ES256"],
            },
        )
        assert r.status_code == 403

    async def test_claim_mapping_reads_other_and_nested_claims(self, client, tenant, realm):
        await trust(
            tenant,
            realm,
            claim_mapping={"subject": "oid", "email": "upn", "roles": "realm_access.roles"},
        )
        token = realm.token(
            sub="ignored",
            oid="object-7",
            upn="Bob@Corp.Example",
            email="wrong@corp.example",
            realm_access={"roles": ["viewer"]},
        )
        body = (await me(client, token)).json()
        assert body["id"] == f"{realm.issuer}#object-7"
        assert body["email"] == "bob@corp.example"
        assert body["role"] == "viewer"
        r = await me(client, realm.token(sub="x"))  # no `oid`: no subject, no principal
        assert r.status_code == 401

    async def test_unverified_or_malformed_email_is_dropped(self, client, tenant, realm):
        await trust(tenant, realm)
        r = await me(client, realm.token(email="boss@corp.example", email_verified=False))
        assert r.json()["email"] is None
        r = await me(client, realm.token(email="not an email"))
        assert r.json()["email"] is None
        r = await me(client, realm.token(email=MISSING))
        assert r.json()["email"] is None

    async def test_overlong_principal_id_is_refused(self, client, tenant, realm):
        await trust(tenant, realm)
        assert (await me(client, realm.token(sub="s" * 300))).status_code == 401

    async def test_at_jwt_and_untyped_tokens_are_accepted(self, client, tenant, realm):
        await trust(tenant, realm)
        assert (await me(client, realm.token(headers={"typ": "at+jwt"}))).status_code == 200
        assert (await me(client, realm.token(headers={"typ": MISSING}))).status_code == 200


class TestKeySources:
    async def test_inline_jwks_with_an_rsa_key_without_alg(self, client, tenant, realm):
        key = realm.add_key("RS384")
        await trust(
            tenant,
            realm,
            jwks_uri=None,
            jwks={"keys": [key.jwk(with_alg=False)]},
            algorithms=["RS384"],
        )
        assert (await me(client, realm.token(key))).status_code == 200
        assert realm.fetches == 0

    async def test_pem_key_with_and_without_kid(self, client, tenant, realm):
        key = realm.keys[0]
        await trust(tenant, realm, jwks_uri=None, public_keys_pem=[pem_of(key.public)])
        assert (await me(client, realm.token(headers={"kid": MISSING}))).status_code == 200
        thumbprint = jose.jwk_thumbprint(key.public)
        r = await me(client, realm.token(headers={"kid": thumbprint}))
        assert r.status_code == 200
        assert (await me(client, realm.token(headers={"kid": "other"}))).status_code == 401

    async def test_kidless_token_needs_a_single_candidate_key(self, client, tenant, realm):
        realm.add_key("ES256")
        await trust(tenant, realm)
        r = await me(client, realm.token(headers={"kid": MISSING}))
        assert r.status_code == 401

    async def test_warm_tokens_cost_no_fetch(self, client, tenant, realm):
        await trust(tenant, realm)
        token = realm.token()
        for _ in range(20):
            assert (await me(client, token)).status_code == 200
        for _ in range(5):
            assert (await me(client, realm.token())).status_code == 200
        assert realm.fetches == 1

    async def test_concurrent_cold_tokens_share_one_fetch(self, client, tenant, realm):
        await trust(tenant, realm)
        realm.mode, realm.delay = "slow", 0.3
        results = await asyncio.gather(*[me(client, realm.token()) for _ in range(15)])
        assert [r.status_code for r in results] == [200] * 15
        assert realm.fetches == 1


class TestRotation:
    async def test_a_new_kid_at_the_idp_needs_no_change_in_warden(self, client, tenant, realm):
        await trust(tenant, realm)
        assert (await me(client, realm.token())).status_code == 200
        new_key = realm.rotate("RS256")
        assert (await me(client, realm.token(new_key))).status_code == 200
        assert realm.fetches == 2

    async def test_unknown_kid_refetches_once_then_401(self, client, tenant, realm):
        await trust(tenant, realm)
        assert (await me(client, realm.token())).status_code == 200
        stranger = realm.add_key("ES256")
        realm.keys.remove(stranger)  # signed with a key the IdP never published
        for _ in range(3):
            assert (await me(client, realm.token(stranger))).status_code == 401
        assert realm.fetches == 2

    async def test_a_flood_of_garbage_kids_makes_at_most_one_refetch(self, client, tenant, realm):
        await trust(tenant, realm)
        assert (await me(client, realm.token())).status_code == 200
        key = realm.keys[0]
        tokens = [realm.token(key, headers={"kid": uuid.uuid4().hex}) for _ in range(100)]
        results = await asyncio.gather(*[me(client, t) for t in tokens])
        assert {r.status_code for r in results} == {401}
        assert realm.fetches <= 2
        # The floor holds across sequential requests too.
        for t in tokens[:20]:
            await me(client, t)
        assert realm.fetches <= 2
        assert (await me(client, realm.token())).status_code == 200


class TestIdpFailures:
    async def test_idp_down_keeps_serving_cached_keys(self, client, tenant, realm):
        await trust(tenant, realm)
        assert (await me(client, realm.token())).status_code == 200
        realm.mode = "fail"
        assert (await me(client, realm.token(sub="someone-else"))).status_code == 200

    async def test_idp_down_without_keys_is_503(self, client, tenant, realm):
        await trust(tenant, realm)
        realm.mode = "fail"
        r = await me(client, realm.token())
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "issuer_unavailable"
        assert r.headers["Retry-After"]
        # Within the floor, a failing IdP is not asked again.
        await me(client, realm.token())
        assert realm.fetches == 1

    async def test_five_megabyte_jwks_is_refused(self, client, tenant, realm):
        await trust(tenant, realm)
        realm.mode = "huge"
        r = await me(client, realm.token())
        assert r.status_code == 503

    async def test_redirecting_jwks_is_not_followed(self, client, tenant, realm):
        await trust(tenant, realm)
        realm.mode = "redirect"
        r = await me(client, realm.token())
        assert r.status_code == 503
        assert realm.redirect_target_fetches == 0


class TestPolicies:
    async def test_access_policies_treat_satellites_like_users(self, client, tenant, realm):
        await trust(tenant, realm)
        ep = await make_endpoint(tenant)
        policy = await add_policy(
            tenant, ep["slug"], "access", {"mode": "allow", "patterns": ["*@corp.example"]}
        )
        url = f"/api/v1/endpoints/{ep['slug']}/query"
        r = await client.post(url, headers=bearer(realm.token(email="alice@corp.example")))
        assert r.status_code == 200, r.text
        r = await client.post(url, headers=bearer(realm.token(email="eve@evil.example")))
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "access_denied"
        assert policy["id"] in r.json()["error"]["message"]
        # An email the IdP has not verified matches no pattern.
        token = realm.token(email="alice@corp.example", email_verified=False)
        assert (await client.post(url, headers=bearer(token))).status_code == 403

    async def test_rules_read_the_satellite_claims(self, client, tenant, realm):
        await trust(tenant, realm)
        ep = await make_endpoint(tenant)
        await add_policy(
            tenant,
            ep["slug"],
            "rule",
            {"rule": "match", "eval": "==", "f1": "args.auth.department", "f2": "research"},
        )
        url = f"/api/v1/endpoints/{ep['slug']}/query"
        ok = await client.post(url, headers=bearer(realm.token(department="research")))
        assert ok.status_code == 200
        denied = await client.post(url, headers=bearer(realm.token(department="sales")))
        assert denied.json()["error"]["code"] == "rule_denied"

    async def test_per_user_rate_limits_key_on_issuer_and_subject(self, client, tenant, idp):
        first, second = idp.realm(), idp.realm()
        await trust(tenant, first)
        await trust(tenant, second)
        ep = await make_endpoint(tenant)
        await add_policy(
            tenant,
            ep["slug"],
            "rate_limit",
            {"requests_per_period": 1, "period_seconds": 60, "scope": "per_user"},
        )
        url = f"/api/v1/endpoints/{ep['slug']}/query"
        assert (await client.post(url, headers=bearer(first.token(sub="u")))).status_code == 200
        assert (await client.post(url, headers=bearer(first.token(sub="u")))).status_code == 429
        assert (await client.post(url, headers=bearer(second.token(sub="u")))).status_code == 200

    async def test_viewer_satellites_cannot_query(self, client, tenant, realm):
        await trust(tenant, realm)
        ep = await make_endpoint(tenant)
        r = await client.post(
            f"/api/v1/endpoints/{ep['slug']}/query",
            headers=bearer(realm.token(roles=["viewer"])),
        )
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_role"

    async def test_authz_check_answers_for_a_satellite(self, client, tenant, realm):
        await trust(tenant, realm)
        ep = await make_endpoint(tenant)
        policy = await add_policy(
            tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["eve@*"]}
        )
        r = await client.post(
            "/api/v1/authz/check",
            json={"endpoint": ep["slug"]},
            headers=bearer(realm.token(email="alice@corp.example")),
        )
        assert r.status_code == 200
        assert r.json()["allowed"] is True
        r = await client.post(
            "/api/v1/authz/check",
            json={"endpoint": ep["slug"]},
            headers=bearer(realm.token(email="eve@corp.example")),
        )
        assert r.json()["allowed"] is False
        assert r.json()["decided_by"] == policy["id"]
        # A capped satellite "admin" gets a member's answer: no what-if, no full reasons.
        r = await client.post(
            "/api/v1/authz/check",
            json={"endpoint": ep["slug"], "as": {"email": "x@corp.example"}},
            headers=bearer(realm.token(roles=["admin"])),
        )
        assert r.status_code == 403

    async def test_the_upstream_sees_the_satellite_identity(self, client, tenant, realm, upstream):
        await trust(tenant, realm)
        ep = await make_endpoint(tenant, upstream_url=f"{upstream}/echo")
        r = await client.post(
            f"/api/v1/endpoints/{ep['slug']}/query",
            headers=bearer(realm.token(sub="u-9", email="alice@corp.example")),
            json={"q": 1},
        )
        assert r.status_code == 200, r.text
        seen = r.json()["headers"]
        assert seen["x-user-id"] == f"{realm.issuer}#u-9"
        assert seen["x-user-email"] == "alice@corp.example"
        assert seen["x-tenant"] == tenant.slug
        assert "authorization" not in seen

    async def test_cross_tenant_endpoints_stay_404(self, client, tenant, other_tenant, realm):
        await trust(tenant, realm)
        theirs = await make_endpoint(other_tenant)
        r = await client.post(
            f"/api/v1/endpoints/{theirs['slug']}/query",
            headers=bearer(realm.token(), other_tenant.slug),
        )
        assert r.status_code == 401
        r = await client.post(
            f"/api/v1/endpoints/{theirs['slug']}/query", headers=bearer(realm.token())
        )
        assert r.status_code == 404


async def test_raw_token_helper_matches_pyjwt(tenant, client, realm):
    """The hand-built tokens of the attack suite are real tokens when nothing is tampered."""
    await trust(tenant, realm)
    key = realm.keys[0]
    token = raw_token(
        {"alg": "ES256", "typ": "JWT", "kid": key.kid}, realm.claims(), key.private, "ES256"
    )
    assert (await me(client, token)).status_code == 200
