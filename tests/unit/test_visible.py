"""What a caller's tools/list shows: policy.evaluate.visible, in both syntaxes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz.policy.evaluate import evaluate, visible
from authz.policy.load import PolicyError, parse_policy
from authz.policy.model import Policy
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall

SEED = Path("/work/shared/seed/policy.json")
SEED_TOOLS = [
    "binance_us_create_listen_key",
    "binance_us_new_order",
    "binance_us_account_info",
    "binance_us_cancel_order",
]


def native(doc: dict[str, Any]) -> Policy:
    return parse_policy(json.dumps({"version": "1", **doc}).encode(), "policy.json")


def intercept(text: str) -> Policy:
    return parse_policy(text.encode(), "policy.yaml")


def shown(policy: Policy, tools: list[str], grant: str = "default") -> list[str]:
    return [t for t in tools if visible(policy, grant, t)]


def test_the_seed_policy_shows_an_agent_exactly_one_tool() -> None:
    policy = parse_policy(SEED.read_bytes(), str(SEED))
    assert shown(policy, SEED_TOOLS) == ["binance_us_create_listen_key"]


def test_denied_and_hidden_tools_go_limited_conditional_and_gated_ones_stay() -> None:
    policy = native(
        {
            "default": "allow",
            "hide": ["admin_*"],
            "tools": {
                "wipe": {"action": "deny"},
                "pay": {"limits": [{"counter": "pay", "window": "minute", "max": 1}]},
                "refund": {"require": [{"path": "args.amount", "op": "lte", "value": 10}]},
                "delete": {"action": "approve"},
            },
        }
    )
    tools = ["admin_reset", "wipe", "pay", "refund", "delete", "read"]
    assert shown(policy, tools) == ["pay", "refund", "delete", "read"]


def test_what_is_shown_is_never_something_every_call_to_would_be_refused() -> None:
    """The list and the call-time decision agree: a tool left out is refused when called."""
    policy = native({"default": "deny", "hide": ["h"], "tools": {"a": {}, "d": {"action": "deny"}}})
    for tool in ["a", "d", "h", "unlisted"]:
        call = McpCall("tools/call", 1, tool)
        assert evaluate(policy, call, Caller("agent")).allowed is visible(policy, "default", tool)


def test_each_grant_sees_its_own_tools_and_a_vanished_grant_sees_none() -> None:
    policy = native(
        {
            "default": "deny",
            "tools": {"read": {}},
            "grants": {"ops": {"identities": ["ops-*"], "default": "deny", "tools": {"wipe": {}}}},
        }
    )
    assert shown(policy, ["read", "wipe"]) == ["read"]
    assert shown(policy, ["read", "wipe"], "ops") == ["wipe"]
    assert shown(policy, ["read", "wipe"], "gone") == []


def test_a_dry_run_grant_sees_every_tool_it_could_call() -> None:
    policy = native({"default": "deny", "mode": "dry_run", "hide": ["h"]})
    assert shown(policy, ["h", "x"]) == ["h", "x"]


def test_tools_list_whole_keeps_the_list_whole_in_both_syntaxes() -> None:
    assert shown(native({"default": "deny", "tools_list": "whole"}), ["a"]) == ["a"]
    doc = 'version: "1"\ndefault: deny\ntools_list: whole\ntools:\n  a:\n    rules: []\n'
    assert shown(intercept(doc), ["a", "b"]) == ["a", "b"]


def test_intercept_syntax_filters_by_default() -> None:
    doc = (
        'version: "1"\ndefault: allow\nhide: [b]\n'
        "tools:\n  c:\n    rules:\n      - name: never\n        action: deny\n"
    )
    assert shown(intercept(doc), ["a", "b", "c"]) == ["a"]


def test_a_bad_tools_list_value_names_its_path_and_the_choices() -> None:
    with pytest.raises(PolicyError, match=r'\$\.tools_list: expected "filtered" or "whole"'):
        native({"tools_list": "all"})
