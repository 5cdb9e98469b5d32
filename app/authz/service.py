"""Enforcement entry points over the one pipeline: `/endpoints/{slug}/query` (decide, spend,
forward) and `/authz/check` (decide without spending or forwarding). Audited through the
batched writer, so the hot path never waits for the database."""

from __future__ import annotations

import functools
import json

from fastapi import Request
from fastapi.responses import Response

from app.authz.compiled import CompiledEndpoint, EndpointCache
from app.authz.decision import RequestFacts, Subject
from app.authz.pipeline import DecisionPipeline
from app.authz.relay import Relay
from app.authz.schemas import CheckRequest, CheckResponse
from app.core.context import current_request
from app.core.emails import normalize_email
from app.core.errors import AppError, Forbidden, NotFound, Unprocessable
from app.core.identity import Principal, Role

QUERY_ACTION = "endpoint.query"
CHECK_ACTION = "authz.check"


async def load_endpoint(
    endpoints: EndpointCache, principal: Principal, slug: str
) -> CompiledEndpoint:
    """The endpoint in the caller's tenant (cached), or 404."""
    endpoint = await endpoints.get(principal.tenant_id, slug, tenant_text=principal.tenant_text)
    if endpoint is None:
        raise NotFound("Endpoint not found.", code="endpoint_not_found")
    return endpoint


async def query(
    endpoints: EndpointCache,
    pipeline: DecisionPipeline,
    relay: Relay,
    request: Request,
    principal: Principal,
    slug: str,
) -> Response:
    """Authenticate (done) → tenant match → access → rules → rate limits → forward → audit."""
    await pipeline.room()
    endpoint = await load_endpoint(endpoints, principal, slug)
    facts = RequestFacts(method=request.method, path=url_path(request), ip=current_request().ip)
    decision = await pipeline.decide(endpoint, pipeline.subject(principal), facts, spend=True)
    if not decision.allowed:
        pipeline.record(QUERY_ACTION, decision, principal.actor)
        raise decision.refusal()
    if endpoint.upstream_url is None:
        pipeline.record(QUERY_ACTION, decision, principal.actor)
        return Response(
            _allowed_body(endpoint.slug, decision.verdict.decided_by),
            headers=decision.limit_headers,
            media_type="application/json",
        )
    try:
        response, status = await relay.send(request, endpoint, principal)
    except AppError as exc:
        pipeline.record(QUERY_ACTION, decision, principal.actor, {"upstream_error": exc.code})
        raise
    response.headers.update(decision.limit_headers)
    pipeline.record(QUERY_ACTION, decision, principal.actor, {"upstream_status": status})
    return response


def url_path(request: Request) -> str:
    """`request.url.path` without building the whole URL (host, query string) per request:
    Starlette's URL escapes these three characters of the decoded path and keeps the rest."""
    path: str = request.scope["path"]
    if "?" in path or "#" in path or "\\" in path:
        return path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    return path


@functools.lru_cache(maxsize=4_096)  # a pure function of its arguments: a memo, not state
def _allowed_body(slug: str, decided_by: str | None) -> bytes:
    """The answer of an allowed decision-only query (the same bytes as a `JSONResponse`)."""
    body = {"allowed": True, "decided_by": decided_by, "endpoint": slug}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _what_if_subject(principal: Principal, data: CheckRequest) -> Subject:
    assert data.as_ is not None  # noqa: S101  (caller checks)
    email = None
    if data.as_.email is not None:
        try:
            email = normalize_email(data.as_.email)
        except ValueError as exc:
            raise Unprocessable(f"as.email: {exc}", code="invalid_email") from exc
    claims = {
        **data.as_.claims,
        "sub": f"whatif:{email}",
        "email": email,
        "role": data.as_.role.value,
        "tenant": principal.tenant_slug,
    }
    return Subject(
        key=f"whatif:{email}",
        kind="user",
        email=email,
        role=data.as_.role,
        scopes=frozenset(),
        claims=claims,
    )


async def check(
    endpoints: EndpointCache, pipeline: DecisionPipeline, principal: Principal, data: CheckRequest
) -> CheckResponse:
    """A decision without forwarding and without spending quota."""
    await pipeline.room()
    is_admin = principal.kind != "api_key" and principal.role.at_least(Role.ADMIN)
    if principal.kind == "api_key" and not ({"authz:check", "endpoints:query"} & principal.scopes):
        raise Forbidden("This API key lacks the authz:check scope.", code="insufficient_scope")
    if (data.as_ is not None or data.ip is not None) and not is_admin:
        raise Forbidden("Only admins may ask about another principal.", code="insufficient_role")
    endpoint = await load_endpoint(endpoints, principal, data.endpoint)
    subject = _what_if_subject(principal, data) if data.as_ else pipeline.subject(principal)
    facts = RequestFacts(
        method=data.method,
        path=data.path or f"/endpoints/{endpoint.slug}",
        ip=str(data.ip) if data.ip is not None else current_request().ip,
    )
    decision = await pipeline.decide(
        endpoint,
        subject,
        facts,
        spend=False,
        explain=is_admin,
        remember=data.as_ is None and data.ip is None,
    )
    pipeline.record(CHECK_ACTION, decision, principal.actor, {"what_if": data.as_ is not None})
    if decision.error is not None:
        raise decision.error
    verdict = decision.verdict
    reasons = (
        verdict.reasons
        if is_admin
        else ([f"decided by policy {verdict.decided_by}"] if verdict.decided_by else [])
    )
    return CheckResponse(
        allowed=verdict.allowed, decided_by=verdict.decided_by, reasons=reasons, code=verdict.code
    )
