"""PolicyLayer's policy document (policylayer.com/docs/writing-policies), loaded as it is and
decided through the real decision core, with its rule ids as JSON pointers.

The fixtures in policies/policylayer/ are ours, written from the documentation's
descriptions of each field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz.policy.load import PolicyError, load_policy, parse_policy
from authz.protocol.errors import Refusal
from tests.unit.support import Gate

FIXTURES = Path(__file__).parent / "policies" / "policylayer"


def gate(name: str) -> Gate:
    return Gate(load_policy(FIXTURES / name))


@pytest.mark.parametrize(
    "name", ["full.json", "default_allow.json", "hide_all.json", "scaffold_single_tool.json"]
)
def test_every_fixture_loads(name: str) -> None:
    assert load_policy(FIXTURES / name).version.startswith("sha256:")


async def test_a_listed_empty_tool_is_allowed_under_default_deny() -> None:
    outcome = await gate("full.json")("list_customers")
    assert (outcome.allowed, outcome.rule) == (True, "/tools/list_customers")


async def test_an_unlisted_tool_is_refused_as_default_deny_with_the_policys_message() -> None:
    outcome = await gate("full.json")("send_invoice")
    assert (outcome.refusal, outcome.rule, outcome.reason) == (
        Refusal.DENIED,
        "(default deny)",
        "Blocked by the payments policy: ask finance",
    )


@pytest.mark.parametrize("tool", ["delete_account", "admin_reset", "admin_"])
async def test_hidden_names_and_globs_are_refused_as_hidden(tool: str) -> None:
    outcome = await gate("full.json")(tool)
    assert (outcome.refusal, outcome.rule) == (Refusal.DENIED, "(hidden)")


async def test_star_hides_every_tool_even_under_default_allow() -> None:
    outcome = await gate("hide_all.json")("anything")
    assert (outcome.refusal, outcome.rule) == (Refusal.DENIED, "(hidden)")


def test_hidden_is_a_pure_query_for_the_tools_list_filter() -> None:
    policy = load_policy(FIXTURES / "full.json")
    assert [policy.is_hidden(t) for t in ("admin_x", "delete_account", "list_customers")] == [
        True,
        True,
        False,
    ]


async def test_require_refuses_a_call_missing_the_argument() -> None:
    outcome = await gate("full.json")("create_refund", amount=5)
    assert (outcome.refusal, outcome.rule) == (
        Refusal.DENIED,
        "/tools/create_refund/require/args.reason-exists",
    )
    assert outcome.reason == "Blocked by the payments policy: ask finance (args.reason is missing)"
    assert (await gate("full.json")("create_refund", reason="duplicate")).allowed


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        ({"amount": 20000, "currency": "usd"}, "/tools/create_charge/deny_if/args.amount-gt"),
        # Cannot tell is a refusal: a server would coerce "20000" to 20000 past the rule.
        ({"amount": "20000", "currency": "usd"}, "/tools/create_charge/deny_if/args.amount-gt"),
        ({"currency": "usd"}, "/tools/create_charge/deny_if/args.amount-gt"),
        ({"amount": 500, "currency": "gbp"}, "/tools/create_charge/require/args.currency-in"),
    ],
)
async def test_deny_if_and_require_name_the_predicate(args: dict[str, Any], rule: str) -> None:
    outcome = await gate("full.json")("create_charge", **args)
    assert (outcome.refusal, outcome.rule) == (Refusal.DENIED, rule)
    assert outcome.reason.startswith("Charges over 100.00 need a person (")


async def test_a_charge_within_the_rules_is_allowed_and_counted() -> None:
    outcome = await gate("full.json")("create_charge", amount=10000, currency="eur")
    assert outcome.allowed
    assert {s.hit.key.counter for s in outcome.limits} == {"charges-per-hour", "calls-per-minute"}


async def test_tool_limits_are_named_by_their_pointer() -> None:
    flow = gate("full.json")
    for _ in range(3):
        assert (await flow("create_charge", amount=1, currency="usd")).allowed
    outcome = await flow("create_charge", amount=1, currency="usd")
    assert (outcome.refusal, outcome.rule) == (
        Refusal.RATE_LIMITED,
        "/tools/create_charge/limits/charges-per-hour",
    )


async def test_all_tools_limits_count_every_call_per_grant() -> None:
    flow = gate("full.json")
    for _ in range(5):
        assert (await flow("list_customers")).allowed
    outcome = await flow("create_refund", reason="r")
    assert (outcome.refusal, outcome.rule) == (
        Refusal.RATE_LIMITED,
        "/all_tools/limits/calls-per-minute",
    )
    # Another identity has its own budget, and a refused call charged nothing.
    assert (await flow("list_customers", who="other")).allowed
    flow.now += 61
    assert (await flow("list_customers")).allowed


async def test_a_hidden_or_default_denied_call_is_never_charged() -> None:
    flow = gate("full.json")
    for _ in range(10):
        await flow("delete_account")
        await flow("unlisted")
    assert (await flow("list_customers")).allowed


async def test_deny_if_regex_under_default_allow() -> None:
    flow = gate("default_allow.json")
    assert (await flow("delete_customer", customer_id="cus_test_1")).allowed
    outcome = await flow("delete_customer", customer_id="cus_live_1")
    assert outcome.rule == "/tools/delete_customer/deny_if/args.customer_id-regex"
    assert (await flow("anything_else")).rule == "(default allow)"


async def test_the_scaffold_for_a_single_tool_is_the_seed_policy() -> None:
    flow = gate("scaffold_single_tool.json")
    for _ in range(30):
        assert (await flow("binance_us_create_listen_key")).allowed
    outcome = await flow("binance_us_create_listen_key")
    assert outcome.rule == (
        "/tools/binance_us_create_listen_key/limits/binance_us_create_listen_key_rate"
    )


def test_repeated_predicates_get_unique_ids() -> None:
    doc = {
        "version": "1",
        "tools": {
            "a/b": {
                "deny_if": [
                    {"path": "args.s", "op": "regex", "value": "x"},
                    {"path": "args.s", "op": "regex", "value": "y"},
                ]
            }
        },
    }
    entry = parse_policy(json.dumps(doc).encode(), "p.json").tools.match("a/b")
    assert entry is not None
    assert [r.id for r in entry.rules] == [
        "/tools/a~1b/deny_if/args.s-regex",
        "/tools/a~1b/deny_if/args.s-regex-2",
        "/tools/a~1b",
    ]


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (
            {"all_tools": {"limit": []}},
            '$.all_tools.limit: unknown key (did you mean "limits"?) (expected one of: limits)',
        ),
        ({"all_tools": {"limits": {}}}, "$.all_tools.limits: expected a list of limits"),
        (
            {"tools": {"t": {"deny_if": [{"path": "amount", "op": "gt", "value": 1}]}}},
            '$.tools.t.deny_if[0].path: expected a path like "args.amount"',
        ),
        (
            {"tools": {"t": {"require": [{"path": "args.a", "op": "gt", "value": "1"}]}}},
            '$.tools.t.require[0].value: operator "gt" needs a number',
        ),
        (
            {"tools": {"t": {"action": "deny", "deny_if": [{"path": "args.a", "op": "exists"}]}}},
            "$.tools.t: a denied tool is never counted or checked",
        ),
        (
            {"tools": {"t": {"on_deny": "a", "reason": "b"}}},
            "$.tools.t.on_deny: give on_deny or reason, not both",
        ),
        ({"on_deny": ""}, "$.on_deny: expected a non-empty string"),
    ],
)
def test_refusals_name_the_path_and_the_fix(doc: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(json.dumps({"version": "1", **doc}).encode(), "pl.json")
    assert any(f"{p.path}: {p.message}".startswith(problem) for p in raised.value.problems), [
        f"{p.path}: {p.message}" for p in raised.value.problems
    ]
