"""Grants, spend budgets, dry-run and warnings: decided through the real decision core."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.policy.evaluate import evaluate
from authz.policy.load import PolicyError, load_policy, parse_policy
from authz.policy.model import Policy
from authz.protocol.errors import Refusal
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall
from tests.unit.support import Gate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
JWT = "envoy.filters.http.jwt_authn"


def policy_of(doc: dict[str, Any]) -> Policy:
    return parse_policy(yaml.safe_dump(doc).encode(), "p.yaml")


def call(tool: str, **arguments: Any) -> McpCall:
    return McpCall("tools/call", 1, tool, arguments)


GRANTED = {
    "version": "1",
    "default": "deny",
    "tools": {"read": {}, "db_*": {"action": "deny", "reason": "top-level says no"}},
    "grants": {
        "admins": {
            "identities": ["alice", "ops-*"],
            "default": "allow",
            "tools": {"db_drop": {"action": "deny"}},
        },
        "finance": {"claims": {"groups": ["finance", "treasury"]}, "tools": {"pay": {}}},
    },
}


@pytest.mark.parametrize(
    ("identity", "claims", "tool", "allowed", "rule", "grant"),
    [
        ("bob", {}, "read", True, "/tools/read", "default"),
        ("bob", {}, "db_read", False, "/tools/db_*", "default"),
        ("bob", {}, "pay", False, "(default deny)", "default"),
        ("alice", {}, "db_read", True, "(default allow)", "admins"),
        ("ops-7", {}, "anything", True, "(default allow)", "admins"),
        ("ops-7", {}, "db_drop", False, "/grants/admins/tools/db_drop", "admins"),
        (
            "carol",
            {"groups": ["eng", "finance"]},
            "pay",
            True,
            "/grants/finance/tools/pay",
            "finance",
        ),
        ("carol", {"groups": "treasury"}, "pay", True, "/grants/finance/tools/pay", "finance"),
        ("carol", {"groups": ["eng"]}, "pay", False, "(default deny)", "default"),
        # A grant replaces the top-level rules: finance members get only what finance lists.
        ("carol", {"groups": ["finance"]}, "read", False, "(default deny)", "finance"),
        # The first grant that admits a caller wins.
        ("alice", {"groups": ["finance"]}, "pay", True, "(default allow)", "admins"),
    ],
)
def test_grant_precedence(
    identity: str, claims: dict[str, Any], tool: str, allowed: bool, rule: str, grant: str
) -> None:
    verdict = evaluate(policy_of(GRANTED), call(tool), Caller(identity, claims=claims))
    assert (verdict.allowed, verdict.rule, verdict.grant) == (allowed, rule, grant)


async def test_grant_scope_counts_per_identity_within_the_grant() -> None:
    doc = {
        "version": "1",
        "tools": {"t": {"limits": [{"counter": "c", "window": 60, "max": 1, "scope": "grant"}]}},
        "grants": {
            "team": {
                "identities": ["a", "b"],
                "tools": {
                    "t": {"limits": [{"counter": "c", "window": 60, "max": 1, "scope": "grant"}]}
                },
            }
        },
    }
    gate = Gate(policy_of(doc))
    assert (await gate("t", "a")).allowed
    assert (await gate("t", "a")).refusal is Refusal.RATE_LIMITED
    assert (await gate("t", "b")).allowed
    assert (await gate("t", "outsider")).allowed


SPEND = {
    "version": "1",
    "tools": {
        "withdraw": {
            "reason": "Single withdrawals are capped at 500",
            "conditions": [{"path": "args.amount", "op": "lte", "value": 500}],
            "limits": [
                {
                    "counter": "daily",
                    "window": "day",
                    "max": 1000,
                    "scope": "identity",
                    "increment_from": "args.amount",
                }
            ],
        }
    },
}


async def test_spend_budget_admits_until_the_sum_would_pass_it() -> None:
    gate = Gate(policy_of(SPEND))
    assert (await gate("withdraw", amount=400)).allowed
    assert (await gate("withdraw", amount=500)).allowed
    refused = await gate("withdraw", amount=200)
    assert refused.refusal is Refusal.RATE_LIMITED
    assert "has 100 left and the call needs 200" in refused.reason
    assert (await gate("withdraw", amount=100)).allowed
    assert (await gate("withdraw", amount=1)).refusal is Refusal.RATE_LIMITED
    assert (await gate("withdraw", who="other", amount=500)).allowed


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"amount": 501}, "Single withdrawals are capped at 500 (args.amount fails lte 500)"),
        ({}, "Single withdrawals are capped at 500 (args.amount is missing)"),
        (
            {"amount": "400"},
            "Single withdrawals are capped at 500 (args.amount is a string, not a number)",
        ),
        ({"amount": -5}, 'args.amount must not be negative: it is what budget "daily" counts'),
        ({"amount": 2.5}, "args.amount must be a whole number (use minor units such as cents)"),
    ],
)
async def test_amounts_that_cannot_be_counted_are_refused(
    args: dict[str, Any], reason: str
) -> None:
    outcome = await Gate(policy_of(SPEND))("withdraw", **args)
    assert (outcome.refusal, outcome.reason) == (Refusal.DENIED, reason)


async def test_a_missing_amount_is_refused_not_counted_as_zero() -> None:
    doc = {
        "version": "1",
        "tools": {
            "t": {"limits": [{"counter": "c", "window": 60, "max": 9, "increment_from": "args.n"}]}
        },
    }
    outcome = await Gate(policy_of(doc))("t")
    assert outcome.refusal is Refusal.DENIED
    assert outcome.reason == 'args.n must be a number: it is what budget "c" counts'


async def test_dry_run_tool_lets_the_call_through_and_records_what_it_would_refuse() -> None:
    doc = {
        "version": "1",
        "default": "deny",
        "tools": {
            "new": {
                "mode": "dry_run",
                "conditions": [{"path": "args.x", "op": "eq", "value": 1}],
                "limits": [{"counter": "c", "window": 60, "max": 1}],
            },
            "old": {"conditions": [{"path": "args.x", "op": "eq", "value": 1}]},
        },
    }
    gate = Gate(policy_of(doc))
    trial = await gate("new", x=2)
    assert trial.allowed
    assert trial.would_deny == "/tools/new: args.x fails eq 1"
    assert trial.reason == "would deny: /tools/new: args.x fails eq 1"
    assert (await gate("old", x=2)).refusal is Refusal.DENIED
    # A dry-run limit is counted apart and only reported.
    assert (await gate("new", x=1)).would_deny is None
    second = await gate("new", x=1)
    assert (second.allowed, second.would_deny) == (True, 'budget "c" is spent')


async def test_whole_policy_dry_run_reports_default_denials() -> None:
    gate = Gate(
        policy_of(
            {
                "version": "1",
                "mode": "dry_run",
                "default": "deny",
                "tools": {"x": {"mode": "enforce", "action": "deny"}},
            }
        )
    )
    trial = await gate("unlisted")
    assert trial.allowed
    assert trial.would_deny == 'tool "unlisted" is not in the policy, which denies by default'
    # A tool may opt back into enforcement.
    assert (await gate("x")).refusal is Refusal.DENIED


@pytest.mark.parametrize(
    ("doc", "warning"),
    [
        (
            {"version": "1", "tools": {"a*": {}, "a**": {"action": "deny"}}},
            "/tools/a**: never matches",
        ),
        (
            {
                "version": "1",
                "grants": {"all": {"identities": ["*"]}, "late": {"identities": ["bob"]}},
            },
            "grants.late: never reached, grants.all admits every identity first",
        ),
        (
            {"version": "1", "grants": {"a": {"claims": {"g": "x"}}, "b": {"claims": {"g": "x"}}}},
            "grants.b: never reached, grants.a admits the same callers first",
        ),
        (
            {"version": "1", "hide": ["t"], "tools": {"t": {}}},
            "t: never applies, the tool is hidden",
        ),
    ],
)
def test_validate_warns_about_rules_that_never_apply(doc: dict[str, Any], warning: str) -> None:
    assert any(w.startswith(warning) for w in policy_of(doc).warnings), policy_of(doc).warnings


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (
            {"version": "1", "grants": {"g": {"tools": {}}}},
            "$.grants.g: a grant needs identities or claims",
        ),
        (
            {"version": "1", "grants": {"g": {"claims": {"groups": {"a": 1}}}}},
            "$.grants.g.claims.groups: expected a string",
        ),
        ({"version": "1", "mode": "shadow"}, '$.mode: expected "enforce" or "dry_run"'),
        (
            {
                "version": "1",
                "tools": {"t": {"conditions": [{"path": "amount", "op": "eq", "value": 1}]}},
            },
            '$.tools.t.conditions[0].path: expected a path like "args.amount"',
        ),
        (
            {
                "version": "1",
                "tools": {"t": {"conditions": [{"path": "args.a", "op": "like", "value": 1}]}},
            },
            "$.tools.t.conditions[0].op: expected",
        ),
        (
            {
                "version": "1",
                "tools": {"t": {"conditions": [{"path": "args.a", "op": "regex", "value": "("}]}},
            },
            "$.tools.t.conditions[0].value: invalid regex",
        ),
        (
            {
                "version": "1",
                "tools": {"t": {"conditions": [{"path": "args.a", "op": "in", "value": "x"}]}},
            },
            '$.tools.t.conditions[0].value: operator "in" needs a list',
        ),
        (
            {
                "version": "1",
                "tools": {
                    "t": {
                        "limits": [
                            {
                                "counter": "c",
                                "window": 60,
                                "max": 1,
                                "increment": 2,
                                "increment_from": "args.a",
                            }
                        ]
                    }
                },
            },
            "$.tools.t.limits[0]: give increment or increment_from",
        ),
        (
            {
                "version": "1",
                "tools": {
                    "t": {
                        "limits": [
                            {"counter": "c", "window": 60, "max": 1, "increment_from": "amount"}
                        ]
                    }
                },
            },
            "$.tools.t.limits[0].increment_from: expected a path",
        ),
    ],
)
def test_policy_language_errors(doc: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy_of(doc)
    assert any(f"{p.path}: {p.message}".startswith(problem) for p in info.value.problems), (
        info.value
    )


async def test_the_payments_example() -> None:
    gate = Gate(load_policy(EXAMPLES / "payments.yaml"))
    assert (await gate("create_charge", amount=40000, currency="usd")).allowed
    assert (await gate("create_charge", amount=60000, currency="usd")).refusal is Refusal.DENIED
    assert (await gate("create_charge", amount=100, currency="jpy")).refusal is Refusal.DENIED
    assert (await gate("delete_customer", id="cus_1")).refusal is Refusal.DENIED
    assert (await gate("list_charges")).allowed
    assert (await gate("update_customer")).refusal is Refusal.DENIED
    for _ in range(24):
        gate.now += 10  # under the 20-a-minute cap, so only the daily spend can bite
        assert (await gate("create_charge", amount=40000, currency="eur")).allowed
    spent = await gate("create_charge", amount=40000, currency="eur")
    assert spent.refusal is Refusal.RATE_LIMITED
    assert 'limit "daily_spend"' in spent.reason
    assert "has 0 left" in spent.reason
    finance = await gate(
        "create_charge", "fin-bot", {"groups": ["finance"]}, amount=400000, currency="gbp"
    )
    assert (finance.allowed, finance.grant) == (True, "finance-bots")


async def test_the_github_example() -> None:
    gate = Gate(load_policy(EXAMPLES / "github.json"))
    for _ in range(5):
        assert (await gate("create_issue", title="x")).allowed
    assert (await gate("create_issue", title="x")).refusal is Refusal.RATE_LIMITED
    for _ in range(3):
        assert (await gate("create_pull_request")).allowed
    assert (await gate("create_pull_request")).refusal is Refusal.RATE_LIMITED
    assert (await gate("delete_repository", repo="r")).refusal is Refusal.DENIED
    assert (await gate("push_files", branch="feat/x")).allowed
    assert (await gate("push_files", branch="main")).refusal is Refusal.DENIED
    assert (await gate("get_issue")).allowed


SCOPED = {
    "version": "1",
    "grants": {
        "writers": {"claims": {"scope": "tools:write"}, "default": "allow"},
        "azure": {"claims": {"scp": ["Tools.Write"]}, "default": "allow"},
    },
}


@pytest.mark.parametrize(
    ("claims", "grant"),
    [
        # OAuth's form: one string of space-separated scopes, each matched on its own.
        ({"scope": "tools:read tools:write"}, "writers"),
        ({"scope": "tools:write"}, "writers"),
        ({"scope": "  tools:write  openid"}, "writers"),
        ({"scope": ["tools:read", "tools:write"]}, "writers"),
        ({"scp": "openid Tools.Write"}, "azure"),
        ({"scp": ["openid", "Tools.Write"]}, "azure"),
        # Prefixes, other separators and case are not the same scope.
        ({"scope": "tools:writer"}, "default"),
        ({"scope": "tools:read,tools:write"}, "default"),
        ({"scope": "tools:read\ttools:write"}, "default"),
        ({"scope": "TOOLS:WRITE"}, "default"),
        # Only scope claims are split: any other claim is compared whole.
        ({"groups": "tools:read tools:write"}, "default"),
    ],
)
def test_scope_claims_match_per_scope(claims: dict[str, Any], grant: str) -> None:
    """Fails before the fix: a space-separated `scope` never matched one of its scopes."""
    verdict = evaluate(policy_of(SCOPED), call("t"), Caller("bot", claims=claims))
    assert verdict.grant == grant


def test_a_scope_value_with_a_space_is_refused_at_load() -> None:
    doc = {"version": "1", "grants": {"g": {"claims": {"scope": "tools:read tools:write"}}}}
    with pytest.raises(PolicyError, match=r"grants\.g\.claims\.scope: a scope claim is matched"):
        policy_of(doc)
