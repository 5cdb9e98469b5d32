"""Remembered verdicts (`app.authz.decision.Decider`): the same question gets the same answer
without re-evaluating, but never an answer about another endpoint version, another subject, or
a rule that reads the clock."""

from __future__ import annotations

import time
import uuid

import pytest

from app.authz.compiled import CompiledEndpoint
from app.authz.decision import Decider, RequestFacts, Subject
from app.core.identity import Role
from app.policies.engine import AccessConfig, AccessPolicy, RulePolicy, parse_rule_config


def endpoint(*, rules=(), allow=("*@corp.example",)) -> CompiledEndpoint:
    return CompiledEndpoint(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        slug="memo-test",
        upstream_url=None,
        host=None,
        path_prefix=None,
        exempt_paths=(),
        require_host_audience=False,
        is_active=True,
        access=(
            AccessPolicy(
                id="p-access",
                config=AccessConfig.model_validate({"mode": "allow", "patterns": list(allow)}),
            ),
        ),
        rules=tuple(rules),
        limits=(),
        credential=None,
    )


def subject(email: str, role: Role = Role.MEMBER) -> Subject:
    return Subject(
        key=f"user:{email}",
        kind="user",
        email=email,
        role=role,
        scopes=frozenset(),
        claims={"sub": email, "email": email, "role": role.value},
    )


# One decider for the module, as one process has one.
evaluate = Decider().evaluate

FACTS = RequestFacts(method="POST", path="/endpoints/memo-test", ip="10.0.0.1")


def test_a_repeated_question_is_answered_from_memory():
    ep, ann = endpoint(), subject("ann@corp.example")
    first = evaluate(ep, ann, FACTS)
    assert first.allowed
    assert evaluate(ep, ann, FACTS) is first


def test_answers_are_per_endpoint_version_and_subject():
    open_door, bob = endpoint(), subject("bob@other.example")
    assert not evaluate(open_door, bob, FACTS).allowed
    widened = endpoint(allow=("*@other.example",))  # a policy change compiles a new object
    assert evaluate(widened, bob, FACTS).allowed
    assert evaluate(open_door, subject("carl@corp.example"), FACTS).allowed
    assert not evaluate(open_door, bob, FACTS).allowed


def test_explained_and_plain_answers_are_kept_apart():
    ep = endpoint(
        rules=[
            RulePolicy(
                id="p-rule",
                node=parse_rule_config(
                    {"rule": "match", "eval": "==", "f1": "args.auth.role", "f2": "member"}
                ),
            )
        ]
    )
    ann = subject("ann@corp.example")
    plain = evaluate(ep, ann, FACTS)
    explained = evaluate(ep, ann, FACTS, explain=True)
    assert any("args.auth.role == 'member' was true" in r for r in explained.reasons)
    assert not any("was true" in r for r in plain.reasons)


def test_rules_that_read_the_clock_are_evaluated_every_time(monkeypatch: pytest.MonkeyPatch):
    deadline = 1_800_000_000
    ep = endpoint(
        rules=[
            RulePolicy(
                id="p-until",
                node=parse_rule_config(
                    {
                        "rule": "not",
                        "clause": {"rule": "match", "eval": ">", "f1": "args.time", "f2": deadline},
                    }
                ),
            )
        ]
    )
    assert ep.reads_clock
    ann = subject("ann@corp.example")
    monkeypatch.setattr(time, "time", lambda: deadline - 1)
    assert evaluate(ep, ann, FACTS).allowed
    monkeypatch.setattr(time, "time", lambda: deadline + 1)
    assert not evaluate(ep, ann, FACTS).allowed


def test_two_apps_in_one_process_share_no_answers():
    # Each web state builds its own decider: a verdict remembered by one app is not the other's.
    ep, ann = endpoint(), subject("ann@corp.example")
    one, other = Decider(), Decider()
    assert one.evaluate(ep, ann, FACTS) == other.evaluate(ep, ann, FACTS)
    assert one.evaluate(ep, ann, FACTS) is not other.evaluate(ep, ann, FACTS)
