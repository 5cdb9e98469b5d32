"""Fixtures for trusted issuers: a real IdP on 127.0.0.1 and helpers to trust its realms."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TenantHandle
from tests.issuers.idp import IdpServer, Realm
from tests.support.servers import serve_in_thread


@pytest.fixture(scope="session")
def idp() -> Iterator[IdpServer]:
    """One JWKS server for the session; each test makes its own realms on it."""
    server = IdpServer()
    with serve_in_thread(server.app()) as url:
        server.base_url = url
        yield server


@pytest.fixture
def realm(idp: IdpServer) -> Realm:
    """A fresh issuer with one ES256 key."""
    return idp.realm()


async def trust(handle: TenantHandle, realm: Realm, **overrides: Any) -> dict[str, Any]:
    """Make `handle`'s tenant trust the realm (by its jwks_uri unless overridden)."""
    body: dict[str, Any] = {
        "issuer": realm.issuer,
        "jwks_uri": realm.jwks_uri,
        "audiences": [realm.audience],
        "algorithms": ["ES256", "RS256"],
    }
    body.update(overrides)
    body = {k: v for k, v in body.items() if v is not None}
    r = await handle.client.post("/api/v1/issuers", json=body, headers=handle.owner.headers)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def bearer(token: str, tenant: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if tenant is not None:
        headers["X-Tenant"] = tenant
    return headers
