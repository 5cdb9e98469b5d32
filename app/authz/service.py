"""Enforcement: `/endpoints/{slug}/query` and `/authz/check`, audited through the batched
writer so the hot path never waits for the database."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from app.authz.compiled import CompiledEndpoint
from app.authz.decision import RequestFacts, Subject, Verdict, check_limits, evaluate, may_query
from app.authz.relay import forward
from app.authz.schemas import CheckRequest, CheckResponse
from app.core.context import current_request
from app.core.emails import normalize_email
from app.core.errors import AppError, Forbidden, NotFound, RateLimited, Unprocessable
from app.core.identity import Principal, Role
from app.web.state import Runtime


async def load_endpoint(runtime: Runtime, principal: Principal, slug: str) -> CompiledEndpoint:
    """The endpoint in the caller's tenant (cached), or 404."""
    endpoint = await runtime.endpoints.get(principal.tenant_id, slug)
    if endpoint is None:
        raise NotFound("Endpoint not found.", code="endpoint_not_found")
    return endpoint


def _audit_decision(
    runtime: Runtime,
    principal: Principal,
    endpoint: CompiledEndpoint,
    verdict: Verdict,
    action: str,
    extra: dict[str, Any] | None = None,
) -> None:
    outcome = (
        "allowed"
        if verdict.allowed
        else ("rate_limited" if verdict.code == "rate_limited" else "denied")
    )
    runtime.audit.submit(
        tenant_id=principal.tenant_id,
        action=action,
        actor=principal.actor,
        outcome=outcome,
        target_type="endpoint",
        target_id=endpoint.id_text,
        details={
            "endpoint": endpoint.slug,
            "code": verdict.code,
            "policy": verdict.decided_by,
            **(extra or {}),
        },
    )


def refusal(verdict: Verdict) -> AppError:
    """The error a refused caller sees: the policy id, never the patterns."""
    if verdict.code == "rate_limited":
        headers = verdict.limit.headers() if verdict.limit else {}
        return RateLimited(
            f"Rate limit of policy {verdict.decided_by} exceeded.",
            headers=headers,
            details={"policy_id": verdict.decided_by},
        )
    message = {
        "access_denied": f"Denied by access policy {verdict.decided_by}.",
        "rule_denied": f"Denied by rule policy {verdict.decided_by}.",
        "endpoint_disabled": "This endpoint is disabled.",
        "insufficient_role": "Viewers cannot query endpoints.",
        "insufficient_scope": "This API key lacks the endpoints:query scope.",
    }.get(verdict.code, "Denied.")
    return Forbidden(message, code=verdict.code, details={"policy_id": verdict.decided_by})


async def query(runtime: Runtime, request: Request, principal: Principal, slug: str) -> Response:
    """Authenticate (done) → tenant match → access → rules → rate limits → forward → audit."""
    await runtime.audit.room()
    endpoint = await load_endpoint(runtime, principal, slug)
    subject = Subject.of(principal)
    ip = current_request().ip
    facts = RequestFacts(method=request.method, path=request.url.path, ip=ip)
    verdict = may_query(subject) or evaluate(endpoint, subject, facts)
    limit_headers: dict[str, str] = {}
    if verdict.allowed:
        limited = await check_limits(runtime.limiter, endpoint, subject, ip, spend=True)
        if limited is not None and not limited.allowed:
            verdict = limited
        elif limited is not None and limited.limit is not None:
            limit_headers = limited.limit.headers()
    if not verdict.allowed:
        _audit_decision(runtime, principal, endpoint, verdict, "endpoint.query")
        raise refusal(verdict)
    if endpoint.upstream_url is None:
        _audit_decision(runtime, principal, endpoint, verdict, "endpoint.query")
        return JSONResponse(
            {"allowed": True, "decided_by": verdict.decided_by, "endpoint": endpoint.slug},
            headers=limit_headers,
        )
    try:
        response, status = await forward(
            runtime.http, request, endpoint, principal, runtime.settings.upstream_allowed_hosts
        )
    except AppError as exc:
        _audit_decision(
            runtime, principal, endpoint, verdict, "endpoint.query", {"upstream_error": exc.code}
        )
        raise
    response.headers.update(limit_headers)
    _audit_decision(
        runtime, principal, endpoint, verdict, "endpoint.query", {"upstream_status": status}
    )
    return response


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


async def check(runtime: Runtime, principal: Principal, data: CheckRequest) -> CheckResponse:
    """A decision without forwarding and without spending quota."""
    await runtime.audit.room()
    is_admin = principal.kind != "api_key" and principal.role.at_least(Role.ADMIN)
    if principal.kind == "api_key" and not ({"authz:check", "endpoints:query"} & principal.scopes):
        raise Forbidden("This API key lacks the authz:check scope.", code="insufficient_scope")
    if data.as_ is not None and not is_admin:
        raise Forbidden("Only admins may ask about another principal.", code="insufficient_role")
    endpoint = await load_endpoint(runtime, principal, data.endpoint)
    subject = _what_if_subject(principal, data) if data.as_ else Subject.of(principal)
    ip = current_request().ip
    facts = RequestFacts(method=data.method, path=data.path or f"/endpoints/{endpoint.slug}", ip=ip)
    verdict = may_query(subject) or evaluate(
        endpoint, subject, facts, explain=is_admin, remember=data.as_ is None
    )
    if verdict.allowed:
        limited = await check_limits(runtime.limiter, endpoint, subject, ip, spend=False)
        if limited is not None and not limited.allowed:
            verdict = limited
    _audit_decision(
        runtime, principal, endpoint, verdict, "authz.check", {"what_if": data.as_ is not None}
    )
    reasons = (
        verdict.reasons
        if is_admin
        else ([f"decided by policy {verdict.decided_by}"] if verdict.decided_by else [])
    )
    return CheckResponse(
        allowed=verdict.allowed, decided_by=verdict.decided_by, reasons=reasons, code=verdict.code
    )
