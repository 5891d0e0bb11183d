"""The starter policy `mcp-authz scan` writes: each format loads and decides as the seed
advises (default deny, read allowed, write 30 a minute, destructive approve-first)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from authz.policy.evaluate import Verdict, evaluate
from authz.policy.load import parse_policy
from authz.policy.model import Policy
from authz.policy.scaffold import MAX_REASON, Format, classify_tools, scaffold, summary
from authz.protocol.identity import ANONYMOUS, Caller
from authz.protocol.mcp import McpCall
from authz.protocol.tools import RiskClass, parse_tool

READ = {"readOnlyHint": True}
WRITE = {"readOnlyHint": False, "destructiveHint": False}
DESTRUCTIVE = {"destructiveHint": True}
SUFFIX = {Format.NATIVE: "policy.json", Format.YAML: "policy.yaml", Format.INTERCEPT: "p.yaml"}


def tools(*entries: tuple[str, dict[str, Any], str], trusted: bool = True) -> Any:
    defs = [parse_tool({"name": n, "description": d, "annotations": a}) for n, a, d in entries]
    return classify_tools(defs, trusted=trusted)


CATALOGUE = (
    ("get_balance", READ, "Read the balance.\nSecond line is not the summary."),
    ("create_order", WRITE, "Place an order."),
    ("delete_account", DESTRUCTIVE, "Close the account for good."),
)


def load(fmt: Format, *, trusted: bool = True) -> Policy:
    text = scaffold(tools(*CATALOGUE, trusted=trusted), fmt, source="http://x/mcp", trusted=trusted)
    return parse_policy(text.encode(), SUFFIX[fmt])


def decide(policy: Policy, tool: str) -> Verdict:
    call = McpCall(method="tools/call", id=1, target=tool, arguments={})
    return evaluate(policy, call, Caller(identity=ANONYMOUS))


@pytest.mark.parametrize("fmt", list(Format))
def test_read_tools_pass_uncounted_and_unknown_tools_are_denied(fmt: Format) -> None:
    policy = load(fmt)
    read = decide(policy, "get_balance")
    assert read.allowed
    assert read.uses == ()
    assert read.approval is None
    assert not decide(policy, "unlisted_tool").allowed


@pytest.mark.parametrize("fmt", list(Format))
def test_write_tools_are_capped_at_30_a_minute(fmt: Format) -> None:
    verdict = decide(load(fmt), "create_order")
    assert verdict.allowed
    [use] = verdict.uses
    assert (use.counting.limit.max, use.counting.limit.window) == (30, 60)


@pytest.mark.parametrize("fmt", [Format.NATIVE, Format.YAML])
def test_write_cap_is_per_grant_and_destructive_needs_approval(fmt: Format) -> None:
    policy = load(fmt)
    assert decide(policy, "create_order").uses[0].counting.limit.scope.value == "grant"
    verdict = decide(policy, "delete_account")
    assert verdict.approval is not None
    assert "Close the account for good." in verdict.reason


def test_intercept_has_no_approvals_so_destructive_tools_are_denied_saying_why() -> None:
    verdict = decide(load(Format.INTERCEPT), "delete_account")
    assert not verdict.allowed
    assert "needs approval" in verdict.reason
    assert "Close the account" in verdict.reason


def test_untrusted_hints_never_make_a_tool_read() -> None:
    policy = load(Format.NATIVE, trusted=False)
    assert decide(policy, "get_balance").uses != ()  # counted as a write tool
    [scanned] = tools(CATALOGUE[0], trusted=False)
    assert scanned.risk is RiskClass.WRITE


def test_each_rule_carries_the_first_line_of_its_description() -> None:
    doc = json.loads(scaffold(tools(*CATALOGUE), Format.NATIVE, source="s", trusted=True))
    assert doc["default"] == "deny"
    assert doc["tools"]["get_balance"]["reason"] == "read tool: Read the balance."
    assert doc["tools"]["create_order"]["limits"][0]["counter"] == "create_order_rate"


def test_a_tool_named_like_a_pattern_gets_no_rule() -> None:
    # As a key, "*" would be a glob allowing every tool the server did not list.
    text = scaffold(
        tools(("*", READ, "all"), ("ok", READ, "fine")), Format.YAML, source="s", trusted=True
    )
    assert list(yaml.safe_load(text)["tools"]) == ["ok"]
    assert not decide(parse_policy(text.encode(), "p.yaml"), "anything").allowed


def test_descriptions_are_one_bounded_line_without_control_characters() -> None:
    assert summary("\n\n  first \x1b[31mred\n second") == "first  [31mred"
    assert len(summary("x" * 5000)) == MAX_REASON
    assert summary("") == ""


def test_no_description_still_gives_a_reason() -> None:
    doc = json.loads(scaffold(tools(("t", WRITE, "")), Format.NATIVE, source="s", trusted=True))
    assert doc["tools"]["t"]["reason"] == "write tool: no description given"


def test_a_name_listed_twice_gets_its_stricter_class() -> None:
    twice = tools(("pay", DESTRUCTIVE, "first"), ("pay", READ, "second"))
    policy = parse_policy(scaffold(twice, Format.NATIVE, source="s", trusted=True).encode(), "p")
    assert decide(policy, "pay").approval is not None
