"""Rules keyed on a tool's risk class, and the `catalogue` section, in both policy syntaxes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz.policy.evaluate import evaluate
from authz.policy.load import PolicyError, parse_policy
from authz.policy.model import Action, OnChange, Policy
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall
from authz.protocol.tools import RiskClass

NATIVE: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "tools": {"delete_all": {"action": "deny", "reason": "never"}, "refund": {}},
    "risk": {
        "read": {},
        "write": {"limits": [{"counter": "writes", "window": "minute", "max": 30}]},
        "destructive": {"action": "approve", "reason": "destructive tools need a person"},
    },
    "catalogue": {
        "on_change": "approve",
        "on_unknown": "allow",
        "upstreams": {"payments": {"trusted": True}, "crm": {"trusted": False}},
        "baseline": {"get_*": "read", "wipe_*": "destructive", "get_secret": "destructive"},
    },
    "grants": {"ops": {"identities": ["ops"], "risk": {"destructive": {"action": "deny"}}}},
}

INTERCEPT = """
version: "1"
default: deny
tools:
  refund:
    rules:
      - name: ok
        rate_limit: 5/minute
risk:
  read:
    rules:
      - name: reads
        rate_limit: 100/minute
  destructive:
    rules:
      - name: no destructive tools
        action: deny
        on_deny: "destructive tools are not for agents"
catalogue:
  on_change: log
"""

AGENT = Caller("agent")


def native(doc: dict[str, Any]) -> Policy:
    return parse_policy(json.dumps(doc).encode(), "p.json")


def call(tool: str) -> McpCall:
    return McpCall("tools/call", 1, tool)


def test_a_class_with_rules_governs_tools_the_policy_does_not_name() -> None:
    policy = native(NATIVE)
    read = evaluate(policy, call("get_balance"), AGENT, "read")
    assert read.allowed
    assert read.rule == "/risk/read"
    write = evaluate(policy, call("create_invoice"), AGENT, "write")
    assert write.allowed
    assert [u.counting.id for u in write.uses] == ["/risk/write/limits/writes"]
    destructive = evaluate(policy, call("drop_table"), AGENT, "destructive")
    assert destructive.allowed
    assert destructive.approval is not None
    assert destructive.approval.id == "/risk/destructive"
    # No rule for the class, no rule for the tool: the default refuses.
    unknown = evaluate(policy, call("drop_table"), AGENT, "unknown")
    assert not unknown.allowed
    assert unknown.rule == "(default deny)"


def test_class_rules_add_to_a_named_tools_rules_and_never_rescue_a_denied_one() -> None:
    policy = native(NATIVE)
    refund = evaluate(policy, call("refund"), AGENT, "destructive")
    assert refund.approval is not None
    assert refund.rule == "/risk/destructive"
    assert not evaluate(policy, call("delete_all"), AGENT, "read").allowed


def test_a_grant_keys_its_own_class_rules() -> None:
    verdict = evaluate(native(NATIVE), call("drop_table"), Caller("ops"), "destructive")
    assert not verdict.allowed
    assert verdict.rule == "/grants/ops/risk/destructive"


def test_the_catalogue_section() -> None:
    rules = native(NATIVE).catalogue
    assert rules.on_change is OnChange.APPROVE
    assert rules.on_unknown is Action.ALLOW
    assert rules.trusted == frozenset({"payments"})
    assert rules.baseline("get_balance") is RiskClass.READ
    assert rules.baseline("get_secret") is RiskClass.DESTRUCTIVE
    assert rules.baseline("wipe_disk") is RiskClass.DESTRUCTIVE
    assert rules.baseline("refund") is None


def test_the_defaults_do_not_guess() -> None:
    rules = native({"version": "1"}).catalogue
    assert rules.on_change is OnChange.DENY
    assert rules.on_unknown is Action.DENY
    assert rules.trusted == frozenset()


def test_intercept_files_key_rules_on_a_class_too() -> None:
    policy = parse_policy(INTERCEPT.encode(), "p.yaml")
    assert policy.catalogue.on_change is OnChange.LOG
    read = evaluate(policy, call("lookup"), AGENT, "read")
    assert read.allowed
    assert read.rule == "risk.read"
    assert [u.counting.limit.counter for u in read.uses] == ["_risk_read._rate_minute"]
    refused = evaluate(policy, call("refund"), AGENT, "destructive")
    assert not refused.allowed
    assert refused.reason == "destructive tools are not for agents"


@pytest.mark.parametrize(
    ("patch", "path", "message"),
    [
        ({"risk": {"destrutive": {}}}, "$.risk.destrutive", 'did you mean "destructive"'),
        ({"risk": {"write": {"action": "maybe"}}}, "$.risk.write.action", "expected"),
        ({"catalogue": {"on_change": "warn"}}, "$.catalogue.on_change", '"deny" or "approve"'),
        ({"catalogue": {"on_unknown": "approve"}}, "$.catalogue.on_unknown", '"allow" or "deny"'),
        (
            {"catalogue": {"upstreams": {"p": {"trusted": "yes"}}}},
            "$.catalogue.upstreams.p.trusted",
            "true or false",
        ),
        (
            {"catalogue": {"upstreams": {"p": {"trust": True}}}},
            "$.catalogue.upstreams.p.trust",
            "unknown key",
        ),
        (
            {"catalogue": {"baseline": {"get_*": "safe"}}},
            '$.catalogue.baseline["get_*"]',
            "risk class",
        ),
        ({"catalogue": {"pins": {}}}, "$.catalogue.pins", "unknown key"),
        (
            {"grants": {"g": {"identities": ["a"], "risk": {"x": {}}}}},
            "$.grants.g.risk.x",
            "unknown risk class",
        ),
    ],
)
def test_bad_risk_and_catalogue_sections_name_path_and_fix(
    patch: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(PolicyError) as e:
        native({"version": "1", **patch})
    assert any(p.path == path and message in p.message for p in e.value.problems), e.value


def test_check_explains_a_decision_for_a_class(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from authz.cli import main  # noqa: PLC0415 - the CLI, as an operator runs it

    path = tmp_path / "p.json"
    path.write_text(json.dumps(NATIVE))
    assert main(["check", str(path), "--tool", "drop_table", "--risk", "read", "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["risk"] == "read"
    assert explained["rule"] == "/risk/read"
    assert main(["check", str(path), "--tool", "drop_table"]) != 0
