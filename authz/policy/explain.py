"""Why a call is decided as it is: the offline explanation `mcp-authz check` prints."""

from __future__ import annotations

from typing import Any

from authz.policy.conditions import resolve
from authz.policy.evaluate import evaluate, governing, hits
from authz.policy.model import UNKNOWN_RISK, Policy, Rule
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall


def explain(
    policy: Policy, call: McpCall, caller: Caller, risk: str = UNKNOWN_RISK
) -> dict[str, Any]:
    """The verdict on `call` and every rule behind it; `risk` is the tool's class as the
    catalogue would give it."""
    verdict = evaluate(policy, call, caller, risk)
    grant = policy.grant_for(caller.identity, caller.claims)
    rules = governing(grant, call.tool, risk)[1] if call.tool is not None else ()
    return {
        "policy": policy.source,
        "policy_version": policy.version,
        "method": call.method,
        "tool": call.tool,
        "risk": risk,
        "identity": caller.identity,
        "grant": verdict.grant,
        "decision": "allow" if verdict.allowed else "deny",
        "dry_run_would_deny": verdict.would_deny,
        "rule": verdict.rule,
        "reason": verdict.reason,
        "rules": [_rule(rule, call) for rule in rules],
        "counters": [_counter(h) for h in hits(verdict.uses, caller, verdict.grant)],
        "dry_run_counters": [_counter(h) for h in hits(verdict.dry_uses, caller, verdict.grant)],
    }


def _rule(rule: Rule, call: McpCall) -> dict[str, Any]:
    return {
        "rule": rule.id,
        "action": rule.action.value,
        "mode": rule.mode.value,
        "conditions": [
            {
                "condition": c.text,
                "value": _value(resolve(call.arguments, c.path)),
                "holds": c.judge(call.arguments)[0],
            }
            for c in rule.conditions
        ],
    }


def _value(value: Any) -> Any:
    return (
        value
        if isinstance(value, str | int | float | bool | list | dict) or value is None
        else "(missing)"
    )


def _counter(hit: Any) -> dict[str, Any]:
    return {
        "counter": hit.key.counter,
        "scope": hit.key.scope,
        "subject": list(hit.key.subject),
        "max": hit.limit,
        "window_seconds": hit.window,
        "cost": hit.cost,
    }
