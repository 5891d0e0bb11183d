"""Judge one MCP call against the policy. Pure: no I/O, no clock, no counters.

The result says whether the policy allows the call and which limits must then be counted;
counting them is the limits store's job, so this module stays trivially testable.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz.identity import Caller
from authz.limits.base import CounterKey, Hit
from authz.mcp import McpCall
from authz.policy.model import Action, Limit, Policy, Rule, Scope

DEFAULT_RULE = "default"
UNLISTED_METHOD_RULE = "methods.default"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str
    reason: str
    limits: tuple[Limit, ...] = ()


def evaluate(policy: Policy, call: McpCall) -> Verdict:
    if call.method is None:
        # A client's answer to a server request (sampling, elicitation): it invokes nothing.
        return Verdict(True, UNLISTED_METHOD_RULE, "responses are not governed")
    if call.method == "tools/call" and call.target is not None:
        return _tool(policy, call.target)
    rule = policy.methods.match(call.method)
    if rule is None:
        return Verdict(True, UNLISTED_METHOD_RULE, f"method {call.method} is not governed")
    return _apply(rule, f"method {call.method}")


def _tool(policy: Policy, tool: str) -> Verdict:
    rule = policy.tools.match(tool)
    if rule is not None:
        return _apply(rule, f'tool "{tool}"')
    if policy.default is Action.ALLOW:
        return Verdict(True, DEFAULT_RULE, "allowed by the policy default")
    return Verdict(
        False, DEFAULT_RULE, f'tool "{tool}" is not in the policy, which denies by default'
    )


def _apply(rule: Rule, what: str) -> Verdict:
    if rule.action is Action.DENY:
        return Verdict(False, rule.id, rule.reason or f"{what} is denied by {rule.id}")
    return Verdict(True, rule.id, rule.reason or f"{what} is allowed by {rule.id}", rule.limits)


def hits(limits: tuple[Limit, ...], caller: Caller) -> tuple[Hit, ...]:
    return tuple(Hit(_key(limit, caller), limit.max, limit.window) for limit in limits)


def _key(limit: Limit, caller: Caller) -> CounterKey:
    subject: tuple[str, ...]
    if limit.scope is Scope.GRANT:
        subject = (caller.grant, caller.identity)
    elif limit.scope is Scope.IDENTITY:
        subject = (caller.identity,)
    elif limit.scope is Scope.SESSION:
        # Tied to the identity too: a session id is client-chosen and must not let one agent
        # spend (or guess its way into) another agent's session budget.
        subject = (caller.identity, caller.session or "")
    else:
        subject = ()
    return CounterKey(limit.counter, limit.scope.value, subject)
