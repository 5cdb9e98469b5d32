"""The decision: endpoint state → access policies → rule policies → rate limits.

Access and rule policies are pure and evaluated from the cached endpoint; rate limits are
checked last, so a refused request never spends quota. Every verdict names what decided it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.authz.compiled import CompiledEndpoint, RateLimitRule
from app.core.identity import Principal, Role
from app.core.memo import IdentityMemo
from app.core.ratelimit import AsyncLimiter, LimitState
from app.policies.engine import RuleContext, evaluate_access, evaluate_rules


@dataclass(frozen=True)
class Subject:
    """Who a decision is about (the caller, or an admin's what-if)."""

    key: str
    kind: str
    email: str | None
    role: Role
    scopes: frozenset[str]
    claims: Mapping[str, Any]

    @classmethod
    def of(cls, principal: Principal) -> Subject:
        """The subject of an authenticated principal."""
        claims = dict(principal.claims)
        claims.setdefault("sub", f"{principal.kind}:{principal.id}")
        claims.setdefault("email", principal.email)
        claims["role"] = principal.role.value
        claims["tenant"] = principal.tenant_slug
        return cls(
            key=f"{principal.kind}:{principal.id}",
            kind=principal.kind,
            email=principal.email,
            role=principal.role,
            scopes=principal.scopes,
            claims=claims,
        )


@dataclass(frozen=True)
class RequestFacts:
    """What rule policies may read of the request."""

    method: str
    path: str
    ip: str | None


@dataclass(frozen=True)
class Verdict:
    """The outcome and its explanation."""

    allowed: bool
    code: str
    decided_by: str | None
    reasons: list[str] = field(default_factory=list)
    limit: LimitState | None = None


def may_query(subject: Subject, scope: str = "endpoints:query") -> Verdict | None:
    """A refusal when this kind of principal may not query at all, else None."""
    if subject.kind == "api_key":
        if scope not in subject.scopes:
            return Verdict(False, "insufficient_scope", None, [f"API key lacks scope {scope}"])
        return None
    if not subject.role.at_least(Role.MEMBER):
        return Verdict(False, "insufficient_role", None, ["viewers cannot query endpoints"])
    return None


class Decider:
    """The pure part of a decision (endpoint state, access and rule policies), with the memos
    that spare repeating it. One per process (built with the web state), so two apps in one
    process never share answers.

    A verdict is a pure function of the compiled endpoint, the subject and the request facts
    (unless a rule reads the clock), and both objects are cached and replaced, never changed:
    a caller asking the same endpoint the same way again gets the remembered verdict. A policy
    change compiles a new endpoint object, so it is never answered from an old verdict."""

    def __init__(self, size: int = 10_000) -> None:
        self._subjects: IdentityMemo[Subject] = IdentityMemo(size)
        self._verdicts: IdentityMemo[Verdict] = IdentityMemo(size)

    def subject(self, principal: Principal) -> Subject:
        """The subject of a principal, made once per principal object (a cached token yields
        the same principal on each of its requests)."""
        subject = self._subjects.get(id(principal), principal)
        if subject is None:
            subject = self._subjects.put(id(principal), principal, Subject.of(principal))
        return subject

    def evaluate(
        self,
        endpoint: CompiledEndpoint,
        subject: Subject,
        facts: RequestFacts,
        *,
        explain: bool = False,
        remember: bool = True,
    ) -> Verdict:
        """Endpoint state, access and rule policies (no rate limits). Rule comparisons are
        described in the reasons only when `explain` (an admin's `/authz/check`)."""
        if not remember or endpoint.reads_clock:
            return evaluate(endpoint, subject, facts, explain)
        key = (id(endpoint), id(subject), facts.method, facts.path, facts.ip, explain)
        verdict = self._verdicts.get(key, endpoint, subject)
        if verdict is None:
            verdict = self._verdicts.put(
                key, endpoint, evaluate(endpoint, subject, facts, explain), subject
            )
        return verdict


def evaluate(
    endpoint: CompiledEndpoint, subject: Subject, facts: RequestFacts, explain: bool = False
) -> Verdict:
    """Endpoint state → access policies → rule policies, evaluated afresh."""
    if not endpoint.is_active:
        return Verdict(False, "endpoint_disabled", None, ["endpoint is disabled"])
    access = evaluate_access(endpoint.access, subject.email)
    if not access.allowed:
        return Verdict(False, "access_denied", access.decided_by, list(access.reasons))
    context = RuleContext(
        auth=subject.claims,
        method=facts.method,
        path=facts.path,
        ip=facts.ip,
        time=int(time.time()),
    )
    rules = evaluate_rules(endpoint.rules, context, explain)
    if not rules.allowed:
        return Verdict(False, "rule_denied", rules.decided_by, list(rules.reasons))
    return Verdict(
        True,
        "allowed",
        rules.decided_by or access.decided_by,
        list(access.reasons) + list(rules.reasons),
    )


def limit_key(
    endpoint: CompiledEndpoint, rule: RateLimitRule, subject: Subject, ip: str | None
) -> tuple[str, ...]:
    """Counters are per tenant + endpoint + policy + scope subject (never by slug alone)."""
    if rule.scope == "per_user":
        who = subject.key
    elif rule.scope == "per_ip":
        who = f"ip:{ip or 'unknown'}"
    elif rule.scope in ("per_tenant", "per_endpoint"):
        who = rule.scope.removeprefix("per_")
    else:
        raise ValueError(f"unknown rate-limit scope {rule.scope!r}")
    return ("rl", endpoint.tenant_text, endpoint.id_text, rule.policy_id, who)


async def check_limits(
    limiter: AsyncLimiter,
    endpoint: CompiledEndpoint,
    subject: Subject,
    ip: str | None,
    *,
    spend: bool,
) -> Verdict | None:
    """None when every limit has room (spending one unit each when `spend`), else the refusal.

    Returns the tightest window for the response headers through `Verdict.limit` when allowed."""
    if not endpoint.limits:
        return None
    states: list[tuple[RateLimitRule, LimitState]] = []
    single = len(endpoint.limits) == 1 and spend
    if not single:
        for rule in endpoint.limits:
            state = await limiter.peek(rule.item, *limit_key(endpoint, rule, subject, ip))
            if not state.allowed:
                return _limited(rule, state)
            states.append((rule, state))
    if spend:
        states = []
        for rule in endpoint.limits:
            state = await limiter.hit(rule.item, *limit_key(endpoint, rule, subject, ip))
            if not state.allowed:
                return _limited(rule, state)
            states.append((rule, state))
    tightest = min(states, key=lambda pair: pair[1].remaining)[1]
    return Verdict(True, "allowed", None, [], tightest)


def _limited(rule: RateLimitRule, state: LimitState) -> Verdict:
    return Verdict(
        False,
        "rate_limited",
        rule.policy_id,
        [
            f"rate limit policy {rule.policy_id}: {rule.item.amount} requests per "
            f"{rule.item.multiples}s ({rule.scope}) exceeded"
        ],
        state,
    )
