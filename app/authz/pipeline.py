"""The one decision pipeline: may this principal query at all → endpoint state → access
policies → rule policies → rate limits → one outcome → one audit event.

Every entry point that decides (`/endpoints/{slug}/query`, `/authz/check`, `/authz/forward`, and
any later one: a gRPC ext_authz server, shadow policies, metrics) goes through `decide()` and
records through `record()`, so the outcome mapping, the audit shape and the behaviour when the
rate-limit store is down exist once: the limit cannot be checked, so the request is refused
(fail closed) with the store's 503, and the refusal is audited with outcome `error`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.audit.service import AuditWriter
from app.authz.compiled import CompiledEndpoint
from app.authz.decision import Decider, RequestFacts, Subject, Verdict, check_limits, may_query
from app.core.errors import AppError, Forbidden, RateLimited
from app.core.identity import Actor, Principal
from app.core.ratelimit import AsyncLimiter, LimitState

QUERY_SCOPE = "endpoints:query"
_REFUSAL_MESSAGES = {
    "endpoint_disabled": "This endpoint is disabled.",
    "insufficient_role": "Viewers cannot query endpoints.",
    "insufficient_scope": "This API key lacks the endpoints:query scope.",
}


@dataclass(slots=True)  # made on every request: slots, and no frozen-init overhead
class Decision:
    """A verdict about one request, with what the answer needs (limit headers, or the error of
    a dependency that could not be asked)."""

    endpoint: CompiledEndpoint
    subject: Subject
    verdict: Verdict
    limit: LimitState | None = None  # the tightest window, when the request was allowed
    error: AppError | None = None

    @property
    def limit_headers(self) -> dict[str, str]:
        """`X-RateLimit-*` of the tightest window (built only when an answer carries them)."""
        return self.limit.headers() if self.limit is not None else {}

    @property
    def allowed(self) -> bool:
        """True when the request may proceed."""
        return self.error is None and self.verdict.allowed

    @property
    def code(self) -> str:
        """The stable code of the outcome (`allowed`, `access_denied`, `rate_limited`, …)."""
        return self.error.code if self.error is not None else self.verdict.code

    @property
    def outcome(self) -> str:
        """The audit outcome: `allowed`, `denied`, `rate_limited` or `error`."""
        if self.error is not None:
            return "error"
        if self.verdict.allowed:
            return "allowed"
        return "rate_limited" if self.verdict.code == "rate_limited" else "denied"

    def refusal(self) -> AppError:
        """The error a refused caller sees: the policy id, never the patterns."""
        if self.error is not None:
            return self.error
        verdict = self.verdict
        if verdict.code == "rate_limited":
            return RateLimited(
                f"Rate limit of policy {verdict.decided_by} exceeded.",
                headers=verdict.limit.headers() if verdict.limit else {},
                details={"policy_id": verdict.decided_by},
            )
        message = {
            "access_denied": f"Denied by access policy {verdict.decided_by}.",
            "rule_denied": f"Denied by rule policy {verdict.decided_by}.",
            **_REFUSAL_MESSAGES,
        }.get(verdict.code, "Denied.")
        return Forbidden(message, code=verdict.code, details={"policy_id": verdict.decided_by})


class DecisionPipeline:
    """Decides and audits; one per process (its memos and writer belong to the web state)."""

    def __init__(self, decider: Decider, limiter: AsyncLimiter, audit: AuditWriter) -> None:
        self.decider = decider
        self.limiter = limiter
        self.audit = audit

    async def room(self) -> None:
        """Wait for room in the audit queue (503 `audit_backlog` when there is none): every
        decision is audited, so none is made that could not be."""
        await self.audit.room()

    def subject(self, principal: Principal) -> Subject:
        """Who a decision about this principal is about."""
        return self.decider.subject(principal)

    async def decide(
        self,
        endpoint: CompiledEndpoint,
        subject: Subject,
        facts: RequestFacts,
        *,
        spend: bool,
        scope: str = QUERY_SCOPE,
        explain: bool = False,
        remember: bool = True,
    ) -> Decision:
        """The decision about one request. Rate limits come last, so a refused request never
        spends quota; with `spend=False` (a check) they are only read."""
        verdict = may_query(subject, scope=scope) or self.decider.evaluate(
            endpoint, subject, facts, explain=explain, remember=remember
        )
        if not verdict.allowed or not endpoint.limits:
            return Decision(endpoint, subject, verdict)
        try:
            limited = await check_limits(self.limiter, endpoint, subject, facts.ip, spend=spend)
        except AppError as exc:  # the shared counter store is down: fail closed
            return Decision(endpoint, subject, verdict, error=exc)
        if limited is not None and not limited.allowed:
            return Decision(endpoint, subject, limited)
        return Decision(endpoint, subject, verdict, limited.limit if limited is not None else None)

    def record(
        self,
        action: str,
        decision: Decision,
        actor: Actor,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Audit a decision (queued for the batched writer)."""
        self.record_event(
            action,
            tenant_id=decision.endpoint.tenant_id,
            actor=actor,
            outcome=decision.outcome,
            code=decision.code,
            endpoint=decision.endpoint,
            policy=decision.verdict.decided_by,
            details=details,
        )

    def record_event(
        self,
        action: str,
        *,
        tenant_id: uuid.UUID | None,
        actor: Actor,
        outcome: str,
        code: str,
        endpoint: CompiledEndpoint | None = None,
        policy: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Audit an outcome reached before a decision could be made (no binding, an exempt path,
        a refused credential, another tenant's principal) in the same shape as decisions."""
        self.audit.submit(
            tenant_id=tenant_id,
            action=action,
            actor=actor,
            outcome=outcome,
            target_type="endpoint" if endpoint else None,
            target_id=endpoint.id_text if endpoint else None,
            details={
                "endpoint": endpoint.slug if endpoint else None,
                "code": code,
                "policy": policy,
                **(details or {}),
            },
        )
