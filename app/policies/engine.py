"""Policy engine: email globs, access policies, rule trees and policy configuration validation.

Everything here is pure (no I/O, no eval): configurations are validated when written and
evaluated against a request without ever raising.
"""

from __future__ import annotations

import functools
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeAlias, TypeGuard

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

from app.core.emails import MAX_EMAIL_LENGTH, canonical_address, normalize_email
from app.core.memo import IdentityMemo

__all__ = [
    "MAX_EMAIL_LENGTH",
    "MAX_RULE_DEPTH",
    "MAX_RULE_NODES",
    "AccessConfig",
    "AccessPolicy",
    "AllowRule",
    "AndRule",
    "AuthenticatedRule",
    "Decision",
    "DenyRule",
    "MatchOp",
    "MatchRule",
    "NotRule",
    "OrRule",
    "RateLimitConfig",
    "RuleConfig",
    "RuleContext",
    "RuleNode",
    "RulePolicy",
    "email_matches",
    "evaluate_access",
    "evaluate_rule",
    "evaluate_rules",
    "parse_rule_config",
    "reads_clock",
    "rule_config_adapter",
    "validate_email_pattern",
    "validate_policy_configuration",
]

MAX_PATTERNS: Final = 500
MAX_RULE_DEPTH: Final = 8
MAX_RULE_NODES: Final = 100
MAX_CLAUSES: Final = 20
MAX_RULE_STRING: Final = 256
MAX_RULE_LIST: Final = 100


# --------------------------------------------------------------------------- emails and globs


def validate_email_pattern(p: str) -> str:
    """Normalise a whole-email glob (only `*` and `?` are special); raise ValueError if invalid."""
    pattern = canonical_address(p, "pattern")
    bad = sorted({ch for ch in pattern if ch in "[]\\"})
    if bad:
        raise ValueError(
            f"pattern contains unsupported character(s) {''.join(bad)!r}; only * and ? are special"
        )
    return pattern


def _is_canonical_email(email: str) -> bool:
    try:
        return normalize_email(email) == email
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def _compile_pattern(pattern: str) -> re.Pattern[str] | None:
    # Patterns are trusted configuration, so one that skipped validation is normalised here
    # (a deny pattern stored as `*@Evil.io` must still deny); an invalid one compiles to None,
    # "matches nothing", so matching never raises.
    try:
        pattern = validate_email_pattern(pattern)
    except ValueError:
        return None
    # The naive translation ([^@]* per star) backtracks polynomially: `*a` x8 + `*b@x.com`
    # took 51 s against a 60-character local part when measured. Each star but the last is an
    # atomic lazy group that commits to the leftmost occurrence of the segment after it. Every
    # segment has a fixed length, so the leftmost occurrence always leaves the most room for the
    # rest and committing to it loses no match; the last star stays greedy because its segment
    # is anchored at the end. Matching is then O(len(pattern) * len(email)).
    segments = [
        "".join("[^@]" if ch == "?" else re.escape(ch) for ch in segment)
        for segment in re.split(r"\*+", pattern)
    ]
    if len(segments) == 1:
        body = segments[0]
    else:
        middle = "".join(f"(?>[^@]*?{segment})" for segment in segments[1:-1])
        body = f"{segments[0]}{middle}[^@]*{segments[-1]}"
    return re.compile(rf"\A{body}\Z")


def _match_canonical(pattern: str, email: str) -> bool:
    compiled = _compile_pattern(pattern)
    return compiled is not None and compiled.fullmatch(email) is not None


def email_matches(pattern: str, email: str) -> bool:
    """Whole-string glob match of a pattern against a normalised email; never raises."""
    if not isinstance(pattern, str) or not isinstance(email, str):
        return False
    # The email is the untrusted side: a non-canonical one (stray newline, second '@', upper
    # case...) matches nothing rather than being repaired here. Callers normalise first, as
    # evaluate_access does.
    if not _is_canonical_email(email):
        return False
    return _match_canonical(pattern, email)


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    """Outcome of evaluating one family of policies."""

    allowed: bool
    decided_by: str | None
    reasons: tuple[str, ...]


# --------------------------------------------------------------------------- access policies


class AccessConfig(BaseModel):
    """Configuration of an access policy: allow or deny principals whose email matches a glob."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["allow", "deny"]
    patterns: list[str] = Field(min_length=1, max_length=MAX_PATTERNS)

    @field_validator("patterns")
    @classmethod
    def _normalise_patterns(cls, patterns: list[str]) -> list[str]:
        normalised: list[str] = []
        for index, pattern in enumerate(patterns):
            try:
                normalised.append(validate_email_pattern(pattern))
            except ValueError as exc:
                raise ValueError(f"patterns[{index}] {pattern!r} is invalid: {exc}") from exc
        return normalised


@dataclass(frozen=True)
class AccessPolicy:
    """An access policy as stored for a tenant or endpoint."""

    id: str
    config: AccessConfig
    priority: int = 0


def _first_matching(patterns: Sequence[str], email: str | None) -> str | None:
    if email is None:
        return None
    return next((p for p in patterns if _match_canonical(p, email)), None)


@functools.lru_cache(maxsize=8192)
def _normalized_or_none(email: str) -> str | None:
    # Decisions run per request for the same few principals: normalise each email once.
    try:
        return normalize_email(email)
    except ValueError:
        return None


def evaluate_access(policies: Sequence[AccessPolicy], email: str | None) -> Decision:
    """Deny wins; otherwise the email must match every allow policy (AND); no policy admits."""
    ordered = sorted(policies, key=lambda policy: (-policy.priority, policy.id))
    principal: str | None = None
    why_unmatched = "principal has no email"
    if email is not None:
        principal = _normalized_or_none(email)
        if principal is None:
            why_unmatched = "principal email is not a valid address"

    deny = [policy for policy in ordered if policy.config.mode == "deny"]
    allow = [policy for policy in ordered if policy.config.mode == "allow"]

    for policy in deny:
        hit = _first_matching(policy.config.patterns, principal)
        if hit is not None:
            return Decision(
                allowed=False,
                decided_by=policy.id,
                reasons=(f"deny policy {policy.id} matched pattern '{hit}'",),
            )

    if not allow:
        if not deny:
            return Decision(True, None, ("no access policy: tenant members admitted",))
        reasons = tuple(f"no pattern of deny policy {policy.id} matched" for policy in deny)
        return Decision(True, None, (*reasons, "no allow policy: tenant members admitted"))

    # Allow policies are ANDed: one broad allow policy must not widen a narrower one.
    matched: list[str] = []
    for policy in allow:
        hit = _first_matching(policy.config.patterns, principal)
        if hit is None:
            reasons = (f"no pattern of allow policy {policy.id} matched",)
            if principal is None:
                reasons = (*reasons, why_unmatched)
            return Decision(allowed=False, decided_by=policy.id, reasons=reasons)
        matched.append(f"allow policy {policy.id} matched pattern '{hit}'")
    return Decision(allowed=True, decided_by=allow[-1].id, reasons=tuple(matched))


# --------------------------------------------------------------------------- rule trees

MatchOp: TypeAlias = Literal["==", "!=", ">", ">=", "<", "<=", "in", "notIn", "contains"]
_MATCH_OPS: Final[tuple[str, ...]] = ("==", "!=", ">", ">=", "<", "<=", "in", "notIn", "contains")
_ORDERING_OPS: Final = frozenset({">", ">=", "<", "<="})

_RuleString = Annotated[str, StringConstraints(max_length=MAX_RULE_STRING)]
_RuleFloat = Annotated[float, Field(allow_inf_nan=False)]
# bool before int so that JSON true stays a bool; pydantic's smart union prefers exact types.
Scalar: TypeAlias = _RuleString | bool | int | _RuleFloat | None
Operand: TypeAlias = Scalar | Annotated[tuple[Scalar, ...], Field(max_length=MAX_RULE_LIST)]

_FIELD_PREFIX: Final = "args."
_REQUEST_FIELDS: Final = frozenset({"args.request.method", "args.request.path", "args.request.ip"})
_CLAIM_SEGMENT: Final = re.compile(r"[A-Za-z0-9_:-]{1,64}")


def _is_field(operand: object) -> TypeGuard[str]:
    return isinstance(operand, str) and operand.startswith(_FIELD_PREFIX)


def _check_field(reference: str) -> None:
    if reference in _REQUEST_FIELDS or reference == "args.time":
        return
    if reference.startswith("args.auth."):
        # Dots separate nested claims; a claim name that itself contains a dot would make
        # `a.b` ambiguous between two tokens, so it is not addressable.
        segments = reference[len("args.auth.") :].split(".")
        if all(_CLAIM_SEGMENT.fullmatch(segment) for segment in segments):
            return
        raise ValueError(
            f"invalid claim path in field {reference!r}: each dotted part must match "
            "[A-Za-z0-9_:-]{1,64}"
        )
    raise ValueError(
        f"unknown field {reference!r}: expected args.auth.<claim>, args.request.method, "
        "args.request.path, args.request.ip or args.time"
    )


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowRule(_Node):
    """Always true."""

    rule: Literal["allow"]


class DenyRule(_Node):
    """Always false."""

    rule: Literal["deny"]


class AuthenticatedRule(_Node):
    """True when the request carries a principal with a non-empty `sub` claim."""

    rule: Literal["authenticated"]


class MatchRule(_Node):
    """Compare two operands; strings starting with `args.` are field references."""

    rule: Literal["match"]
    eval: MatchOp
    f1: Operand
    f2: Operand

    @field_validator("eval", mode="before")
    @classmethod
    def _known_operator(cls, value: object) -> object:
        if value not in _MATCH_OPS:
            raise ValueError(f"unknown operator {value!r}: expected one of {', '.join(_MATCH_OPS)}")
        return value

    @field_validator("f1", "f2")
    @classmethod
    def _known_field(cls, operand: Operand) -> Operand:
        if _is_field(operand):
            _check_field(operand)
        elif isinstance(operand, tuple) and any(_is_field(item) for item in operand):
            # A reference inside a list would silently be compared as a literal string.
            raise ValueError("field references are not allowed inside a list literal")
        return operand

    @model_validator(mode="after")
    def _check_operands(self) -> MatchRule:
        f1_field, f2_field = _is_field(self.f1), _is_field(self.f2)
        if not f1_field and not f2_field:
            raise ValueError("match compares two literals: at least one of f1/f2 must be a field")
        op = self.eval
        # Shapes that can never be true are configuration mistakes, so refuse them on write.
        if op in _ORDERING_OPS:
            for name, operand, is_field in (("f1", self.f1, f1_field), ("f2", self.f2, f2_field)):
                if not is_field and (operand is None or isinstance(operand, bool | tuple)):
                    raise ValueError(f"operator {op!r} needs a number or string as {name}")
        elif op in ("in", "notIn"):
            if not f2_field and not isinstance(self.f2, tuple):
                raise ValueError(f"operator {op!r} needs a list (or a field) as f2")
            if not f1_field and isinstance(self.f1, tuple):
                raise ValueError(f"operator {op!r} needs a single value as f1, not a list")
        elif op == "contains":
            if not f1_field and not isinstance(self.f1, tuple | str):
                raise ValueError("operator 'contains' needs a list or string (or a field) as f1")
            if not f2_field and isinstance(self.f2, tuple):
                raise ValueError("operator 'contains' needs a single value as f2, not a list")
        return self


def _child_nodes(node: object) -> list[object]:
    if isinstance(node, Mapping):
        clause = node.get("clause")
        clauses = node.get("clauses")
        children: list[object] = [clause] if isinstance(clause, Mapping | _Node) else []
        if isinstance(clauses, list | tuple):
            children.extend(clauses)
        return children
    if isinstance(node, NotRule):
        return [node.clause]
    if isinstance(node, AndRule | OrRule):
        return list(node.clauses)
    return []


def reads_clock(node: RuleNode) -> bool:
    """Whether a rule tree looks at `args.time` (its outcome may then change on its own)."""
    stack: list[object] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, MatchRule) and "args.time" in (current.f1, current.f2):
            return True
        stack.extend(_child_nodes(current))
    return False


def _check_tree_limits(data: object) -> object:
    # Runs on the raw input before pydantic recurses into it, iteratively and with an early
    # stop, so hostile input (very deep, very wide or cyclic) costs at most MAX_RULE_NODES steps.
    stack: list[tuple[object, int]] = [(data, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_RULE_NODES:
            raise ValueError(f"rule tree has too many nodes (max {MAX_RULE_NODES})")
        if depth > MAX_RULE_DEPTH:
            raise ValueError(f"rule tree is too deep (max depth {MAX_RULE_DEPTH})")
        stack.extend((child, depth + 1) for child in _child_nodes(node))
    return data


class _Composite(_Node):
    @model_validator(mode="before")
    @classmethod
    def _limits(cls, data: object) -> object:
        return _check_tree_limits(data)


class AndRule(_Composite):
    """True when every clause is true (short-circuits on the first false one)."""

    rule: Literal["and"]
    clauses: tuple[RuleNode, ...] = Field(min_length=1, max_length=MAX_CLAUSES)


class OrRule(_Composite):
    """True when any clause is true (short-circuits on the first true one)."""

    rule: Literal["or"]
    clauses: tuple[RuleNode, ...] = Field(min_length=1, max_length=MAX_CLAUSES)


class NotRule(_Composite):
    """Inverts its clause."""

    rule: Literal["not"]
    clause: RuleNode


RuleNode: TypeAlias = Annotated[
    AllowRule | DenyRule | AuthenticatedRule | MatchRule | AndRule | OrRule | NotRule,
    Field(discriminator="rule"),
]

for _model in (AndRule, OrRule, NotRule):
    _model.model_rebuild()

_CheckedRuleNode: TypeAlias = Annotated[RuleNode, BeforeValidator(_check_tree_limits)]


class RuleConfig(RootModel[_CheckedRuleNode]):
    """A rule policy configuration: the object is the root node of the rule tree."""


rule_config_adapter: TypeAdapter[RuleNode] = TypeAdapter(
    _CheckedRuleNode, config=ConfigDict(title="RuleConfig")
)


def parse_rule_config(data: object) -> RuleNode:
    """Validate a rule tree (shape and limits); raise pydantic.ValidationError when invalid."""
    return rule_config_adapter.validate_python(data)


@dataclass(frozen=True)
class RuleContext:
    """What a rule may look at: token claims, the request line, client ip and the time."""

    auth: Mapping[str, Any]
    method: str
    path: str
    ip: str | None
    time: int


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING: Final = _Missing()

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = 5
_short.maxtuple = 5
_short.maxdict = 5
_short.maxlevel = 3


@functools.lru_cache(maxsize=4096)
def _claim_path(operand: str) -> tuple[str, ...]:
    return tuple(operand[len("args.auth.") :].split("."))


def _resolve(operand: object, ctx: RuleContext) -> object:
    if not _is_field(operand):
        return operand
    if operand == "args.request.method":
        return ctx.method
    if operand == "args.request.path":
        return ctx.path
    if operand == "args.request.ip":
        # An unknown client address must not satisfy `!=`/`notIn` checks.
        return _MISSING if ctx.ip is None else ctx.ip
    if operand == "args.time":
        return ctx.time
    current: object = ctx.auth
    for segment in _claim_path(operand):
        if not isinstance(current, Mapping) or segment not in current:
            return _MISSING
        current = current[segment]
    return current


def _kind(value: object) -> str:
    if isinstance(value, str):  # the common case first
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return "other"


def _equal(a: object, b: object) -> bool:
    # Type-aware, as in JSON: "1" != 1 and bools are not numbers (Python says True == 1).
    kind = _kind(a)
    if kind != _kind(b) or kind == "other":
        return False
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    return a == b


def _compare(op: str, a: object, b: object) -> tuple[bool, str]:
    """Apply one operator to resolved values; the string notes why a comparison was void."""
    if a is _MISSING or b is _MISSING:
        return False, "missing field"
    if op in ("==", "!="):
        if a is None or b is None:
            both = a is None and b is None
            return (both if op == "==" else not both), ""
        if _kind(a) != _kind(b):
            return False, "type mismatch"
        same = _equal(a, b)
        return (same if op == "==" else not same), ""
    if op in _ORDERING_OPS:
        kind = _kind(a)
        if kind != _kind(b) or kind not in ("number", "string"):
            return False, "type mismatch"
        left: Any = a
        right: Any = b
        if op == ">":
            return bool(left > right), ""
        if op == ">=":
            return bool(left >= right), ""
        if op == "<":
            return bool(left < right), ""
        return bool(left <= right), ""
    if op in ("in", "notIn"):
        if not isinstance(b, list | tuple):
            return False, "not a list"
        # A string equals only strings, so `in` (C speed) is already type-aware for one.
        found = a in b if type(a) is str else any(_equal(a, item) for item in b)
        return (found if op == "in" else not found), ""
    # contains
    if isinstance(a, list | tuple):
        return any(_equal(item, b) for item in a), ""
    if isinstance(a, str) and isinstance(b, str):
        return b in a, ""
    return False, "type mismatch"


def _describe_operand(operand: object) -> str:
    if _is_field(operand):
        return operand
    return _short.repr(operand)


_LABELS: IdentityMemo[str] = IdentityMemo(4096)


def _match_label(node: MatchRule) -> str:
    # Constant per node: described once, not per request (by identity: equal nodes may differ
    # in what they show, 1 == 1.0 == True).
    label = _LABELS.get(id(node), node)
    if label is None:
        label = f"match {_describe_operand(node.f1)} {node.eval} {_describe_operand(node.f2)}"
        _LABELS.put(id(node), node, label)
    return label


_PLAIN_SCALARS: Final = (str, int, float, bool, type(None))


def _show(value: object) -> str:
    """`_short.repr(value)`; short plain scalars, which reprlib leaves as they are, skip it."""
    if type(value) in _PLAIN_SCALARS:
        text = repr(value)
        if len(text) <= 40:  # under every reprlib limit: the same text reprlib would give
            return text
    return _short.repr(value)


def _evaluate_match(node: MatchRule, ctx: RuleContext, explain: bool) -> tuple[bool, str]:
    left, right = _resolve(node.f1, ctx), _resolve(node.f2, ctx)
    outcome, note = _compare(node.eval, left, right)
    if not explain:
        return outcome, ""
    shown = [
        _show(value) for operand, value in ((node.f1, left), (node.f2, right)) if _is_field(operand)
    ]
    if note:
        shown.append(note)
    text = f"{_match_label(node)} was {'true' if outcome else 'false'} ({', '.join(shown)})"
    return outcome, _clip(text)


def _evaluate_leaf(node: object, ctx: RuleContext, explain: bool) -> tuple[bool, str]:
    if isinstance(node, AllowRule):
        return True, "rule allow"
    if isinstance(node, DenyRule):
        return False, "rule deny"
    if isinstance(node, AuthenticatedRule):
        sub = ctx.auth.get("sub") if isinstance(ctx.auth, Mapping) else None
        if isinstance(sub, str) and sub.strip():
            return True, "authenticated: principal has a sub"
        return False, "not authenticated: no sub in args.auth"
    if isinstance(node, MatchRule):
        return _evaluate_match(node, ctx, explain)
    return False, f"unknown rule node {type(node).__name__}"


_MAX_EXPLANATION: Final = 1000


def _clip(text: str) -> str:
    # Explanations nest one level per `not`; trees built in code can be arbitrarily deep.
    return text if len(text) <= _MAX_EXPLANATION else f"{text[: _MAX_EXPLANATION - 3]}..."


@dataclass
class _Frame:
    node: object
    next_child: int = 0


def _evaluate_tree(root: object, ctx: RuleContext, explain: bool) -> tuple[bool, str]:
    if not isinstance(root, AndRule | OrRule | NotRule):
        return _evaluate_leaf(root, ctx, explain)  # a lone leaf needs no stack
    # Explicit stack instead of recursion: trees built in code bypass the depth limit.
    stack = [_Frame(root)]
    result: tuple[bool, str] | None = None
    while stack:
        frame = stack[-1]
        node = frame.node
        if isinstance(node, AndRule | OrRule):
            is_and = isinstance(node, AndRule)
            if result is not None and result[0] != is_and:
                stack.pop()  # short-circuit: a false clause decides `and`, a true one `or`
                continue
            if frame.next_child < len(node.clauses):
                stack.append(_Frame(node.clauses[frame.next_child]))
                frame.next_child += 1
                result = None
                continue
            stack.pop()
            count = len(node.clauses)
            result = (
                (True, f"all {count} clause(s) of and were true")
                if is_and
                else (False, f"none of {count} clause(s) of or was true")
            )
        elif isinstance(node, NotRule):
            if frame.next_child == 0:
                frame.next_child = 1
                stack.append(_Frame(node.clause))
                result = None
                continue
            stack.pop()
            inner = result if result is not None else (False, "empty not")
            result = (not inner[0], _clip(f"not ({inner[1]})"))
        else:
            stack.pop()
            result = _evaluate_leaf(node, ctx, explain)
    return result if result is not None else (False, "empty rule")


def evaluate_rule(node: RuleNode, ctx: RuleContext, explain: bool = True) -> tuple[bool, str]:
    """Evaluate a rule tree; returns the outcome and what decided it (comparisons are described
    only when `explain`: the descriptions cost more than the evaluation), and never raises."""
    try:
        return _evaluate_tree(node, ctx, explain)
    except Exception as exc:
        # Fails closed for the whole tree: a swallowed error inside a `not` would otherwise
        # turn into a grant.
        return False, f"rule evaluation failed ({type(exc).__name__})"


@dataclass(frozen=True)
class RulePolicy:
    """A rule policy as stored for a tenant or endpoint."""

    id: str
    node: RuleNode
    priority: int = 0


def evaluate_rules(
    policies: Sequence[RulePolicy], ctx: RuleContext, explain: bool = True
) -> Decision:
    """Every rule policy must pass (AND); the first failing one decides the denial."""
    ordered = sorted(policies, key=lambda policy: (-policy.priority, policy.id))
    if not ordered:
        return Decision(True, None, ("no rule policy",))
    passed: list[str] = []
    for policy in ordered:
        outcome, why = evaluate_rule(policy.node, ctx, explain)
        if not outcome:
            return Decision(False, policy.id, (f"rule policy {policy.id} denied: {why}",))
        passed.append(f"rule policy {policy.id} passed: {why}")
    return Decision(True, ordered[-1].id, tuple(passed))


# --------------------------------------------------------------------------- rate limits


class RateLimitConfig(BaseModel):
    """Configuration of a rate-limit policy (enforcement lives elsewhere)."""

    model_config = ConfigDict(extra="forbid")

    # strict: pydantic's lax mode would read JSON true as 1 and "60" as 60.
    requests_per_period: int = Field(strict=True, ge=1, le=1_000_000)
    period_seconds: int = Field(strict=True, ge=1, le=31_536_000)
    scope: Literal["per_user", "per_tenant", "per_ip", "per_endpoint"] = "per_user"


# --------------------------------------------------------------------------- dispatch


def validate_policy_configuration(policy_type: str, configuration: object) -> dict[str, Any]:
    """Validate and normalise a policy configuration into a JSON-able dict that round-trips."""
    if policy_type == "access":
        return AccessConfig.model_validate(configuration).model_dump(mode="json")
    if policy_type == "rate_limit":
        return RateLimitConfig.model_validate(configuration).model_dump(mode="json")
    if policy_type == "rule":
        # No exclude_none: a `null` literal operand is meaningful and required.
        dumped = RuleConfig.model_validate(configuration).model_dump(mode="json")
        if not isinstance(dumped, dict):  # pragma: no cover - the root is always a node
            raise TypeError("rule configuration did not serialise to an object")
        return dumped
    raise ValueError(f"unknown policy type {policy_type!r}: expected access, rate_limit or rule")
