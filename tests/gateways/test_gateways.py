"""Through real nginx (`auth_request`), Envoy (`ext_authz`) and Traefik (`forwardAuth`) on
127.0.0.1, configured from the templates docs/gateways.md shows, with a Warden process deciding
and an echo server as the protected app. Each test runs once per gateway."""

from __future__ import annotations

import http.client
from typing import Any

import httpx

from tests.gateways.conftest import DOC, TEMPLATES, Gateway

FORGED = {"X-User-ID": "forged-id", "X-User-Email": "ceo@forged.example", "X-Tenant": "forged"}


def upstream_saw(r: httpx.Response) -> dict[str, Any]:
    """What the echo upstream received; fails when the request never reached it."""
    assert r.status_code == 200, (r.status_code, r.text[:300])
    body: dict[str, Any] = r.json()
    assert "header_list" in body, "the answer did not come from the upstream"
    return body


def never_reached_upstream(r: httpx.Response) -> None:
    assert "header_list" not in r.text, "a refused request reached the upstream"


def identity(seen: dict[str, Any]) -> tuple[str, str, str]:
    headers = seen["headers"]
    return (
        headers.get("x-user-id", ""),
        headers.get("x-user-email", ""),
        headers.get("x-tenant", ""),
    )


def test_documented_configs_are_the_tested_templates():
    doc = DOC.read_text()
    for name in ("nginx.conf", "envoy.yaml", "traefik.yml", "traefik-dynamic.yml"):
        template = (TEMPLATES / name).read_text()
        assert template.strip() in doc, f"docs/gateways.md no longer shows {name} as tested"


class TestRefusals:
    def test_missing_credential_is_401(self, gateway: Gateway):
        r = gateway.request("GET", "/orders", headers=FORGED)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        never_reached_upstream(r)

    def test_invalid_token_is_401(self, gateway: Gateway):
        r = gateway.request("GET", "/orders", headers={"Authorization": "Bearer not.a.token"})
        assert r.status_code == 401
        never_reached_upstream(r)

    def test_access_policy_denial_is_403(self, gateway: Gateway):
        r = gateway.request("GET", "/orders", headers=gateway.site.mallory.headers)
        assert r.status_code == 403
        never_reached_upstream(r)

    def test_token_of_another_tenant_is_403(self, gateway: Gateway):
        r = gateway.request("GET", "/orders", headers=gateway.site.foreign.headers)
        assert r.status_code == 403
        never_reached_upstream(r)

    def test_api_key_without_forward_scope_is_403(self, gateway: Gateway):
        r = gateway.request("GET", "/orders", headers=gateway.site.query_key.headers)
        assert r.status_code == 403
        never_reached_upstream(r)

    def test_rules_see_the_forwarded_method(self, gateway: Gateway):
        alice = gateway.site.alice.headers
        r = gateway.request("DELETE", "/orders/1", headers=alice)
        assert r.status_code == 403
        never_reached_upstream(r)
        assert upstream_saw(gateway.request("POST", "/orders", headers=alice))["method"] == "POST"

    def test_client_cannot_forge_its_address(self, gateway: Gateway):
        # The site admits 127.0.0.1 only: the gateway must overwrite X-Forwarded-For.
        forged = {**gateway.site.alice.headers, "X-Forwarded-For": "203.0.113.7"}
        upstream_saw(gateway.request("GET", "/orders", headers=forged))
        forged = {**gateway.site.alice.headers, "X-Real-IP": "203.0.113.7"}
        upstream_saw(gateway.request("GET", "/orders", headers=forged))

    def test_flood_is_429_with_retry_after(self, gateway: Gateway):
        flooder = gateway.site.flooder.headers
        for _ in range(3):
            upstream_saw(gateway.request("GET", "/limited/report", headers=flooder))
        r = gateway.request("GET", "/limited/report", headers=flooder)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit"] == "3"
        assert r.headers["x-ratelimit-remaining"] == "0"
        never_reached_upstream(r)
        # The limit binds `/limited` only: the rest of the host is still open to the same user.
        upstream_saw(gateway.request("GET", "/orders", headers=flooder))

    def test_dot_segments_cannot_borrow_an_exempt_path(self, gateway: Gateway):
        # Sent raw (httpx would resolve the dot segments itself).
        host, port = gateway.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", "/health/../private", headers={"Host": gateway.site.host})
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
        finally:
            conn.close()
        assert response.status == 401, (response.status, body[:200])
        assert "header_list" not in body


class TestAllowed:
    def test_member_reaches_upstream_with_identity(self, gateway: Gateway):
        site = gateway.site
        seen = upstream_saw(gateway.request("GET", "/orders?page=2", headers=site.alice.headers))
        assert seen["path"] == "/orders"
        assert identity(seen) == (site.alice.id, site.alice.email, site.tenant)

    def test_api_key_with_forward_scope_reaches_upstream(self, gateway: Gateway):
        site = gateway.site
        seen = upstream_saw(gateway.request("GET", "/orders", headers=site.forward_key.headers))
        assert identity(seen) == (site.forward_key.id, "", site.tenant)

    def test_token_in_the_cookie(self, gateway: Gateway):
        site = gateway.site
        r = gateway.request("GET", "/orders", headers={"Cookie": f"warden_token={site.token}"})
        assert identity(upstream_saw(r)) == (site.alice.id, site.alice.email, site.tenant)

    def test_exempt_path_passes_without_credential(self, gateway: Gateway):
        seen = upstream_saw(gateway.request("GET", "/health/live"))
        assert identity(seen) == ("", "", "")


class TestForgedIdentity:
    def test_user_cannot_claim_another_identity(self, gateway: Gateway):
        site = gateway.site
        r = gateway.request("GET", "/orders", headers={**site.alice.headers, **FORGED})
        seen = upstream_saw(r)
        assert identity(seen) == (site.alice.id, site.alice.email, site.tenant)
        assert seen["header_list"].count("x-user-email") == 1

    def test_api_key_cannot_add_an_email(self, gateway: Gateway):
        site = gateway.site
        r = gateway.request("GET", "/orders", headers={**site.forward_key.headers, **FORGED})
        assert identity(upstream_saw(r)) == (site.forward_key.id, "", site.tenant)

    def test_exempt_path_drops_forged_identity(self, gateway: Gateway):
        seen = upstream_saw(gateway.request("GET", "/health", headers=FORGED))
        assert identity(seen) == ("", "", "")
