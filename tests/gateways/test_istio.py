"""`GET /endpoints/{slug}/istio`: the RequestAuthentication + AuthorizationPolicy YAML."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.core.db import set_session_tenant
from app.issuers.models import TrustedIssuer
from tests.conftest import TenantHandle, make_endpoint


def istio_url(slug: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/api/v1/endpoints/{slug}/istio" + (f"?{query}" if query else "")


async def documents(client, handle: TenantHandle, slug: str, **params: str) -> list[Any]:
    r = await client.get(istio_url(slug, **params), headers=handle.owner.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/yaml")
    assert "&id" not in r.text  # no YAML anchors: plain documents kubectl users can read
    return list(yaml.safe_load_all(r.text))


def pem(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


async def add_issuer(runtime, handle: TenantHandle, **fields: Any) -> None:
    """A trusted-issuer row, written as the issuers API stores it."""
    async with runtime.sessionmaker() as session:
        set_session_tenant(session, uuid.UUID(handle.id))
        session.add(
            TrustedIssuer(
                tenant_id=uuid.UUID(handle.id),
                algorithms=["RS256", "ES256"],
                audiences=["shop"],
                **fields,
            )
        )
        await session.commit()


SHOP = "shop.example.test"


@pytest.fixture(autouse=True)
def _unique_shop_host() -> None:
    """Hosts belong to one tenant: each test binds its own."""
    global SHOP
    SHOP = f"shop-{uuid.uuid4().hex[:8]}.example.test"


class TestAccess:
    async def test_unauthenticated_api_key_and_cross_tenant(self, client, tenant, other_tenant):
        ep = await make_endpoint(other_tenant, host=f"b-{uuid.uuid4().hex[:8]}.example.test")
        assert (await client.get(istio_url(ep["slug"]))).status_code == 401
        r = await client.get(istio_url(ep["slug"]), headers=tenant.owner.headers)
        assert r.status_code == 404
        r = await client.post(
            "/api/v1/api-keys",
            headers=other_tenant.owner.headers,
            json={"name": "k", "scopes": ["authz:forward", "authz:check"]},
        )
        key = {"X-API-Key": r.json()["key"]}
        assert (await client.get(istio_url(ep["slug"]), headers=key)).status_code == 403

    async def test_viewers_may_read(self, client, tenant):
        ep = await make_endpoint(tenant)
        viewer = await tenant.add_user("viewer")
        r = await client.get(istio_url(ep["slug"]), headers=viewer.headers)
        assert r.status_code == 200

    async def test_namespace_and_app_must_be_dns_labels(self, client, tenant):
        ep = await make_endpoint(tenant)
        for params in (
            {"namespace": "Gateways"},
            {"namespace": "-gw"},
            {"namespace": "a" * 64},
            {"app": "my_app"},
            {"app": "gw%0Aevil"},
        ):
            r = await client.get(istio_url(ep["slug"], **params), headers=tenant.owner.headers)
            assert r.status_code == 422, params
            assert r.json()["error"]["code"] == "validation_error"


class TestRequestAuthentication:
    async def test_warden_issuer_rule(self, client, runtime, tenant):
        ep = await make_endpoint(tenant, host=f"{SHOP}")
        request_auth, policy = await documents(
            client, tenant, ep["slug"], namespace="gateways", app="ingress"
        )
        assert request_auth["apiVersion"] == policy["apiVersion"] == "security.istio.io/v1"
        assert (request_auth["kind"], policy["kind"]) == (
            "RequestAuthentication",
            "AuthorizationPolicy",
        )
        for doc in (request_auth, policy):
            assert doc["metadata"]["name"] == f"warden-{ep['slug']}"
            assert doc["metadata"]["namespace"] == "gateways"
            assert doc["spec"]["selector"] == {"matchLabels": {"app": "ingress"}}
        settings = runtime.settings
        assert request_auth["spec"]["jwtRules"] == [
            {
                "issuer": settings.issuer,
                "jwksUri": f"{settings.issuer}/.well-known/jwks.json",
                "audiences": [settings.jwt_audience],
                "fromHeaders": [{"name": "Authorization", "prefix": "Bearer "}],
                "fromCookies": ["warden_token"],
                "outputClaimToHeaders": [
                    {"header": "X-User-ID", "claim": "sub"},
                    {"header": "X-User-Email", "claim": "email"},
                    {"header": "X-Tenant", "claim": "tenant"},
                ],
                "forwardOriginalToken": False,
            }
        ]

    async def test_without_namespace_and_app(self, client, tenant):
        ep = await make_endpoint(tenant)
        for doc in await documents(client, tenant, ep["slug"]):
            assert "namespace" not in doc["metadata"]
            assert "selector" not in doc["spec"]

    async def test_trusted_issuers_of_the_tenant_only(self, client, runtime, tenant, other_tenant):
        suffix = secrets.token_hex(3)
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        inline = {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "BB", "kid": "k1"}]}
        await add_issuer(
            runtime,
            tenant,
            issuer=f"https://idp-{suffix}.example/realms/shop",
            jwks_uri=f"https://idp-{suffix}.example/realms/shop/certs",
            claim_mapping={"subject": "uid", "email": "mail", "roles": "groups"},
        )
        await add_issuer(runtime, tenant, issuer=f"https://inline-{suffix}.example", jwks=inline)
        await add_issuer(
            runtime,
            tenant,
            issuer=f"https://pem-{suffix}.example",
            public_keys_pem=[pem(rsa_key), pem(ec_key), "not a key"],
        )
        await add_issuer(runtime, tenant, issuer=f"https://nokeys-{suffix}.example")
        await add_issuer(runtime, other_tenant, issuer=f"https://other-{suffix}.example")
        ep = await make_endpoint(tenant, host=f"{SHOP}")
        request_auth, policy = await documents(client, tenant, ep["slug"])
        rules = {rule["issuer"]: rule for rule in request_auth["spec"]["jwtRules"]}
        assert set(rules) == {
            runtime.settings.issuer,
            f"https://idp-{suffix}.example/realms/shop",
            f"https://inline-{suffix}.example",
            f"https://pem-{suffix}.example",
        }
        keycloak = rules[f"https://idp-{suffix}.example/realms/shop"]
        assert keycloak["jwksUri"] == f"https://idp-{suffix}.example/realms/shop/certs"
        assert keycloak["audiences"] == ["shop"]
        assert keycloak["forwardOriginalToken"] is False
        # Tenant slug and kind are Warden's knowledge, not the IdP's: no X-Tenant here.
        assert keycloak["outputClaimToHeaders"] == [
            {"header": "X-User-ID", "claim": "uid"},
            {"header": "X-User-Email", "claim": "mail"},
        ]
        assert json.loads(rules[f"https://inline-{suffix}.example"]["jwks"]) == inline
        pem_keys = json.loads(rules[f"https://pem-{suffix}.example"]["jwks"])["keys"]
        assert [k["kty"] for k in pem_keys] == ["RSA", "EC"]
        assert all("d" not in k for k in pem_keys)
        principals = policy["spec"]["rules"][0]["from"][0]["source"]["requestPrincipals"]
        assert sorted(principals) == sorted(f"{iss}/*" for iss in rules)


class TestAuthorizationPolicy:
    async def test_binding_audience_and_exempt_paths(self, client, runtime, tenant):
        ep = await make_endpoint(
            tenant,
            host=f"{SHOP}",
            path_prefix="/api/",
            exempt_paths=["/api/health", "/status"],
            require_host_audience=True,
        )
        _, policy = await documents(client, tenant, ep["slug"])
        spec = policy["spec"]
        assert spec["action"] == "ALLOW"
        guarded, exempt = spec["rules"]
        hosts = [f"{SHOP}", f"{SHOP}:*"]
        assert guarded["from"] == [
            {"source": {"requestPrincipals": [f"{runtime.settings.issuer}/*"]}}
        ]
        assert guarded["to"] == [{"operation": {"hosts": hosts, "paths": ["/api", "/api/*"]}}]
        assert guarded["when"] == [
            {
                "key": "request.auth.audiences",
                "values": [f"{SHOP}", f"https://{SHOP}"],
            }
        ]
        assert "from" not in exempt
        assert exempt["to"] == [
            {
                "operation": {
                    "hosts": hosts,
                    "paths": ["/api/health", "/api/health/*", "/status", "/status/*"],
                }
            }
        ]

    async def test_whole_host_and_no_host(self, client, tenant):
        port_bound = await make_endpoint(tenant, host=f"{SHOP}:8443")
        _, policy = await documents(client, tenant, port_bound["slug"])
        (rule,) = policy["spec"]["rules"]
        assert rule["to"] == [{"operation": {"hosts": [f"{SHOP}:8443"]}}]
        assert "when" not in rule
        unbound = await make_endpoint(tenant)
        _, policy = await documents(client, tenant, unbound["slug"])
        (rule,) = policy["spec"]["rules"]
        assert rule["to"] == [{"operation": {}}]

    async def test_disabled_endpoint_allows_only_exempt_paths(self, client, tenant):
        ep = await make_endpoint(tenant, host=f"{SHOP}", exempt_paths=["/health"], is_active=False)
        _, policy = await documents(client, tenant, ep["slug"])
        (rule,) = policy["spec"]["rules"]
        assert "from" not in rule
        assert rule["to"][0]["operation"]["paths"] == ["/health", "/health/*"]
