"""Turning verified claims into a principal and a tenant: hostile claim shapes of any kind end
in a `TokenError` (one 401), never another exception (a 500)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.identity import Role
from app.core.jose import TokenError
from app.issuers.satellite import (
    AmbiguousTenant,
    IssuerConfig,
    build_principal,
    choose_config,
    claim_value,
    mapped_role,
    token_audiences,
)

ISS = "https://idp.example/realms/a"


def config(slug: str = "acme", audiences: frozenset[str] = frozenset({"api"}), **mapping: str):
    return IssuerConfig(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        tenant_slug=slug,
        issuer=ISS,
        audiences=audiences,
        algorithms=frozenset({"ES256"}),
        claim_mapping={"subject": "sub", "email": "email", "roles": "roles", **mapping},
        jwks_uri=None,
        inline_keys=None,
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
claim_names = st.sampled_from(
    ["sub", "email", "email_verified", "roles", "jti", "aud", "realm_access", "oid", "exp"]
)


class TestHostileClaims:
    @settings(max_examples=300, deadline=None)
    @given(overrides=st.dictionaries(claim_names, json_values, max_size=6))
    def test_build_principal_returns_or_refuses(self, overrides: dict[str, Any]):
        claims = {"sub": "u", "exp": 2_000_000_000, **overrides}
        mapped = config(roles="realm_access.roles", email="email")
        try:
            principal = build_principal(mapped, claims)
        except TokenError:
            return
        assert principal.id.startswith(f"{ISS}#")
        assert principal.role in (Role.MEMBER, Role.VIEWER)
        assert principal.email is None or isinstance(principal.email, str)

    @settings(max_examples=300, deadline=None)
    @given(aud=json_values, hint=st.none() | st.text(max_size=10))
    def test_tenant_choice_returns_or_refuses(self, aud: Any, hint: str | None):
        configs = (config("acme"), config("beta", frozenset({"api", "other"})))
        try:
            chosen = choose_config(configs, token_audiences({"aud": aud}), hint)
        except TokenError:
            return
        assert hint in (None, chosen.tenant_slug)


class TestMapping:
    @pytest.mark.parametrize(
        ("value", "role"),
        [
            (["OWNER"], Role.OWNER),
            ("viewer admin", Role.ADMIN),
            (["viewer"], Role.VIEWER),
            ([], Role.MEMBER),
            (None, Role.MEMBER),
            ({"admin": True}, Role.MEMBER),
            ([["admin"]], Role.MEMBER),
        ],
    )
    def test_highest_named_role_before_the_cap(self, value, role):
        assert mapped_role(value) == role

    def test_claim_value_prefers_a_literal_dotted_name(self):
        claims = {"https://app.example/roles": ["viewer"], "a": {"b": {"c": 1}}}
        assert claim_value(claims, "https://app.example/roles") == ["viewer"]
        assert claim_value(claims, "a.b.c") == 1
        assert claim_value(claims, "a.x") is None
        assert claim_value(claims, "a.b.c.d") is None

    def test_jti_is_namespaced_by_issuer(self):
        principal = build_principal(config(), {"sub": "u", "exp": 2_000_000_000, "jti": "j"})
        assert principal.jti == f"{ISS}#j"
        assert principal.kind == "satellite"

    def test_ambiguity_is_its_own_refusal(self):
        configs = (config("acme"), config("beta"))
        with pytest.raises(AmbiguousTenant):
            choose_config(configs, frozenset({"api"}), None)
        assert choose_config(configs, frozenset({"api"}), "beta").tenant_slug == "beta"
