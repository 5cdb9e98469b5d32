"""`/endpoints/{slug}/istio`: the Istio resources that enforce, at an Istio gateway, what Warden
enforces at `/authz/forward` for token checks: the same issuers and keys, the same audiences,
the same host and path binding, the same exempt paths and the same identity headers.

Two `security.istio.io/v1` documents: a `RequestAuthentication` (one jwtRule for Warden's own
issuer and one per trusted issuer of the tenant) and an ALLOW `AuthorizationPolicy` (a request
principal from those issuers on the bound host and prefix; exempt paths without one). Policies
that need Warden (access lists, rules, rate limits) are not expressible there; see
docs/gateways.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from sqlalchemy.ext.asyncio import AsyncSession

from app.authz.gateway import claim_for_source, host_audiences
from app.core import jose
from app.core.config import Settings
from app.core.hosts import prefix_of
from app.endpoints import service as endpoints
from app.endpoints.models import Endpoint
from app.issuers import service as issuers
from app.issuers.models import TrustedIssuer

API_VERSION = "security.istio.io/v1"
_SATELLITE_SOURCES = {"id": "subject", "email": "email", "role": "roles"}
_SATELLITE_DEFAULTS = {"subject": "sub", "email": "email"}


def _claim_headers(pairs: Iterable[tuple[str, str | None]]) -> list[dict[str, str]]:
    return [{"header": header, "claim": claim} for header, claim in pairs if claim]


def _warden_rule(settings: Settings) -> dict[str, Any]:
    mapping = settings.forward_identity_headers
    return {
        "issuer": settings.issuer,
        "jwksUri": f"{settings.issuer}/.well-known/jwks.json",
        "audiences": [settings.jwt_audience],
        "fromHeaders": [{"name": "Authorization", "prefix": "Bearer "}],
        "fromCookies": [settings.forward_auth_cookie],
        "outputClaimToHeaders": _claim_headers(
            (header, claim_for_source(source)) for header, source in mapping.items()
        ),
        "forwardOriginalToken": False,
    }


def _satellite_claim(issuer: TrustedIssuer, source: str) -> str | None:
    """The claim of an external token that feeds an identity header (tenant and kind are
    Warden's knowledge, not the IdP's: those headers are left out)."""
    if source.startswith("claim:"):
        return source.removeprefix("claim:")
    field = _SATELLITE_SOURCES.get(source)
    if field is None:
        return None
    return issuer.claim_mapping.get(field) or _SATELLITE_DEFAULTS.get(field)


def _inline_jwks(pems: list[str]) -> str | None:
    """PEM keys as the inline JWKS Istio wants; keys that do not parse are left out."""
    keys = []
    for pem in pems:
        try:
            public = jose.key_from_pem(pem)
            algorithms = jose.algorithms_for_key(public)
            jwk = jose.public_jwk(public, kid=jose.jwk_thumbprint(public), alg=min(algorithms))
        except (jose.TokenError, TypeError, ValueError):
            continue
        if jwk["kty"] == "RSA":
            del jwk["alg"]  # one RSA key may verify RS256/384/512: do not pin it to one
        keys.append(jwk)
    return json.dumps({"keys": keys}, separators=(",", ":")) if keys else None


def _satellite_rule(issuer: TrustedIssuer, mapping: Mapping[str, str]) -> dict[str, Any] | None:
    rule: dict[str, Any] = {"issuer": issuer.issuer}
    if issuer.jwks_uri:
        rule["jwksUri"] = issuer.jwks_uri
    elif issuer.jwks:
        rule["jwks"] = json.dumps(issuer.jwks, separators=(",", ":"), sort_keys=True)
    elif (inline := _inline_jwks(issuer.public_keys_pem or [])) is not None:
        rule["jwks"] = inline
    else:
        return None  # no usable key: a rule without one would make Istio reject the resource
    if issuer.audiences:
        rule["audiences"] = list(issuer.audiences)
    rule["fromHeaders"] = [{"name": "Authorization", "prefix": "Bearer "}]
    rule["outputClaimToHeaders"] = _claim_headers(
        (header, _satellite_claim(issuer, source)) for header, source in mapping.items()
    )
    rule["forwardOriginalToken"] = False
    return rule


def _operation(hosts: list[str] | None, paths: list[str] | None) -> dict[str, Any]:
    operation: dict[str, Any] = {}
    if hosts:
        operation["hosts"] = list(hosts)  # a shared list would be dumped as a YAML anchor
    if paths:
        operation["paths"] = list(paths)
    return {"operation": operation}


def _paths(prefix: str) -> list[str]:
    return [prefix, f"{prefix}/*"]


def _metadata(endpoint: Endpoint, namespace: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": f"warden-{endpoint.slug}"}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/managed-by": "warden"}
    return metadata


def render_documents(
    settings: Settings,
    endpoint: Endpoint,
    issuers: list[TrustedIssuer],
    namespace: str | None = None,
    app: str | None = None,
) -> list[dict[str, Any]]:
    """The RequestAuthentication and AuthorizationPolicy of one endpoint, as data."""
    mapping = settings.forward_identity_headers
    rules = [_warden_rule(settings)]
    rules += [r for i in issuers if (r := _satellite_rule(i, mapping)) is not None]
    selector = {"selector": {"matchLabels": {"app": app}}} if app else {}
    hosts = None
    if endpoint.host:
        # A Host header may carry a port: `host:*` keeps the rule in force for it too.
        hosts = [endpoint.host] if ":" in endpoint.host else [endpoint.host, f"{endpoint.host}:*"]
    prefix = prefix_of(endpoint.path_prefix)
    principal_rule: dict[str, Any] = {
        "from": [{"source": {"requestPrincipals": [f"{r['issuer']}/*" for r in rules]}}],
        "to": [_operation(hosts, _paths(prefix) if prefix else None)],
    }
    if endpoint.require_host_audience and endpoint.host:
        principal_rule["when"] = [
            {"key": "request.auth.audiences", "values": host_audiences(endpoint.host)}
        ]
    policy_rules = [principal_rule] if endpoint.is_active else []
    exempt = sorted({prefix_of(p) or "/" for p in endpoint.exempt_paths})
    if exempt:
        exempt_paths = [p for e in exempt for p in (_paths(e) if e != "/" else ["/*"])]
        policy_rules.append({"to": [_operation(hosts, exempt_paths)]})
    request_authentication = {
        "apiVersion": API_VERSION,
        "kind": "RequestAuthentication",
        "metadata": _metadata(endpoint, namespace),
        "spec": {**selector, "jwtRules": rules},
    }
    authorization_policy = {
        "apiVersion": API_VERSION,
        "kind": "AuthorizationPolicy",
        "metadata": _metadata(endpoint, namespace),
        "spec": {**selector, "action": "ALLOW", "rules": policy_rules},
    }
    return [request_authentication, authorization_policy]


async def render_istio(
    session: AsyncSession,
    settings: Settings,
    slug: str,
    namespace: str | None,
    app: str | None,
) -> str:
    """The YAML (two documents) for an endpoint of the session's tenant, or 404."""
    endpoint = await endpoints.get_by_slug(session, slug)
    trusted = await issuers.all_issuers(session)
    documents = render_documents(settings, endpoint, trusted, namespace, app)
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)
