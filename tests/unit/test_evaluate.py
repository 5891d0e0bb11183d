"""Rule precedence and verdicts, table-driven."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from authz.limits.base import CounterKey
from authz.policy.evaluate import (
    _KNOWN_HITS,
    MAX_KNOWN_HITS,
    MAX_KNOWN_VERDICTS,
    evaluate,
    hits,
)
from authz.policy.load import parse_policy
from authz.policy.model import Policy
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall

POLICY: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "tools": {
        "get_balance": {},
        "transfer": {"action": "deny", "reason": "transfers need a human"},
        "db_*": {"action": "deny", "reason": "no database tools"},
        "db_read_*": {"reason": "reads are fine"},
        "db_read_users": {"action": "deny", "reason": "PII"},
        "gh_?": {"reason": "single-letter github tools"},
        "*_dangerous": {"action": "deny"},
        "x*": {"reason": "first of two equally specific"},
        "*y": {"action": "deny", "reason": "second of two equally specific"},
    },
    "methods": {"resources/read": {"action": "deny", "reason": "no resources"}, "prompts/*": {}},
}


ANYONE = Caller("agent-1")


def load(doc: dict[str, Any]) -> Policy:
    return parse_policy(json.dumps(doc).encode(), "p.json")


def tool_call(name: str) -> McpCall:
    return McpCall("tools/call", 1, name)


@pytest.mark.parametrize(
    ("tool", "allowed", "rule", "reason"),
    [
        (
            "get_balance",
            True,
            "/tools/get_balance",
            'tool "get_balance" is allowed by /tools/get_balance',
        ),
        ("transfer", False, "/tools/transfer", "transfers need a human"),
        (
            "Transfer",
            False,
            "(default deny)",
            'tool "Transfer" is not in the policy, which denies by default',
        ),
        ("db_drop", False, "/tools/db_*", "no database tools"),
        ("db_read_orders", True, "/tools/db_read_*", "reads are fine"),
        ("db_read_users", False, "/tools/db_read_users", "PII"),
        ("gh_x", True, "/tools/gh_?", "single-letter github tools"),
        (
            "gh_xz",
            False,
            "(default deny)",
            'tool "gh_xz" is not in the policy, which denies by default',
        ),
        (
            "db_read_dangerous",
            False,
            "/tools/*_dangerous",
            'tool "db_read_dangerous" is denied by /tools/*_dangerous',
        ),
        ("xy", True, "/tools/x*", "first of two equally specific"),
        (
            "unknown",
            False,
            "(default deny)",
            'tool "unknown" is not in the policy, which denies by default',
        ),
    ],
)
def test_tool_precedence(tool: str, allowed: bool, rule: str, reason: str) -> None:
    verdict = evaluate(load(POLICY), tool_call(tool), ANYONE)
    assert (verdict.allowed, verdict.rule, verdict.reason) == (allowed, rule, reason)


def test_default_allow_lets_unlisted_tools_through() -> None:
    verdict = evaluate(load({"version": "1", "default": "allow"}), tool_call("anything"), ANYONE)
    assert (verdict.allowed, verdict.rule) == (True, "(default allow)")


@pytest.mark.parametrize(
    ("method", "allowed", "rule"),
    [
        ("initialize", True, "methods.default"),
        ("tools/list", True, "methods.default"),
        ("resources/read", False, "/methods/resources~1read"),
        ("prompts/get", True, "/methods/prompts~1*"),
    ],
)
def test_methods_pass_unless_the_policy_governs_them(method: str, allowed: bool, rule: str) -> None:
    verdict = evaluate(load(POLICY), McpCall(method, 1), ANYONE)
    assert (verdict.allowed, verdict.rule) == (allowed, rule)


def test_client_responses_are_never_governed() -> None:
    assert evaluate(load({"version": "1", "default": "deny"}), McpCall(None, 4), ANYONE).allowed


def test_glob_matching_is_literal_apart_from_wildcards() -> None:
    policy = load({"version": "1", "tools": {"a.b*": {}, "[x]*": {}}})
    assert evaluate(policy, tool_call("a.bc"), ANYONE).allowed
    assert not evaluate(policy, tool_call("aXbc"), ANYONE).allowed
    assert evaluate(policy, tool_call("[x]yz"), ANYONE).allowed
    assert not evaluate(policy, tool_call("xyz"), ANYONE).allowed


SCOPED = {
    "version": "1",
    "tools": {
        "t": {
            "limits": [
                {"counter": "g", "window": 60, "max": 3, "scope": "grant"},
                {"counter": "i", "window": 60, "max": 3, "scope": "identity"},
                {"counter": "s", "window": 60, "max": 3, "scope": "session"},
                {"counter": "all", "window": 60, "max": 3, "scope": "global"},
            ]
        }
    },
}


def test_limits_are_keyed_by_their_scope() -> None:
    verdict = evaluate(load(SCOPED), tool_call("t"), ANYONE)
    keys = [h.key for h in hits(verdict.uses, Caller("agent-1", "sess-9"), "ops")]
    assert keys == [
        CounterKey("g", "grant", ("ops", "agent-1")),
        CounterKey("i", "identity", ("agent-1",)),
        CounterKey("s", "session", ("agent-1", "sess-9")),
        CounterKey("all", "global", ()),
    ]


KNOWN = {
    "version": "1",
    "default": "deny",
    "tools": {
        "pay": {"conditions": [{"path": "args.amount", "op": "lte", "value": 500}]},
        "read_*": {},
        "deploy": {},
    },
    "grants": {"ops": {"identities": ["ops-*"], "tools": {"deploy": {"action": "deny"}}}},
}


def test_a_verdict_that_reads_the_arguments_is_judged_for_every_call() -> None:
    policy = load(KNOWN)
    small, large = (
        McpCall("tools/call", 1, "pay", {"amount": 5}),
        McpCall("tools/call", 2, "pay", {"amount": 5000}),
    )
    assert evaluate(policy, small, ANYONE).allowed
    assert not evaluate(policy, large, ANYONE).allowed
    assert evaluate(policy, small, ANYONE).allowed
    assert policy.verdicts == {}


def test_a_kept_verdict_is_the_one_judged_and_is_kept_per_grant_tool_and_risk() -> None:
    policy, fresh = load(KNOWN), load(KNOWN)
    ops = Caller("ops-1")
    for caller, tool, risk in [
        (ANYONE, "read_a", "unknown"),
        (ANYONE, "read_b", "read"),
        (ANYONE, "deploy", "unknown"),
        (ops, "deploy", "unknown"),
        (ANYONE, "nothing", "unknown"),
    ]:
        first = evaluate(policy, tool_call(tool), caller, risk)
        assert evaluate(policy, tool_call(tool), caller, risk) is first  # kept
        assert first == evaluate(fresh, tool_call(tool), caller, risk)
        assert first.reason == evaluate(load(KNOWN), tool_call(tool), caller, risk).reason
    assert evaluate(policy, tool_call("deploy"), ANYONE).allowed
    assert not evaluate(policy, tool_call("deploy"), ops).allowed
    assert len(policy.verdicts) == 5


def test_kept_verdicts_are_bounded_and_belong_to_their_policy() -> None:
    policy = load(KNOWN)
    for n in range(MAX_KNOWN_VERDICTS + 10):
        evaluate(policy, tool_call(f"read_{n}"), ANYONE)
    assert len(policy.verdicts) == MAX_KNOWN_VERDICTS
    # Past the bound a call is judged all the same.
    assert evaluate(policy, tool_call(f"read_{MAX_KNOWN_VERDICTS + 99}"), ANYONE).allowed
    assert replace(policy, version="2").verdicts == {}


def test_kept_hits_are_the_ones_made_for_each_caller_grant_and_scope() -> None:
    uses = evaluate(load(SCOPED), tool_call("t"), ANYONE).uses
    callers = [Caller("agent-1", "sess-9"), Caller("agent-1", "sess-8"), Caller("agent-2")]
    for grant in ("ops", "default"):
        for caller in callers:
            first = hits(uses, caller, grant)
            again = hits(uses, caller, grant)
            assert all(a is b for a, b in zip(first, again, strict=True))  # kept
            assert [type(h.key.scope) for h in first] == [str] * 4
            assert [h.key.subject for h in first] == [
                (grant, caller.identity),
                (caller.identity,),
                (caller.identity, caller.session or ""),
                (),
            ]
    spend = {
        "version": "1",
        "tools": {
            "t": {
                "limits": [{"counter": "c", "window": 60, "max": 100, "increment_from": "args.n"}]
            }
        },
    }
    policy = load(spend)
    for n in (3, 5, 3):
        verdict = evaluate(policy, McpCall("tools/call", 1, "t", {"n": n}), ANYONE)
        assert [h.cost for h in hits(verdict.uses, ANYONE, "default")] == [n]


def test_kept_hits_are_bounded() -> None:
    uses = evaluate(load(SCOPED), tool_call("t"), ANYONE).uses
    for n in range(MAX_KNOWN_HITS // 4 + 10):
        hits(uses, Caller(f"agent-{n}"), "default")
    assert len(_KNOWN_HITS) <= MAX_KNOWN_HITS
