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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request, Response

from app.authz.bindings import Binding, BindingIndex
from app.authz.compiled import CompiledEndpoint, EndpointCache
from app.authz.decision import RequestFacts
from app.authz.pipeline import DecisionPipeline
from app.core.context import current_request
from app.core.errors import AppError
from app.core.hosts import covers, normalize_path, prefix_of, split_host
from app.core.identity import ANONYMOUS, Actor, Principal

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


# How the caller of a gateway request is authenticated: the web layer's one authenticator in
# its gateway mode (the binding's tenant picks among tenants trusting one issuer).
Authenticate = Callable[[Request, Binding], Awaitable[Principal]]


@dataclass(frozen=True)
class Gateway:
    """What a gateway decision uses: the binding index, the compiled endpoints, the pipeline,
    the authenticator and the identity headers to answer with."""

    bindings: BindingIndex
    endpoints: EndpointCache
    pipeline: DecisionPipeline
    authenticate: Authenticate
    identity_headers: Mapping[str, str]

    def _record(
        self,
        fwd: ForwardedRequest,
        *,
        endpoint: CompiledEndpoint | None,
        actor: Actor,
        outcome: str,
        code: str,
    ) -> None:
        self.pipeline.record_event(
            AUDIT_ACTION,
            tenant_id=endpoint.tenant_id if endpoint else None,
            actor=actor,
            outcome=outcome,
            code=code,
            endpoint=endpoint,
            details=_request_details(fwd),
        )

    async def forward_auth(self, request: Request, suffix: str | None = None) -> Response:
        """Decide one gateway request: binding → exempt → credential → tenant → audience →
        policies → rate limits; audited either way, answered without a body."""
        await self.pipeline.room()
        fwd = forwarded_request(request, suffix)
        binding = await self.bindings.resolve(fwd.host, fwd.path)
        endpoint = await self.endpoints.get(binding.tenant_id, binding.slug) if binding else None
        if binding is None or endpoint is None:
            self._record(fwd, endpoint=None, actor=ANONYMOUS, outcome="denied", code="no_binding")
            return _answer(404, "no_binding")
        if any(covers(prefix_of(p), fwd.path) for p in endpoint.exempt_paths):
            self._record(fwd, endpoint=endpoint, actor=ANONYMOUS, outcome="allowed", code="exempt")
            return _answer(200, None, identity_headers(self.identity_headers, None))
        try:
            principal = await self.authenticate(request, binding)
        except AppError as exc:
            self._record(fwd, endpoint=endpoint, actor=ANONYMOUS, outcome="failure", code=exc.code)
            return _answer(exc.status_code, exc.code, exc.headers)
        if principal.tenant_id != endpoint.tenant_id:
            # A credential never acts in another tenant. The host owner's trail records the
            # attempt without the foreign principal's identity (that belongs to the other tenant).
            self._record(
                fwd,
                endpoint=endpoint,
                actor=Actor(principal.kind),
                outcome="denied",
                code="tenant_mismatch",
            )
            return _answer(403, "tenant_mismatch")
        if endpoint.require_host_audience and not audience_matches(principal, binding.host):
            self._record(
                fwd,
                endpoint=endpoint,
                actor=principal.actor,
                outcome="failure",
                code="audience_mismatch",
            )
            return _answer(
                401, "audience_mismatch", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        facts = RequestFacts(method=fwd.method, path=fwd.path, ip=fwd.ip)
        decision = await self.pipeline.decide(
            endpoint, self.pipeline.subject(principal), facts, spend=True, scope=FORWARD_SCOPE
        )
        self.pipeline.record(AUDIT_ACTION, decision, principal.actor, _request_details(fwd))
        if not decision.allowed:
            refusal = decision.refusal()
            return _answer(refusal.status_code, refusal.code, refusal.headers)
        headers = identity_headers(self.identity_headers, principal)
        return _answer(200, None, {**headers, **decision.limit_headers})


def _request_details(fwd: ForwardedRequest) -> dict[str, str]:
    return {"host": (fwd.host or "")[:255], "method": fwd.method, "path": fwd.path[:512]}
