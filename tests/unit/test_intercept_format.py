"""PolicyLayer Intercept's YAML format, loaded as it is and decided as its POLICY.md says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.policy.load import PolicyError, load_policy, parse_policy
from authz.policy.model import Policy
from authz.protocol.errors import Refusal
from tests.unit.support import Gate

FULL = Path(__file__).parent / "policies" / "intercept_full.yaml"


def intercept(doc: dict[str, Any]) -> Policy:
    return parse_policy(yaml.safe_dump(doc).encode(), "intercept.yaml")


@pytest.fixture
def gate() -> Gate:
    return Gate(load_policy(FULL))


async def test_default_deny_refuses_unlisted_tools_and_wildcards_do_not_rescue(gate: Gate) -> None:
    outcome = await gate("unlisted_tool")
    assert (outcome.refusal, outcome.rule) == (Refusal.DENIED, "(default deny)")


async def test_empty_rules_allow_unconditionally(gate: Gate) -> None:
    assert (await gate("read_file", path="/etc/hosts")).allowed


async def test_hidden_tools_are_refused_with_interceptss_message(gate: Gate) -> None:
    outcome = await gate("transfer_repository")
    assert (outcome.refusal, outcome.reason) == (
        Refusal.DENIED,
        'Tool "transfer_repository" is hidden by policy',
    )


async def test_deny_rule_returns_on_deny(gate: Gate) -> None:
    outcome = await gate("delete_repository")
    assert outcome.reason == "Repository deletion is not permitted via AI agents"
    assert outcome.rule == "tools.delete_repository.rules[0] (block repo deletion)"


async def test_rate_limit_shorthand_with_and_without_on_deny(gate: Gate) -> None:
    for _ in range(5):
        assert (await gate("create_issue")).allowed
    limited = await gate("create_issue")
    assert limited.refusal is Refusal.RATE_LIMITED
    assert limited.reason.startswith("Hourly limit of 5 new issues reached (")
    for _ in range(3):
        assert (await gate("create_pull_request")).allowed
    assert (await gate("create_pull_request")).reason.startswith(
        "Rate limit of 3 per day reached. Try again later."
    )


async def test_conditions_are_anded(gate: Gate) -> None:
    assert (await gate("push_files", branch="feat/x")).allowed
    assert (await gate("push_files", branch="main")).refusal is Refusal.DENIED
    assert (await gate("push_files", branch="feat/x", force=True)).refusal is Refusal.DENIED


async def test_stripe_rules_each_deny_with_their_message(gate: Gate) -> None:
    ok = {"currency": "usd", "metadata": {"source": "agent"}}
    assert (await gate("create_charge", amount=50000, **ok)).allowed
    too_big = await gate("create_charge", amount=50001, **ok)
    assert too_big.reason.startswith("Single charge cannot exceed $500.00")
    currency = await gate("create_charge", amount=10, currency="jpy", metadata={"source": "agent"})
    assert currency.reason.startswith("Only USD and EUR charges are permitted")
    untrusted = await gate(
        "create_charge", amount=10, currency="usd", metadata={"source": "untrusted"}
    )
    assert untrusted.refusal is Refusal.DENIED


async def test_state_lt_caps_the_post_increment_total(gate: Gate) -> None:
    ok = {"currency": "eur", "metadata": {"source": "agent"}}
    # lt 100001 means the running total after the call stays at most 100000.
    assert (await gate("create_charge", amount=50000, **ok)).allowed
    assert (await gate("create_charge", amount=50000, **ok)).allowed
    capped = await gate("create_charge", amount=1, **ok)
    assert capped.refusal is Refusal.RATE_LIMITED
    assert capped.reason.startswith("Daily spending cap of $1,000.00 reached")


async def test_state_lte_counts_calls(gate: Gate) -> None:
    refund = {"amount": 100, "reason": "duplicate", "tags": ["approved"]}
    assert (await gate("create_refund", **refund)).allowed
    assert (await gate("create_refund", **refund)).allowed
    assert (await gate("create_refund", **refund)).refusal is Refusal.RATE_LIMITED
    assert (await gate("create_refund", **refund | {"reason": "fraud"})).refusal is Refusal.DENIED
    assert (await gate("create_refund", **refund | {"tags": []})).refusal is Refusal.DENIED


async def test_wildcard_rules_apply_to_every_listed_tool_with_global_counters(gate: Gate) -> None:
    for i in range(60):
        assert (await gate("read_file")).allowed, i
    refused = await gate("push_files", branch="feat/y")
    assert refused.refusal is Refusal.RATE_LIMITED
    assert refused.reason.startswith("Rate limit: maximum 60 tool calls per minute")
    gate.now += 60  # rolling window: the first calls age out after exactly a minute
    assert (await gate("read_file")).allowed


async def test_default_allow_lets_unlisted_tools_through_the_wildcard_rules() -> None:
    gate = Gate(
        intercept(
            {"version": "1", "tools": {"*": {"rules": [{"name": "g", "rate_limit": "2/minute"}]}}}
        )
    )
    assert (await gate("a")).allowed
    assert (await gate("b")).allowed
    assert (await gate("c")).refusal is Refusal.RATE_LIMITED


async def test_hide_star_hides_everything() -> None:
    gate = Gate(intercept({"version": "1", "hide": ["*"], "tools": {"a": {"rules": []}}}))
    assert (await gate("a")).reason == 'Tool "a" is hidden by policy'


def test_the_full_file_loads_and_its_hide_earns_no_warning() -> None:
    warnings = load_policy(FULL).warnings
    # `hide` filters tools/list (ext_proc), so it no longer earns a warning.
    assert load_policy(FULL).hidden
    assert not any(w.startswith("$.hide") for w in warnings)


def rule(**fields: Any) -> dict[str, Any]:
    return {"version": "1", "tools": {"t": {"rules": [{"name": "r", **fields}]}}}


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (
            rule(
                conditions=[{"path": "state.t.c", "op": "gte", "value": 5}],
                state={"counter": "c", "window": "day"},
            ),
            "$.tools.t.rules[0].conditions[0].op: state conditions can only cap a counter",
        ),
        (
            rule(
                conditions=[{"path": "state.t.c", "op": "eq", "value": 5}],
                state={"counter": "c", "window": "day"},
            ),
            "$.tools.t.rules[0].conditions[0].op: state conditions can only cap a counter",
        ),
        (
            rule(conditions=[{"path": "state.t.nope", "op": "lte", "value": 5}]),
            "$.tools.t.rules[0].conditions[0].path: condition references state.t.nope but "
            "no matching state block",
        ),
        (
            rule(
                conditions=[{"path": "state.other.c", "op": "lte", "value": 5}],
                state={"counter": "c", "window": "day"},
            ),
            "$.tools.t.rules[0].conditions[0].path: condition references state.other.c",
        ),
        (
            rule(rate_limit="5/hour", conditions=[{"path": "args.a", "op": "eq", "value": 1}]),
            "$.tools.t.rules[0]: rate_limit cannot be combined with conditions or state",
        ),
        (rule(rate_limit="5/week"), "$.tools.t.rules[0].rate_limit: rate_limit window must be"),
        (rule(rate_limit="0/hour"), "$.tools.t.rules[0].rate_limit: expected a whole number"),
        (
            rule(action="deny", conditions=[{"path": "args.a", "op": "eq", "value": 1}]),
            "$.tools.t.rules[0]: deny rules must not have conditions",
        ),
        (
            rule(action="deny", rate_limit="5/hour"),
            "$.tools.t.rules[0]: deny rules must not have conditions, rate_limit",
        ),
        (rule(action="allow"), '$.tools.t.rules[0].action: expected "evaluate" or "deny"'),
        (rule(), "$.tools.t.rules[0]: evaluate rules must have at least one condition"),
        (
            {"version": "1", "tools": {"t": {"rules": [{"rate_limit": "5/hour"}]}}},
            "$.tools.t.rules[0].name: expected a non-empty string",
        ),
        (
            rule(conditions=[{"path": "amount", "op": "eq", "value": 1}]),
            '$.tools.t.rules[0].conditions[0].path: expected a path like "args.amount"',
        ),
        (
            rule(conditions=[{"path": "args.a", "op": "lt", "value": "x"}]),
            '$.tools.t.rules[0].conditions[0].value: operator "lt" needs a number',
        ),
        (
            rule(conditions=[{"path": "args.a", "op": "regex", "value": "(?<=x)"}]),
            "$.tools.t.rules[0].conditions[0].value: invalid regex",
        ),
        (rule(rate_limit="5/hour", limits=[]), "$.tools.t.rules[0].limits: unknown key"),
        (
            rule(
                conditions=[{"path": "state.t.c", "op": "lte", "value": 5}],
                state={"counter": "c", "window": "week"},
            ),
            '$.tools.t.rules[0].state.window: expected "second", "minute", "hour", "day"',
        ),
        (
            rule(
                conditions=[{"path": "state.t.c", "op": "lte", "value": 5}],
                state={"counter": "c", "window": "day", "increment_from": "amount"},
            ),
            '$.tools.t.rules[0].state.increment_from: expected a path like "args.amount"',
        ),
        (
            {"version": "1", "hide": ["a", "a"], "tools": {"a": {"rules": []}}},
            '$.hide[1]: duplicate entry "a"',
        ),
        (
            {"version": "1", "hide": [""], "tools": {"a": {"rules": []}}},
            "$.hide[0]: expected a non-empty string",
        ),
        ({"version": "2", "tools": {"a": {"rules": []}}}, "$.version: unsupported version"),
        (
            {"version": "1", "default": "block", "tools": {"a": {"rules": []}}},
            '$.default: expected "allow" or "deny"',
        ),
        (
            {
                "version": "1",
                "tools": {
                    "a": {
                        "rules": [
                            {"name": "x", "rate_limit": "1/hour"},
                            {"name": "y", "rate_limit": "2/hour"},
                        ]
                    }
                },
            },
            '$.tools.a.rules[1].rate_limit: duplicate counter "_rate_hour"',
        ),
    ],
)
def test_features_we_cannot_honour_or_mistakes_are_refused(
    doc: dict[str, Any], problem: str
) -> None:
    with pytest.raises(PolicyError) as info:
        intercept(doc)
    assert any(f"{p.path}: {p.message}".startswith(problem) for p in info.value.problems), (
        info.value
    )


def test_the_intercept_syntax_gets_the_did_you_mean_too() -> None:
    with pytest.raises(PolicyError) as info:
        intercept({"version": "1", "defualt": "deny"})
    assert any('did you mean "default"' in p.message for p in info.value.problems), info.value
