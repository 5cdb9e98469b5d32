"""The outbound guard on issuers' `jwks_uri`: refused on write, and checked again on the
address the JWKS fetch actually connects to (DNS rebinding)."""

from __future__ import annotations

import httpx
import pytest

from app.core import outbound
from tests.core.test_outbound import Rebinding, spy
from tests.issuers.conftest import bearer


async def test_jwks_fetch_checks_the_address_it_connects_to(
    client, tenant, runtime, realm, monkeypatch
):
    host = "rebind-idp.test"
    dns = Rebinding(host)
    monkeypatch.setattr(outbound, "_getaddrinfo", dns)
    outbound._resolved.pop(host, None)
    port = httpx.URL(realm.jwks_uri).port
    body = {
        "issuer": realm.issuer,
        "jwks_uri": f"https://{host}:{port}/{realm.name}/jwks.json",
        "audiences": [realm.audience],
        "algorithms": ["ES256"],
    }
    r = await client.post("/api/v1/issuers", json=body, headers=tenant.owner.headers)
    assert r.status_code == 201, r.text
    # The fetch's own check answers from the minute-long cache (still public); the connection
    # resolves again and meets loopback.
    seen = spy(runtime.satellites.http._transport.backend, monkeypatch)
    r = await client.get("/api/v1/auth/me", headers=bearer(realm.token()))
    assert r.status_code in (401, 503), r.text
    assert dns.calls >= 2
    assert "127.0.0.1" not in seen
    assert realm.fetches == 0


@pytest.mark.parametrize(
    "url",
    ["https://100.100.100.200/x", "https://[2002:a9fe:a9fe::]/x", "https://[fec0::1]/x"],
)
async def test_api_refuses_such_upstreams_and_jwks_uris(client, tenant, realm, url):
    r = await client.post(
        "/api/v1/endpoints",
        json={"name": "Ep", "slug": "ep-ssrf", "upstream_url": url},
        headers=tenant.owner.headers,
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "upstream_refused"
    body = {"issuer": realm.issuer, "jwks_uri": url, "audiences": ["a"], "algorithms": ["ES256"]}
    r = await client.post("/api/v1/issuers", json=body, headers=tenant.owner.headers)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "jwks_uri_refused"
