"""Policy engine: email globs, access policies, rule trees and configuration validation.

Pure functions only; attacks first in each area, then the ordinary behaviour.
"""

from __future__ import annotations

import contextlib
import re
import string
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.policies.engine import (
    MAX_RULE_DEPTH,
    MAX_RULE_NODES,
    AccessConfig,
    AccessPolicy,
    Decision,
    DenyRule,
    MatchRule,
    NotRule,
    RateLimitConfig,
    RuleConfig,
    RuleContext,
    RulePolicy,
    email_matches,
    evaluate_access,
    evaluate_rule,
    evaluate_rules,
    normalize_email,
    parse_rule_config,
    rule_config_adapter,
    validate_email_pattern,
    validate_policy_configuration,
)

# No example database: the suite must not write .hypothesis/ into the work tree.
PROPERTY = settings(
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)


def matches(pattern: str, email: str) -> bool:
    return email_matches(validate_email_pattern(pattern), normalize_email(email))


def naive_glob(pattern: str) -> re.Pattern[str]:
    """The textbook translation, exponential on hostile patterns: a reference for tiny inputs."""
    body = "".join(
        "[^@]*" if ch == "*" else "[^@]" if ch == "?" else re.escape(ch) for ch in pattern
    )
    return re.compile(rf"\A{body}\Z")


# Characters hypothesis may put into addresses: no wildcard/forbidden syntax, no whitespace or
# control characters (those are rejected, which other tests cover).
ADDRESS_CHARS = st.characters(
    blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"),
    blacklist_characters="@*?[]\\",
)
PARTS = st.text(ADDRESS_CHARS, min_size=1, max_size=16)
ASCII_PARTS = st.text(string.ascii_letters + string.digits + ".-_+", min_size=1, max_size=16)
# A domain of dots alone has no canonical form (the root label's dot is dropped): refused.
DOMAINS = PARTS.filter(lambda d: d.strip("."))
ASCII_DOMAINS = ASCII_PARTS.filter(lambda d: d.strip("."))


# ====================================================================== email globs: attacks


PATTERN_TABLE = [
    # (pattern, email normalised before matching, expected)
    ("*@company.com", "ann@company.com", True),
    ("*@company.com", "Ann@Company.COM", True),
    ("*@company.com", "  ann@company.com\n", True),
    ("*@company.com", "ann@company.com.evil.io", False),
    ("*@company.com", "ann@sub.company.com", False),
    ("*@company.com", "ann@evilcompany.com", False),
    ("*@company.com", "ann@company.co", False),
    # The root label's trailing dot names the same domain: one canonical form, so a deny
    # `*@evil.example` also catches `x@evil.example.` from an IdP.
    ("*@company.com", "ann@company.com.", True),
    ("*@company.com", "ann@company.com...", True),
    ("*@company.com.", "ann@company.com", True),
    ("*@company.com", "ann@company\uff0ecom", True),  # fullwidth dot is NFKC '.'
    ("*@company.com", "ann\uff20company.com", True),  # fullwidth @ is NFKC '@'
    ("*@*.company.com", "ann@sub.company.com", True),
    ("*@*.company.com", "ann@company.com", False),
    ("*@*.company.com", "ann@evil.io.company.com", True),
    ("*@*", "x@y", True),
    ("alice@partner.org", "ALICE@partner.org", True),
    ("alice@partner.org", "alice2@partner.org", False),
    ("alice@partner.org", "xalice@partner.org", False),
    # ? is exactly one character, never '@'
    ("a?ice@x.com", "alice@x.com", True),
    ("a?ice@x.com", "avice@x.com", True),
    ("a?ice@x.com", "aice@x.com", False),
    ("a?ice@x.com", "allice@x.com", False),
    ("?@x.com", "a@x.com", True),
    ("?@x.com", "ab@x.com", False),
    ("*@?", "a@b", True),
    ("*@?", "a@bc", False),
    ("a?ice@*.example.org", "alice@eu.example.org", True),
    ("a?ice@*.example.org", "alice@example.org", False),
    # dots and regex metacharacters are literal
    ("a.b@x.com", "a.b@x.com", True),
    ("a.b@x.com", "axb@x.com", False),
    ("*@x.com", "a@xycom", False),
    ("a+b@x.com", "a+b@x.com", True),
    ("a+b@x.com", "aab@x.com", False),
    ("a+b@x.com", "ab@x.com", False),
    ("(a|b)@x.com", "a@x.com", False),
    ("(a|b)@x.com", "(a|b)@x.com", True),
    ("^a$@x.com", "a@x.com", False),
    ("a{2}@x.com", "aa@x.com", False),
    (".*@x.com", "ann@x.com", False),
    (".*@x.com", ".ann@x.com", True),
    ("*@b\u00fccher.de", "ann@B\u00dcCHER.de", True),
]


class TestEmailPatternAttacks:
    @pytest.mark.parametrize(("pattern", "email", "expected"), PATTERN_TABLE)
    def test_pattern_table(self, pattern: str, email: str, expected: bool) -> None:
        assert matches(pattern, email) is expected

    @pytest.mark.parametrize(
        "raw_email",
        [
            "ann@company.com\n",
            "ann\n@company.com",
            "ann@company.com\r\n",
            "ann@company.com\x00",
            "ann\t@company.com",
            "ann\u200b@company.com",  # zero-width space
            "ann@company.com\u202e",  # right-to-left override
            "a@b@company.com",
            "@company.com",
            "ann@",
            " ann@company.com",
            "ANN@company.com",  # not normalised: callers must normalise first
            "",
            "x" * 250 + "@company.com",
        ],
    )
    def test_non_canonical_email_matches_nothing(self, raw_email: str) -> None:
        assert email_matches("*@company.com", raw_email) is False
        assert email_matches("*@*", raw_email) is False

    @pytest.mark.parametrize("raw_pattern", ["*", "[a]@x.com", "a@@b", "a\n@x.com", "", "@"])
    def test_invalid_pattern_matches_nothing(self, raw_pattern: str) -> None:
        assert email_matches(raw_pattern, "a@x.com") is False
        assert email_matches(raw_pattern, "[a]@x.com") is False

    def test_unnormalised_pattern_is_normalised_not_ignored(self) -> None:
        # Fails closed for deny policies whose patterns bypassed validation.
        assert email_matches(" *@Evil.IO ", "ann@evil.io") is True

    def test_hostile_pattern_is_linear(self) -> None:
        # The naive [^@]* translation needs minutes for this (polynomial backtracking).
        pattern = validate_email_pattern("*a" * 40 + "*b@x.com")
        email = normalize_email("a" * 200 + "@x.com")
        started = time.perf_counter()
        assert email_matches(pattern, email) is False
        assert email_matches(pattern.replace("b@", "@"), email) is True
        assert time.perf_counter() - started < 1.0

    def test_compiled_patterns_are_cached(self) -> None:
        from app.policies.engine import _compile_pattern

        pattern = validate_email_pattern("cache-probe-*@x.com")
        email_matches(pattern, "cache-probe-1@x.com")
        hits = _compile_pattern.cache_info().hits
        email_matches(pattern, "cache-probe-2@x.com")
        assert _compile_pattern.cache_info().hits == hits + 1
        assert _compile_pattern.cache_info().maxsize == 4096


class TestEmailPatternValidation:
    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            ("*", "exactly one '@'"),
            ("no-at", "exactly one '@'"),
            ("a@@b", "exactly one '@'"),
            ("a@b@c", "exactly one '@'"),
            ("@x.com", "non-empty local part and domain"),
            ("a@", "non-empty local part and domain"),
            ("a@...", "non-empty local part and domain"),
            ("[a]@x.com", "unsupported character"),
            ("a]@x.com", "unsupported character"),
            ("a\\d@x.com", "unsupported character"),
            ("a b@x.com", "whitespace or control"),
            ("a@x\t.com", "whitespace or control"),
            ("a\n@x.com", "whitespace or control"),
            ("a\x00@x.com", "whitespace or control"),
            ("a\u200b@x.com", "whitespace or control"),
            ("", "empty"),
            ("   ", "empty"),
            ("a" * 243 + "@example.com", "longer than 254"),
        ],
    )
    def test_invalid_patterns_rejected(self, raw: str, message: str) -> None:
        with pytest.raises(ValueError, match=re.escape(message)):
            validate_email_pattern(raw)

    @pytest.mark.parametrize(
        ("raw", "normalised"),
        [
            ("*@company.com", "*@company.com"),
            ("  *@Company.COM \n", "*@company.com"),
            ("alice@partner.org", "alice@partner.org"),
            ("a?ice@*.example.org", "a?ice@*.example.org"),
            ("*@*", "*@*"),
            ("\u212aate@x.com", "kate@x.com"),  # Kelvin sign
        ],
    )
    def test_valid_patterns_normalised(self, raw: str, normalised: str) -> None:
        assert validate_email_pattern(raw) == normalised

    def test_max_length_accepted(self) -> None:
        raw = "a" * 242 + "@example.com"
        assert len(raw) == 254
        assert validate_email_pattern(raw) == raw


class TestNormalizeEmail:
    @pytest.mark.parametrize(
        "raw",
        [
            "",
            "  ",
            "no-at",
            "a@b@c",
            "@x.com",
            "a@",
            "a b@x.com",
            "a@x.com\nbcc@evil.io",
            "a\x00@x.com",
            "a\u2028@x.com",
            "a" * 243 + "@example.com",
        ],
    )
    def test_rejects_implausible(self, raw: str) -> None:
        with pytest.raises(ValueError, match="email"):
            normalize_email(raw)

    @pytest.mark.parametrize(
        ("raw", "normalised"),
        [
            ("Ann@Company.COM", "ann@company.com"),
            ("\t ann@company.com \n", "ann@company.com"),
            ("ann\uff20company.com", "ann@company.com"),
            ("\u212a@x.com", "k@x.com"),
        ],
    )
    def test_normalises(self, raw: str, normalised: str) -> None:
        assert normalize_email(raw) == normalised

    @PROPERTY
    @given(
        local=st.text(
            ADDRESS_CHARS | st.sampled_from("\u03aa\u03ab\u0301\u0345\u0130\u212a"),
            min_size=1,
            max_size=20,
        ),
        domain=DOMAINS,
    )
    def test_idempotent(self, local: str, domain: str) -> None:
        try:
            once = normalize_email(f"{local}@{domain}")
        except ValueError:
            reject()
        assert normalize_email(once) == once


class TestEmailPatternProperties:
    @PROPERTY
    @given(
        local=PARTS,
        domain=DOMAINS,
        other=PARTS,
        variant=st.sampled_from(["same", "other", "sub", "suffix", "upper"]),
    )
    def test_star_at_domain_matches_exactly_that_domain(
        self, local: str, domain: str, other: str, variant: str
    ) -> None:
        pattern_domain = {
            "same": domain,
            "other": other,
            "sub": f"x.{domain}",
            "suffix": f"{domain}.evil.io",
            "upper": domain.upper(),
        }[variant]
        try:
            email = normalize_email(f"{local}@{domain}")
            pattern = validate_email_pattern(f"*@{pattern_domain}")
        except ValueError:
            reject()
        literal_domain = pattern.split("@")[1]
        if "*" in literal_domain or "?" in literal_domain:
            reject()  # NFKC produced a wildcard (e.g. a fullwidth asterisk)
        assert email_matches(pattern, email) is (email.split("@")[1] == literal_domain)

    @PROPERTY
    @given(local=PARTS, domain=DOMAINS, other_local=PARTS, other_domain=DOMAINS)
    def test_pattern_without_wildcard_matches_only_itself(
        self, local: str, domain: str, other_local: str, other_domain: str
    ) -> None:
        try:
            pattern = validate_email_pattern(f"{local}@{domain}")
            other = normalize_email(f"{other_local}@{other_domain}")
        except ValueError:
            reject()
        if "*" in pattern or "?" in pattern:
            reject()
        assert email_matches(pattern, normalize_email(pattern))
        assert email_matches(pattern, other) is (other == pattern)

    @PROPERTY
    @given(local=ASCII_PARTS, domain=ASCII_DOMAINS)
    def test_literal_pattern_is_case_insensitive(self, local: str, domain: str) -> None:
        address = f"{local}@{domain}"
        pattern = validate_email_pattern(address.upper())
        assert email_matches(pattern, normalize_email(address.swapcase()))
        assert email_matches(pattern, normalize_email(address.lower()))

    @PROPERTY
    @given(pattern=st.text(max_size=30), email=st.text(max_size=30))
    def test_never_raises_on_arbitrary_text(self, pattern: str, email: str) -> None:
        assert isinstance(email_matches(pattern, email), bool)

    @PROPERTY
    @given(
        pattern=st.text("ab.@*?[]\\\n ", max_size=12),
        email=st.text("ab.@*?\n\x00 ", max_size=12),
    )
    def test_never_raises_on_syntax_heavy_text(self, pattern: str, email: str) -> None:
        assert isinstance(email_matches(pattern, email), bool)

    @PROPERTY
    @given(
        pattern_local=st.text("ab.*?", min_size=1, max_size=7),
        # A domain of dots alone has no canonical form (it is refused, tested above).
        pattern_domain=st.text("ab.*?", min_size=1, max_size=7).filter(lambda d: d.strip(".")),
        local=st.text("ab.", min_size=1, max_size=9),
        domain=st.text("ab.", min_size=1, max_size=9).filter(lambda d: d.strip(".")),
    )
    def test_agrees_with_naive_translation(
        self, pattern_local: str, pattern_domain: str, local: str, domain: str
    ) -> None:
        pattern = validate_email_pattern(f"{pattern_local}@{pattern_domain}")
        email = normalize_email(f"{local}@{domain}")
        expected = naive_glob(pattern).fullmatch(email) is not None
        assert email_matches(pattern, email) is expected


# ====================================================================== access policies


def access(policy_id: str, mode: str, *patterns: str, priority: int = 0) -> AccessPolicy:
    config = AccessConfig.model_validate({"mode": mode, "patterns": list(patterns)})
    return AccessPolicy(id=policy_id, config=config, priority=priority)


class TestAccessAttacks:
    @pytest.mark.parametrize(
        "email",
        [
            "ann@company.com",
            "ANN@COMPANY.COM",
            " ann@company.com\n",
            "ann\uff20company.com",
            "ann@company\uff0ecom",
            "\uff41nn@company.com",  # fullwidth 'a'
        ],
    )
    def test_deny_cannot_be_dodged_by_spelling(self, email: str) -> None:
        decision = evaluate_access([access("deny-ann", "deny", "ann@company.com")], email)
        assert decision == Decision(
            allowed=False,
            decided_by="deny-ann",
            reasons=("deny policy deny-ann matched pattern 'ann@company.com'",),
        )

    @pytest.mark.parametrize(
        "email",
        [
            "ann@company.com.evil.io",
            "ann@evilcompany.com",
            "ann@sub.company.com",
            "ann\n@company.com",
            "a@b@company.com",
            "ann@company.com\x00",
            "",
            None,
        ],
    )
    def test_allow_not_satisfied_by_lookalikes(self, email: str | None) -> None:
        decision = evaluate_access([access("staff", "allow", "*@company.com")], email)
        assert decision.allowed is False
        assert decision.decided_by == "staff"
        assert decision.reasons[0] == "no pattern of allow policy staff matched"

    def test_permissive_allow_does_not_widen_narrow_allow(self) -> None:
        policies = [access("anyone", "allow", "*@*"), access("staff", "allow", "*@company.com")]
        outsider = evaluate_access(policies, "eve@evil.io")
        assert outsider.allowed is False
        assert outsider.decided_by == "staff"
        insider = evaluate_access(policies, "ann@company.com")
        assert insider.allowed is True

    def test_deny_overrides_allow(self) -> None:
        policies = [
            access("staff", "allow", "*@company.com", priority=100),
            access("no-interns", "deny", "intern-*@company.com"),
        ]
        decision = evaluate_access(policies, "intern-bob@company.com")
        assert decision.allowed is False
        assert decision.decided_by == "no-interns"
        assert decision.reasons == (
            "deny policy no-interns matched pattern 'intern-*@company.com'",
        )
        assert evaluate_access(policies, "ann@company.com").allowed is True

    def test_email_none_is_denied_by_allow_but_not_by_deny(self) -> None:
        allow = evaluate_access([access("staff", "allow", "*@*")], None)
        assert allow.allowed is False
        assert allow.reasons == (
            "no pattern of allow policy staff matched",
            "principal has no email",
        )
        deny_only = evaluate_access([access("block", "deny", "*@*")], None)
        assert deny_only.allowed is True
        assert deny_only.decided_by is None

    def test_invalid_email_matches_no_deny_pattern_but_fails_allow(self) -> None:
        assert evaluate_access([access("block", "deny", "*@*")], "not an email").allowed is True
        decision = evaluate_access([access("all", "allow", "*@*")], "not an email")
        assert decision.allowed is False
        assert decision.reasons[-1] == "principal email is not a valid address"


class TestAccessCombination:
    def test_no_policies_admits_tenant_members(self) -> None:
        assert evaluate_access([], "ann@company.com") == Decision(
            allowed=True,
            decided_by=None,
            reasons=("no access policy: tenant members admitted",),
        )
        assert evaluate_access([], None).allowed is True

    def test_deny_only_without_match_admits(self) -> None:
        decision = evaluate_access([access("block", "deny", "*@evil.io")], "ann@company.com")
        assert decision.allowed is True
        assert decision.decided_by is None
        assert decision.reasons == (
            "no pattern of deny policy block matched",
            "no allow policy: tenant members admitted",
        )

    def test_two_allow_policies_and(self) -> None:
        policies = [
            access("company", "allow", "*@company.com", "*@partner.org"),
            access("named", "allow", "ann@*", "bob@*"),
        ]
        assert evaluate_access(policies, "ann@company.com").allowed is True
        assert evaluate_access(policies, "bob@partner.org").allowed is True
        carl = evaluate_access(policies, "carl@company.com")
        assert (carl.allowed, carl.decided_by) == (False, "named")
        eve = evaluate_access(policies, "ann@evil.io")
        assert (eve.allowed, eve.decided_by) == (False, "company")

    def test_allowed_decision_names_every_matching_pattern(self) -> None:
        policies = [
            access("b-named", "allow", "ann@*"),
            access("a-company", "allow", "*@partner.org", "*@company.com"),
        ]
        decision = evaluate_access(policies, "ann@company.com")
        assert decision == Decision(
            allowed=True,
            decided_by="b-named",
            reasons=(
                "allow policy a-company matched pattern '*@company.com'",
                "allow policy b-named matched pattern 'ann@*'",
            ),
        )

    def test_order_is_priority_desc_then_id(self) -> None:
        policies = [
            access("b", "deny", "*@*"),
            access("a", "deny", "*@*"),
            access("z", "deny", "*@*", priority=5),
        ]
        assert evaluate_access(policies, "x@y.z").decided_by == "z"
        assert evaluate_access(policies[:2], "x@y.z").decided_by == "a"
        allows = [access("b", "allow", "q@*"), access("a", "allow", "q@*")]
        assert evaluate_access(allows, "x@y.z").decided_by == "a"


class TestAccessConfig:
    def test_patterns_are_normalised(self) -> None:
        config = AccessConfig.model_validate({"mode": "allow", "patterns": [" *@Company.COM "]})
        assert config.patterns == ["*@company.com"]

    def test_error_names_bad_pattern_and_index(self) -> None:
        with pytest.raises(ValidationError, match=r"patterns\[1\] '\[a\]@x.com'"):
            AccessConfig.model_validate({"mode": "allow", "patterns": ["*@x.com", "[a]@x.com"]})

    @pytest.mark.parametrize(
        "data",
        [
            {"mode": "allow", "patterns": []},
            {"mode": "allow", "patterns": ["*@x.com"] * 501},
            {"mode": "ALLOW", "patterns": ["*@x.com"]},
            {"mode": "maybe", "patterns": ["*@x.com"]},
            {"mode": "allow", "patterns": ["*@x.com"], "extra": 1},
            {"mode": "allow", "patterns": "*@x.com"},
            {"mode": "allow", "patterns": [1]},
            {"patterns": ["*@x.com"]},
        ],
    )
    def test_rejects_bad_config(self, data: dict[str, Any]) -> None:
        with pytest.raises(ValidationError):
            AccessConfig.model_validate(data)

    def test_accepts_500_patterns(self) -> None:
        patterns = [f"user{i}@x.com" for i in range(500)]
        assert len(AccessConfig(mode="deny", patterns=patterns).patterns) == 500


# ====================================================================== rule trees

FIELDS = [
    "args.auth.sub",
    "args.auth.role",
    "args.auth.roles",
    "args.auth.level",
    "args.auth.org.id",
    "args.auth.urn:zitadel:roles",
    "args.auth.missing.deeper",
    "args.request.method",
    "args.request.path",
    "args.request.ip",
    "args.time",
]
OPERATORS = ["==", "!=", ">", ">=", "<", "<=", "in", "notIn", "contains"]


def match(op: str, f1: Any, f2: Any) -> dict[str, Any]:
    return {"rule": "match", "eval": op, "f1": f1, "f2": f2}


def nested(levels: int) -> dict[str, Any]:
    """A chain of `levels` nodes: not(not(...(allow)))."""
    node: dict[str, Any] = {"rule": "allow"}
    for _ in range(levels - 1):
        node = {"rule": "not", "clause": node}
    return node


def wide(total: int) -> dict[str, Any]:
    """An and-tree of exactly `total` nodes (total >= 2), depth 3."""
    remaining = total - 1
    groups = []
    while remaining:
        size = min(5, remaining)
        groups.append(
            {"rule": "and", "clauses": [{"rule": "allow"}] * (size - 1)}
            if size > 1
            else {"rule": "allow"}
        )
        remaining -= size
    return {"rule": "and", "clauses": groups}


def count_nodes(node: Mapping[str, Any]) -> int:
    children = list(node.get("clauses", [])) + ([node["clause"]] if "clause" in node else [])
    return 1 + sum(count_nodes(child) for child in children)


def validation_message(data: object) -> str:
    with pytest.raises(ValidationError) as info:
        parse_rule_config(data)
    return str(info.value)


class TestRuleValidationAttacks:
    def test_too_deep(self) -> None:
        assert parse_rule_config(nested(MAX_RULE_DEPTH))
        assert "rule tree is too deep (max depth 8)" in validation_message(nested(9))

    def test_very_deep_input_fails_fast(self) -> None:
        started = time.perf_counter()
        assert "too deep" in validation_message(nested(50_000))
        assert time.perf_counter() - started < 1.0

    def test_too_many_nodes(self) -> None:
        assert count_nodes(wide(MAX_RULE_NODES)) == MAX_RULE_NODES
        assert parse_rule_config(wide(MAX_RULE_NODES))
        assert "too many nodes (max 100)" in validation_message(wide(MAX_RULE_NODES + 1))

    def test_cyclic_input_is_rejected(self) -> None:
        node: dict[str, Any] = {"rule": "and", "clauses": []}
        node["clauses"].append(node)
        assert "rule tree" in validation_message(node)

    def test_limits_apply_to_trees_built_in_code(self) -> None:
        leaf: Any = DenyRule(rule="deny")
        for _ in range(MAX_RULE_DEPTH - 1):
            leaf = NotRule(rule="not", clause=leaf)
        with pytest.raises(ValidationError, match="too deep"):
            NotRule(rule="not", clause=leaf)

    def test_unknown_operator(self) -> None:
        message = validation_message(match("=~", "args.auth.role", "admin"))
        assert "unknown operator '=~'" in message

    @pytest.mark.parametrize(
        "field",
        ["args.foo.x", "args.request.body", "args.auth", "args.request", "args.time.x", "args."],
    )
    def test_unknown_field(self, field: str) -> None:
        message = validation_message(match("==", field, "x"))
        assert f"unknown field {field!r}" in message
        assert "match.f1" in message

    @pytest.mark.parametrize(
        "field",
        ["args.auth.", "args.auth.a..b", "args.auth.a b", "args.auth.x/y", "args.auth." + "a" * 65],
    )
    def test_bad_claim_path(self, field: str) -> None:
        assert f"invalid claim path in field {field!r}" in validation_message(
            match("==", "x", field)
        )

    def test_two_literals(self) -> None:
        assert "match compares two literals" in validation_message(match("==", "admin", "admin"))

    def test_field_reference_inside_list_literal(self) -> None:
        message = validation_message(match("in", "args.auth.role", ["args.auth.sub"]))
        assert "field references are not allowed inside a list literal" in message

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (match("in", "args.auth.role", "admin"), "operator 'in' needs a list"),
            (match("notIn", "args.auth.role", 3), "operator 'notIn' needs a list"),
            (match("in", ["a"], "args.auth.roles"), "needs a single value as f1"),
            (match(">", "args.time", None), "operator '>' needs a number or string as f2"),
            (match("<=", True, "args.time"), "operator '<=' needs a number or string as f1"),
            (match(">=", "args.time", [1]), "needs a number or string"),
            (match("contains", 3, "args.auth.role"), "needs a list or string"),
            (match("contains", "args.auth.roles", ["a"]), "needs a single value as f2"),
        ],
    )
    def test_operand_shapes(self, data: dict[str, Any], message: str) -> None:
        assert message in validation_message(data)

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ({"rule": "xor"}, "does not match any of the expected tags"),
            ({"eval": "=="}, "Unable to extract tag"),
            ({"rule": "allow", "extra": 1}, "Extra inputs are not permitted"),
            ({"rule": "and", "clauses": []}, "at least 1 item"),
            ({"rule": "and", "clauses": [{"rule": "allow"}] * 21}, "at most 20 items"),
            ({"rule": "or"}, "Field required"),
            ({"rule": "not", "clause": []}, "clause"),
            (match("==", "args.auth.role", "x" * 257), "at most 256 characters"),
            (match("in", "args.auth.role", ["x"] * 101), "at most 100 items"),
            (match("==", "args.auth.level", float("nan")), "finite number"),
            (match("==", "args.auth.level", {"a": 1}), "match.f2"),
            ("allow", "valid dictionary"),
            (None, "valid dictionary"),
        ],
    )
    def test_malformed_trees(self, data: object, message: str) -> None:
        assert message in validation_message(data)


class TestRuleValidation:
    def test_round_trip(self) -> None:
        tree = {
            "rule": "and",
            "clauses": [
                {"rule": "authenticated"},
                {"rule": "not", "clause": match("==", "args.auth.role", None)},
                {"rule": "or", "clauses": [match("in", "args.request.method", ["GET", "HEAD"])]},
                match(">=", "args.time", 1.5),
                match("contains", "args.auth.roles", True),
            ],
        }
        dumped = validate_policy_configuration("rule", tree)
        assert dumped == tree
        assert validate_policy_configuration("rule", dumped) == dumped

    def test_literal_types_are_kept(self) -> None:
        node = parse_rule_config(match("in", "args.auth.x", [True, 1, 1.5, "1", None]))
        assert isinstance(node, MatchRule)
        assert isinstance(node.f2, tuple)
        assert [type(v) for v in node.f2] == [bool, int, float, str, type(None)]
        assert RuleConfig(node).model_dump(mode="json")["f2"] == [True, 1, 1.5, "1", None]

    def test_adapter_and_root_model_agree(self) -> None:
        tree = match("==", "args.auth.role", "admin")
        assert rule_config_adapter.validate_python(tree) == RuleConfig.model_validate(tree).root

    @pytest.mark.parametrize("field", FIELDS)
    def test_known_fields_accepted(self, field: str) -> None:
        assert parse_rule_config(match("==", field, "x"))


CTX = RuleContext(
    auth={
        "sub": "user-1",
        "role": "admin",
        "roles": ["admin", "ops"],
        "level": 3,
        "score": 2.5,
        "flag": True,
        "nothing": None,
        "email": "ann@company.com",
        "org": {"id": "o1", "tier": 2},
        "urn:zitadel:roles": ["reader"],
    },
    method="GET",
    path="/v1/items/42",
    ip=None,
    time=1_700_000_000,
)

EVALUATION_TABLE = [
    # ==
    (match("==", "args.auth.role", "admin"), True),
    (match("==", "args.auth.role", "user"), False),
    (match("==", "admin", "args.auth.role"), True),
    (match("==", "args.auth.level", 3), True),
    (match("==", "args.auth.level", 3.0), True),
    (match("==", "args.auth.level", "3"), False),
    (match("==", "args.auth.flag", True), True),
    (match("==", "args.auth.flag", 1), False),
    (match("==", "args.auth.nothing", None), True),
    (match("==", "args.auth.role", None), False),
    (match("==", "args.auth.absent", None), False),
    (match("==", "args.auth.org.id", "o1"), True),
    (match("==", "args.auth.org.tier", 2), True),
    (match("==", "args.auth.org.id.x", "o1"), False),
    (match("==", "args.auth.roles", ["admin", "ops"]), True),
    (match("==", "args.auth.roles", ["ops", "admin"]), False),
    (match("==", "args.auth.role", "args.auth.roles"), False),
    (match("==", "args.request.method", "GET"), True),
    (match("==", "args.request.path", "/v1/items/42"), True),
    # !=
    (match("!=", "args.auth.role", "user"), True),
    (match("!=", "args.auth.role", "admin"), False),
    (match("!=", "args.auth.absent", "x"), False),
    (match("!=", "args.auth.level", "3"), False),
    (match("!=", "args.auth.role", None), True),
    (match("!=", "args.request.ip", "10.0.0.1"), False),
    # ordering
    (match(">", "args.auth.level", 2), True),
    (match(">", "args.auth.level", 3), False),
    (match(">=", "args.auth.level", 3), True),
    (match("<", "args.auth.score", 3), True),
    (match("<=", "args.auth.score", 2.5), True),
    (match("<", "args.auth.score", 2.5), False),
    (match(">", "args.auth.role", "a"), True),
    (match(">", "args.auth.role", 1), False),
    (match("<", "args.auth.role", 1), False),
    (match(">", "args.auth.flag", 0), False),
    (match(">", "args.auth.absent", 0), False),
    (match("<=", "args.auth.absent", 0), False),
    (match(">=", "args.time", 1_600_000_000), True),
    (match("<", 1_800_000_000, "args.time"), False),
    (match(">", "args.auth.roles", "a"), False),
    # in / notIn
    (match("in", "args.auth.role", ["admin", "x"]), True),
    (match("in", "args.auth.role", ["x"]), False),
    (match("in", "ops", "args.auth.roles"), True),
    (match("in", "root", "args.auth.roles"), False),
    (match("in", "args.auth.level", [3]), True),
    (match("in", "args.auth.level", ["3"]), False),
    (match("in", "args.auth.flag", [1]), False),
    (match("in", "args.auth.role", "args.auth.role"), False),
    (match("in", "args.auth.absent", ["x"]), False),
    (match("in", "x", "args.auth.absent"), False),
    (match("in", "args.request.method", ["GET", "HEAD"]), True),
    (match("in", "reader", "args.auth.urn:zitadel:roles"), True),
    (match("notIn", "args.auth.role", ["x"]), True),
    (match("notIn", "args.auth.role", ["admin"]), False),
    (match("notIn", "args.auth.absent", ["x"]), False),
    (match("notIn", "args.request.ip", ["10.0.0.1"]), False),
    (match("notIn", "args.auth.role", "args.auth.role"), False),
    # contains
    (match("contains", "args.auth.roles", "ops"), True),
    (match("contains", "args.auth.roles", "root"), False),
    (match("contains", "args.auth.email", "@company.com"), True),
    (match("contains", "args.auth.email", "@evil.io"), False),
    (match("contains", "args.request.path", "/items/"), True),
    (match("contains", "args.auth.level", 3), False),
    (match("contains", "args.auth.email", 3), False),
    (match("contains", "args.auth.absent", "x"), False),
    (match("contains", ["admin", "x"], "args.auth.role"), True),
    (match("contains", ["x"], "args.auth.role"), False),
    (match("contains", "adminx", "args.auth.role"), True),
    # leaves and combinators
    ({"rule": "allow"}, True),
    ({"rule": "deny"}, False),
    ({"rule": "authenticated"}, True),
    ({"rule": "and", "clauses": [{"rule": "allow"}, {"rule": "deny"}]}, False),
    ({"rule": "and", "clauses": [{"rule": "allow"}, {"rule": "authenticated"}]}, True),
    ({"rule": "or", "clauses": [{"rule": "deny"}, {"rule": "allow"}]}, True),
    ({"rule": "or", "clauses": [{"rule": "deny"}, {"rule": "deny"}]}, False),
    ({"rule": "not", "clause": {"rule": "deny"}}, True),
    ({"rule": "not", "clause": {"rule": "allow"}}, False),
    ({"rule": "not", "clause": match("==", "args.auth.absent", "banned")}, True),
    ({"rule": "not", "clause": {"rule": "not", "clause": {"rule": "allow"}}}, True),
]


class TestRuleEvaluationAttacks:
    @pytest.mark.parametrize(
        "auth",
        [{}, {"sub": ""}, {"sub": "   "}, {"sub": None}, {"sub": 7}, {"sub": ["u"]}],
    )
    def test_authenticated_needs_non_empty_string_sub(self, auth: dict[str, Any]) -> None:
        ctx = RuleContext(auth=auth, method="GET", path="/", ip=None, time=0)
        outcome, why = evaluate_rule(parse_rule_config({"rule": "authenticated"}), ctx)
        assert outcome is False
        assert why == "not authenticated: no sub in args.auth"

    def test_hostile_mapping_fails_closed_even_under_not(self) -> None:
        class Exploding(Mapping[str, Any]):
            def __getitem__(self, key: str) -> Any:
                raise RuntimeError("boom")

            def __iter__(self) -> Iterator[str]:
                raise RuntimeError("boom")

            def __len__(self) -> int:
                return 1

            def __contains__(self, key: object) -> bool:
                raise RuntimeError("boom")

        ctx = RuleContext(auth=Exploding(), method="GET", path="/", ip=None, time=0)
        node = parse_rule_config({"rule": "not", "clause": match("==", "args.auth.role", "banned")})
        assert evaluate_rule(node, ctx) == (False, "rule evaluation failed (RuntimeError)")

    def test_deep_tree_built_without_validation_is_evaluated_iteratively(self) -> None:
        node: Any = DenyRule(rule="deny")
        for _ in range(20_000):
            node = NotRule.model_construct(rule="not", clause=node)
        started = time.perf_counter()
        outcome, why = evaluate_rule(node, CTX)
        assert outcome is False
        assert why.startswith("not (not (")
        assert len(why) <= 1000
        assert time.perf_counter() - started < 2.0

    def test_huge_claim_values_do_not_blow_up_explanations(self) -> None:
        ctx = RuleContext(
            auth={"role": "x" * 100_000, "roles": list(range(100_000))},
            method="GET",
            path="/",
            ip="10.0.0.1",
            time=0,
        )
        for tree in (match("==", "args.auth.role", "a"), match("in", 5, "args.auth.roles")):
            _, why = evaluate_rule(parse_rule_config(tree), ctx)
            assert len(why) < 300


class TestRuleEvaluation:
    @pytest.mark.parametrize(("tree", "expected"), EVALUATION_TABLE)
    def test_evaluation_table(self, tree: dict[str, Any], expected: bool) -> None:
        outcome, why = evaluate_rule(parse_rule_config(tree), CTX)
        assert outcome is expected, why
        assert why
        assert not why.startswith("rule evaluation failed")
        # The hot path evaluates without descriptions: the outcome must not depend on them.
        assert evaluate_rule(parse_rule_config(tree), CTX, explain=False)[0] is expected

    def test_explanations(self) -> None:
        ctx = RuleContext(auth={"role": "member"}, method="GET", path="/", ip=None, time=0)
        assert evaluate_rule(parse_rule_config(match("==", "args.auth.role", "admin")), ctx) == (
            False,
            "match args.auth.role == 'admin' was false ('member')",
        )
        _, missing = evaluate_rule(parse_rule_config(match("==", "args.auth.x", 1)), ctx)
        assert missing == "match args.auth.x == 1 was false (missing, missing field)"
        _, mismatch = evaluate_rule(parse_rule_config(match(">", "args.auth.role", 1)), ctx)
        assert mismatch == "match args.auth.role > 1 was false ('member', type mismatch)"
        _, inverted = evaluate_rule(
            parse_rule_config({"rule": "not", "clause": {"rule": "deny"}}), ctx
        )
        assert inverted == "not (rule deny)"

    def test_equal_looking_literals_keep_their_own_explanations(self) -> None:
        # 1 == 1.0 == True in Python: a description cached by equality would mix them up.
        for literal, shown in ((1, "1"), (1.0, "1.0"), (True, "True"), (3, "3")):
            _, why = evaluate_rule(parse_rule_config(match("==", "args.auth.level", literal)), CTX)
            assert why.startswith(f"match args.auth.level == {shown} was "), why

    def test_and_reports_first_false_clause_and_short_circuits(self) -> None:
        tree = {
            "rule": "and",
            "clauses": [
                {"rule": "allow"},
                match("==", "args.auth.role", "user"),
                {"rule": "deny"},
            ],
        }
        assert evaluate_rule(parse_rule_config(tree), CTX) == (
            False,
            "match args.auth.role == 'user' was false ('admin')",
        )

    def test_or_reports_first_true_clause(self) -> None:
        tree = {"rule": "or", "clauses": [{"rule": "deny"}, match("in", "ops", "args.auth.roles")]}
        assert evaluate_rule(parse_rule_config(tree), CTX) == (
            True,
            "match 'ops' in args.auth.roles was true (['admin', 'ops'])",
        )
        none_true = {"rule": "or", "clauses": [{"rule": "deny"}, {"rule": "deny"}]}
        assert evaluate_rule(parse_rule_config(none_true), CTX) == (
            False,
            "none of 2 clause(s) of or was true",
        )

    def test_ip_is_resolved_when_known(self) -> None:
        ctx = RuleContext(auth={}, method="POST", path="/", ip="10.0.0.1", time=0)
        node = parse_rule_config(match("notIn", "args.request.ip", ["192.0.2.1"]))
        assert evaluate_rule(node, ctx)[0] is True


def rule_policy(policy_id: str, tree: dict[str, Any], priority: int = 0) -> RulePolicy:
    return RulePolicy(id=policy_id, node=parse_rule_config(tree), priority=priority)


class TestRulePolicies:
    def test_no_policies_allows(self) -> None:
        assert evaluate_rules([], CTX) == Decision(True, None, ("no rule policy",))

    def test_every_policy_must_pass(self) -> None:
        policies = [
            rule_policy("b-admin", match("==", "args.auth.role", "admin")),
            rule_policy("a-get", match("==", "args.request.method", "POST")),
        ]
        assert evaluate_rules(policies, CTX) == Decision(
            allowed=False,
            decided_by="a-get",
            reasons=(
                "rule policy a-get denied: match args.request.method == 'POST' was false ('GET')",
            ),
        )

    def test_first_failure_by_priority_then_id(self) -> None:
        policies = [
            rule_policy("a", {"rule": "deny"}),
            rule_policy("b", {"rule": "deny"}),
            rule_policy("c", {"rule": "deny"}, priority=1),
        ]
        assert evaluate_rules(policies, CTX).decided_by == "c"
        assert evaluate_rules(policies[:2], CTX).decided_by == "a"

    def test_all_pass(self) -> None:
        policies = [
            rule_policy("z", {"rule": "authenticated"}, priority=-1),
            rule_policy("m", {"rule": "allow"}),
        ]
        assert evaluate_rules(policies, CTX) == Decision(
            allowed=True,
            decided_by="z",
            reasons=(
                "rule policy m passed: rule allow",
                "rule policy z passed: authenticated: principal has a sub",
            ),
        )


# ---------------------------------------------------------------------- rule properties

SAFE_TEXT = st.text(max_size=12).filter(lambda s: not s.startswith("args."))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    SAFE_TEXT,
)
LITERAL_LISTS = st.lists(SCALARS, max_size=5)
ORDERABLE = st.one_of(
    st.integers(-(10**12), 10**12), st.floats(allow_nan=False, allow_infinity=False), SAFE_TEXT
)


@st.composite
def match_nodes(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(OPERATORS))
    field = draw(st.sampled_from(FIELDS))
    literal: Any
    if op in (">", ">=", "<", "<="):
        literal = draw(ORDERABLE)
    elif op in ("in", "notIn"):
        literal = draw(LITERAL_LISTS)
    elif op == "contains":
        literal = draw(SCALARS)
    else:
        literal = draw(st.one_of(SCALARS, LITERAL_LISTS))
    other = draw(st.one_of(st.just(literal), st.sampled_from(FIELDS)))
    if op in ("==", "!=", ">", ">=", "<", "<=") and draw(st.booleans()):
        return match(op, other, field)
    return match(op, field, other)


@st.composite
def rule_trees(draw: st.DrawFn) -> dict[str, Any]:
    budget = MAX_RULE_NODES - 1  # nodes not yet reserved; the root is paid for

    def build(depth: int) -> dict[str, Any]:
        nonlocal budget
        kinds = ["allow", "deny", "authenticated", "match", "match"]
        if depth < MAX_RULE_DEPTH and budget >= 1:
            kinds += ["and", "or", "not"]
        kind = draw(st.sampled_from(kinds))
        if kind == "not":
            budget -= 1
            return {"rule": "not", "clause": build(depth + 1)}
        if kind in ("and", "or"):
            count = draw(st.integers(1, min(4, budget)))
            budget -= count
            return {"rule": kind, "clauses": [build(depth + 1) for _ in range(count)]}
        if kind == "match":
            return draw(match_nodes())
        return {"rule": kind}

    return build(1)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["id", "x", "sub"]) | st.text(max_size=4), children, max_size=4
        ),
    ),
    max_leaves=12,
)
CONTEXTS = st.builds(
    RuleContext,
    auth=st.dictionaries(
        st.sampled_from(["sub", "role", "roles", "level", "org", "urn:zitadel:roles"])
        | st.text(max_size=6),
        JSON_VALUES,
        max_size=6,
    ),
    method=st.sampled_from(["GET", "POST", "DELETE"]) | st.text(max_size=6),
    path=st.text(max_size=20),
    ip=st.none() | st.text(max_size=15),
    time=st.integers(-(2**63), 2**63),
)


class TestRuleProperties:
    @PROPERTY
    @given(tree=rule_trees(), ctx=CONTEXTS)
    def test_valid_trees_never_raise(self, tree: dict[str, Any], ctx: RuleContext) -> None:
        node = parse_rule_config(tree)
        outcome, why = evaluate_rule(node, ctx)
        assert isinstance(outcome, bool)
        assert why
        assert not why.startswith("rule evaluation failed")
        assert evaluate_rule(node, ctx, explain=False)[0] is outcome

    @PROPERTY
    @given(tree=rule_trees(), ctx=CONTEXTS)
    def test_not_inverts(self, tree: dict[str, Any], ctx: RuleContext) -> None:
        outcome, _ = evaluate_rule(parse_rule_config(tree), ctx)
        try:
            inverted = parse_rule_config({"rule": "not", "clause": tree})
        except ValidationError:
            reject()  # wrapping pushed it past the depth or node limit
        assert evaluate_rule(inverted, ctx)[0] is (not outcome)

    @PROPERTY
    @given(tree=rule_trees())
    def test_configuration_round_trips(self, tree: dict[str, Any]) -> None:
        dumped = validate_policy_configuration("rule", tree)
        assert validate_policy_configuration("rule", dumped) == dumped
        assert parse_rule_config(dumped) == parse_rule_config(tree)

    @PROPERTY
    @given(data=JSON_VALUES)
    def test_arbitrary_input_only_raises_validation_error(self, data: object) -> None:
        with contextlib.suppress(ValidationError):
            parse_rule_config(data)


# ====================================================================== rate limits & dispatch


class TestRateLimitConfig:
    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ({"requests_per_period": 10, "period_seconds": 0}, "greater than or equal to 1"),
            ({"requests_per_period": 0, "period_seconds": 60}, "greater than or equal to 1"),
            ({"requests_per_period": 1_000_001, "period_seconds": 60}, "less than or equal"),
            ({"requests_per_period": 10, "period_seconds": 31_536_001}, "less than or equal"),
            ({"requests_per_period": 10, "period_seconds": 60, "scope": "global"}, "per_user"),
            ({"requests_per_period": True, "period_seconds": 60}, "valid integer"),
            ({"requests_per_period": "10", "period_seconds": 60}, "valid integer"),
            ({"requests_per_period": 10.5, "period_seconds": 60}, "valid integer"),
            ({"requests_per_period": 10, "period_seconds": 60, "burst": 5}, "Extra inputs"),
            ({"period_seconds": 60}, "Field required"),
        ],
    )
    def test_rejects(self, data: dict[str, Any], message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            RateLimitConfig.model_validate(data)

    def test_defaults_and_bounds(self) -> None:
        config = RateLimitConfig(requests_per_period=1, period_seconds=31_536_000)
        assert config.scope == "per_user"
        assert (
            RateLimitConfig(requests_per_period=1_000_000, period_seconds=1, scope="per_ip").scope
            == "per_ip"
        )


class TestValidatePolicyConfiguration:
    def test_access(self) -> None:
        assert validate_policy_configuration(
            "access", {"mode": "deny", "patterns": ["*@Evil.IO"]}
        ) == {"mode": "deny", "patterns": ["*@evil.io"]}

    def test_rate_limit(self) -> None:
        dumped = validate_policy_configuration(
            "rate_limit", {"requests_per_period": 5, "period_seconds": 60}
        )
        assert dumped == {"requests_per_period": 5, "period_seconds": 60, "scope": "per_user"}
        assert validate_policy_configuration("rate_limit", dumped) == dumped

    def test_rule(self) -> None:
        tree = match("notIn", "args.auth.role", ["banned"])
        assert validate_policy_configuration("rule", tree) == tree

    @pytest.mark.parametrize(
        ("policy_type", "configuration"),
        [
            ("access", {"mode": "allow", "patterns": ["*"]}),
            ("rate_limit", {"requests_per_period": 5, "period_seconds": 0}),
            ("rule", {"rule": "match", "eval": "==", "f1": 1, "f2": 2}),
            ("access", None),
            ("rule", []),
        ],
    )
    def test_invalid_raises_validation_error(self, policy_type: str, configuration: object) -> None:
        with pytest.raises(ValidationError):
            validate_policy_configuration(policy_type, configuration)

    def test_unknown_type(self) -> None:
        with pytest.raises(ValueError, match="unknown policy type 'quota'"):
            validate_policy_configuration("quota", {})
