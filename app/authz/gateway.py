"""`/authz/forward`: the auth service of nginx `auth_request`, Traefik `forwardAuth` and Envoy's
HTTP `ext_authz`.

A gateway asks about a request it holds: the forwarded host and path pick an endpoint binding
(across tenants, `app.authz.bindings`), exempt paths pass without a credential, and otherwise the
caller's credential, the binding's tenant, the host audience, the endpoint's policies and rate
limits decide, exactly as `/endpoints/{slug}/query` does. Answers carry no body (a browser shown
a gateway's 401 must not render JSON meant for us); a 200 sets every identity header, empty when
the principal has no value, so a header the client forged can never survive the gateway.
A warm request makes no database round trip: bindings, endpoints, tokens and API keys are cached.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import Request, Response

from app.apikeys.service import KEY_PREFIX
from app.authz.bindings import Binding, covers, normalize_path, prefix_of, split_host
from app.authz.compiled import CompiledEndpoint
from app.authz.decision import RequestFacts, Subject, Verdict, check_limits, evaluate, may_query
from app.core.context import current_request
from app.core.errors import AppError, Unauthenticated
from app.core.identity import ANONYMOUS, Actor, Principal
from app.web.deps import authenticate_api_key, authenticate_token, bearer_token

if TYPE_CHECKING:
    from app.web.state import Runtime

FORWARD_SCOPE = "authz:forward"
AUDIT_ACTION = "gateway.forward"
# Tells Envoy to drop these headers from the client's request (see `identity_headers`).
ENVOY_REMOVE_HEADER = "x-envoy-auth-headers-to-remove"
CODE_HEADER = "X-Warden-Code"
_METHOD = re.compile(r"\A[A-Z]{1,16}\Z")
# Header values stay printable ASCII: anything else is percent-encoded (UTF-8).
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
MAX_HEADER_VALUE = 1024
_CLAIM_OF_SOURCE = {
    "id": "sub",
    "email": "email",
    "tenant": "tenant",
    "tenant_id": "tid",
    "role": "role",
}


@dataclass(frozen=True)
class ForwardedRequest:
    """What the gateway says about the request it holds."""

    host: str | None
    path: str
    method: str
    ip: str | None


def forwarded_request(request: Request, suffix: str | None) -> ForwardedRequest:
    """Host from `X-Forwarded-Host` (else `Host`); path from the route suffix Envoy appends, else
    `X-Forwarded-Uri` / `X-Original-URI`; method from `X-Forwarded-Method` /
    `X-Original-Method`, else the method of the auth request itself (Envoy keeps it)."""
    headers = request.headers
    host = headers.get("x-forwarded-host") or headers.get("host")
    if suffix is not None:
        path = normalize_path("/" + suffix, decode=False)  # the server decoded it already
    else:
        path = normalize_path(headers.get("x-forwarded-uri") or headers.get("x-original-uri"))
    method = (
        headers.get("x-forwarded-method") or headers.get("x-original-method") or request.method
    ).upper()
    if not _METHOD.match(method):
        method = request.method
    return ForwardedRequest(host=host, path=path, method=method, ip=current_request().ip)


def host_audiences(host: str) -> list[str]:
    """The `aud` values that name a bound host: the host, without its port, and as an https URL."""
    names = [host]
    parsed = split_host(host)
    if parsed is not None and parsed[1] is not None:
        names.append(parsed[0])
    return names + [f"https://{name}" for name in names]


def audience_matches(principal: Principal, host: str | None) -> bool:
    """True when the principal's token names the host in `aud` (API keys carry no audience)."""
    if host is None:
        return False
    aud = principal.claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    wanted = set(host_audiences(host))
    return any(isinstance(v, str) and v.lower().rstrip("/") in wanted for v in values)


def claim_for_source(source: str) -> str | None:
    """The token claim an identity header source reads (None: not a claim, e.g. `kind`)."""
    if source.startswith("claim:"):
        return source.removeprefix("claim:")
    return _CLAIM_OF_SOURCE.get(source)


def _source_value(principal: Principal, source: str) -> str:
    plain = {
        "id": principal.id,
        "email": principal.email or "",
        "tenant": principal.tenant_slug,
        "tenant_id": str(principal.tenant_id),
        "role": principal.role.value,
        "kind": principal.kind,
    }
    if source in plain:
        return plain[source]
    claim = principal.claims.get(source.removeprefix("claim:"))
    items = claim if isinstance(claim, list) else [claim]
    if not all(isinstance(item, str | int | float | bool) for item in items):
        return ""  # objects and nulls have no header form
    return ",".join(str(item).lower() if isinstance(item, bool) else str(item) for item in items)


def _header_value(value: str) -> str:
    encoded = quote(value, safe=_SAFE)
    return encoded if len(encoded) <= MAX_HEADER_VALUE else ""


def identity_headers(mapping: Mapping[str, str], principal: Principal | None) -> dict[str, str]:
    """Every configured identity header, empty when there is no value (Envoy keeps a client's
    header that the answer does not set at all). The empty ones are also named in
    `x-envoy-auth-headers-to-remove`, so behind Envoy, as behind nginx, the app sees no header
    rather than an empty one."""
    headers = {
        name: _header_value(_source_value(principal, source)) if principal else ""
        for name, source in mapping.items()
    }
    empty = [name.lower() for name, value in headers.items() if not value]
    if empty:
        headers[ENVOY_REMOVE_HEADER] = ",".join(empty)
    return headers


def _answer(status: int, code: str | None, headers: Mapping[str, str] | None = None) -> Response:
    out = dict(headers or {})
    if code is not None and status != 200:
        out[CODE_HEADER] = code
    return Response(status_code=status, headers=out)


def _audit(
    runtime: Runtime,
    fwd: ForwardedRequest,
    *,
    tenant_id: uuid.UUID | None,
    actor: Actor,
    outcome: str,
    code: str,
    endpoint: CompiledEndpoint | None = None,
    policy: str | None = None,
) -> None:
    runtime.audit.submit(
        tenant_id=tenant_id,
        action=AUDIT_ACTION,
        actor=actor,
        outcome=outcome,
        target_type="endpoint" if endpoint else None,
        target_id=endpoint.id_text if endpoint else None,
        details={
            "host": (fwd.host or "")[:255],
            "method": fwd.method,
            "path": fwd.path[:512],
            "code": code,
            "endpoint": endpoint.slug if endpoint else None,
            "policy": policy,
        },
    )


async def _authenticate(runtime: Runtime, request: Request, binding: Binding) -> Principal:
    """`Authorization: Bearer` (JWT or `wk_` key) or `X-API-Key`, else the forward cookie.

    The binding's tenant, not a client's `X-Tenant`, picks the tenant of a satellite token whose
    issuer several tenants trust: the host decides whom a gateway request is for."""
    token = bearer_token(request)
    api_key = request.headers.get("x-api-key")
    if token is not None and api_key is not None:
        raise Unauthenticated("Send one credential, not two.", code="ambiguous_credentials")
    if api_key is not None:
        return await authenticate_api_key(runtime, api_key.strip())
    if token is None:
        token = request.cookies.get(runtime.settings.forward_auth_cookie, "").strip()
        if not token:
            raise Unauthenticated()
    if token.startswith(KEY_PREFIX):
        return await authenticate_api_key(runtime, token)
    return await authenticate_token(runtime, token, binding.tenant_slug)


async def forward_auth(runtime: Runtime, request: Request, suffix: str | None = None) -> Response:
    """Decide one gateway request: binding → exempt → credential → tenant → audience → policies
    → rate limits; audited either way, answered without a body."""
    await runtime.audit.room()
    fwd = forwarded_request(request, suffix)
    binding = await runtime.bindings.resolve(fwd.host, fwd.path)
    endpoint = await runtime.endpoints.get(binding.tenant_id, binding.slug) if binding else None
    if binding is None or endpoint is None:
        _audit(runtime, fwd, tenant_id=None, actor=ANONYMOUS, outcome="denied", code="no_binding")
        return _answer(404, "no_binding")
    mapping = runtime.settings.forward_identity_headers
    if any(covers(prefix_of(p), fwd.path) for p in endpoint.exempt_paths):
        _audit(
            runtime,
            fwd,
            tenant_id=endpoint.tenant_id,
            actor=ANONYMOUS,
            outcome="allowed",
            code="exempt",
            endpoint=endpoint,
        )
        return _answer(200, None, identity_headers(mapping, None))
    try:
        principal = await _authenticate(runtime, request, binding)
    except AppError as exc:
        _audit(
            runtime,
            fwd,
            tenant_id=endpoint.tenant_id,
            actor=ANONYMOUS,
            outcome="failure",
            code=exc.code,
            endpoint=endpoint,
        )
        return _answer(exc.status_code, exc.code, exc.headers)
    return await _decide(runtime, fwd, binding, endpoint, principal)


async def _decide(
    runtime: Runtime,
    fwd: ForwardedRequest,
    binding: Binding,
    endpoint: CompiledEndpoint,
    principal: Principal,
) -> Response:
    if principal.tenant_id != endpoint.tenant_id:
        # A credential never acts in another tenant. The host owner's trail records the attempt
        # without the foreign principal's identity (that belongs to the other tenant).
        _audit(
            runtime,
            fwd,
            tenant_id=endpoint.tenant_id,
            actor=Actor(principal.kind),
            outcome="denied",
            code="tenant_mismatch",
            endpoint=endpoint,
        )
        return _answer(403, "tenant_mismatch")
    if endpoint.require_host_audience and not audience_matches(principal, binding.host):
        _audit(
            runtime,
            fwd,
            tenant_id=endpoint.tenant_id,
            actor=principal.actor,
            outcome="failure",
            code="audience_mismatch",
            endpoint=endpoint,
        )
        return _answer(
            401, "audience_mismatch", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    subject = Subject.of(principal)
    facts = RequestFacts(method=fwd.method, path=fwd.path, ip=fwd.ip)
    verdict: Verdict = may_query(subject, scope=FORWARD_SCOPE) or evaluate(endpoint, subject, facts)
    limit_headers: dict[str, str] = {}
    if verdict.allowed:
        try:
            limited = await check_limits(runtime.limiter, endpoint, subject, fwd.ip, spend=True)
        except AppError as exc:  # the shared counter store is down: fail closed
            _audit(
                runtime,
                fwd,
                tenant_id=endpoint.tenant_id,
                actor=principal.actor,
                outcome="error",
                code=exc.code,
                endpoint=endpoint,
            )
            return _answer(exc.status_code, exc.code, exc.headers)
        if limited is not None and not limited.allowed:
            verdict = limited
        elif limited is not None and limited.limit is not None:
            limit_headers = limited.limit.headers()
    outcome = "allowed" if verdict.allowed else "denied"
    if verdict.code == "rate_limited":
        outcome = "rate_limited"
    _audit(
        runtime,
        fwd,
        tenant_id=endpoint.tenant_id,
        actor=principal.actor,
        outcome=outcome,
        code=verdict.code,
        endpoint=endpoint,
        policy=verdict.decided_by,
    )
    if verdict.code == "rate_limited":
        return _answer(429, verdict.code, verdict.limit.headers() if verdict.limit else {})
    if not verdict.allowed:
        return _answer(403, verdict.code)
    headers = identity_headers(runtime.settings.forward_identity_headers, principal)
    return _answer(200, None, {**headers, **limit_headers})
