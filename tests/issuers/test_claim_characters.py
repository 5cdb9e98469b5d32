"""Control characters in an IdP's identity claims: refused at verification (401
`invalid_claims`), never carried into forwarding headers where they ended as a 502."""

from __future__ import annotations

import pytest

from tests.conftest import make_endpoint
from tests.issuers.conftest import bearer, trust

BAD = ["\r\nX-Injected: 1", "\n", "\r", "\x00", "\x1b[31m", "\x7f", "\x85", "\u2028", "\ud800"]


async def query(client, slug, token):
    return await client.post(f"/api/v1/endpoints/{slug}/query", headers=bearer(token))


@pytest.mark.parametrize("bad", BAD, ids=[repr(b) for b in BAD])
async def test_control_characters_in_sub_are_401_not_502(client, tenant, realm, upstream, bad):
    await trust(tenant, realm)
    ep = await make_endpoint(tenant, upstream_url=f"{upstream}/echo")
    assert (await query(client, ep["slug"], realm.token())).status_code == 200
    r = await query(client, ep["slug"], realm.token(sub=f"user{bad}1"))
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_claims"
    r = await client.get("/api/v1/auth/me", headers=bearer(realm.token(sub=f"user{bad}1")))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_claims"


@pytest.mark.parametrize("bad", ["\r\n", "\x00", "\t"], ids=["crlf", "nul", "tab"])
async def test_control_characters_in_email_are_refused(client, tenant, realm, upstream, bad):
    await trust(tenant, realm)
    ep = await make_endpoint(tenant, upstream_url=f"{upstream}/echo")
    r = await query(client, ep["slug"], realm.token(email=f"alice{bad}@corp.example"))
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_claims"


async def test_mapped_claims_are_checked_under_their_mapped_names(client, tenant, realm, upstream):
    await trust(
        tenant,
        realm,
        claim_mapping={"subject": "oid", "email": "upn", "roles": "groups"},
    )
    ep = await make_endpoint(tenant, upstream_url=f"{upstream}/echo")
    good = {"oid": "u-1", "upn": "a@corp.example", "groups": ["member"]}
    assert (await query(client, ep["slug"], realm.token(**good))).status_code == 200
    # The unmapped `sub` is not the identity here: its content does not matter.
    r = await query(client, ep["slug"], realm.token(sub="x\ny", **good))
    assert r.status_code == 200
    for name, value in (("oid", "u\r\n1"), ("upn", "a\n@corp.example"), ("groups", ["a\x00"])):
        r = await query(client, ep["slug"], realm.token(**{**good, name: value}))
        assert r.status_code == 401, (name, r.text)
        assert r.json()["error"]["code"] == "invalid_claims"


async def test_printable_unicode_identity_is_kept(client, tenant, realm, upstream):
    await trust(tenant, realm)
    ep = await make_endpoint(tenant, upstream_url=f"{upstream}/echo")
    r = await query(client, ep["slug"], realm.token(sub="Zoë ☃ 用户"))
    assert r.status_code == 200, r.text


def test_an_empty_mapping_checks_the_default_claim_names():
    from app.issuers.satellite import InvalidClaims, check_identity_claims

    check_identity_claims({"sub": "u", "email": "a@b.example", "roles": ["member"]}, {})
    for name in ("sub", "email", "roles", "jti"):
        with pytest.raises(InvalidClaims):
            check_identity_claims({name: ["x\n"] if name == "roles" else "x\n"}, {})
