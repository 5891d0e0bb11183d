"""Judge one MCP call against the policy. Pure: no I/O, no clock, no counters.

The verdict says whether the policy allows the call and which budgets it must then draw on
(and how much); counting them is the limits store's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz.limits.base import CounterKey, Hit
from authz.policy.conditions import fires, is_number, resolve
from authz.policy.model import (
    UNKNOWN_RISK,
    Action,
    Counting,
    Entry,
    Grant,
    ListView,
    Mode,
    Policy,
    Rule,
    Scope,
)
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall

UNLISTED_METHOD_RULE = "methods.default"
# The rule ids PolicyLayer gives refusals that no rule of the document makes.
HIDDEN_RULE = "(hidden)"
DEFAULT_DENY_RULE = "(default deny)"
DEFAULT_ALLOW_RULE = "(default allow)"
NO_POLICY_RULE = "(no policy)"
# Verdicts kept per policy for calls whose rules never read the arguments.
MAX_KNOWN_VERDICTS = 4096
# Hits kept by what they hold (a pure function of it, so shared by every policy), at most.
MAX_KNOWN_HITS = 8192
_KNOWN_HITS: dict[tuple[str, str, tuple[str, ...], int, int, int], Hit] = {}
# The scopes' names as plain strings, as CounterKey holds them (`.value` is a property).
_GRANT, _IDENTITY, _SESSION, _GLOBAL = (s.value for s in Scope)


@dataclass(frozen=True, slots=True)
class Use:
    """One budget a call draws on, and how many units."""

    counting: Counting
    cost: int
    rule: Rule


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str
    reason: str
    grant: str = "default"
    uses: tuple[Use, ...] = ()
    # Budgets of dry-run rules: counted separately, and only ever reported.
    dry_uses: tuple[Use, ...] = ()
    # What a dry-run rule would have refused, when one would have.
    would_deny: str | None = None
    # The rule that makes this call wait for a person's approval, if one does.
    approval: Rule | None = None


def evaluate(policy: Policy, call: McpCall, caller: Caller, risk: str = UNKNOWN_RISK) -> Verdict:
    """The verdict on one call; `risk` is the called tool's class (a label of RISK_LABELS),
    which the decision core gets from the catalogue."""
    if call.method is None:
        # A client's answer to a server request (sampling, elicitation): it invokes nothing.
        return Verdict(True, UNLISTED_METHOD_RULE, "responses are not governed")
    if call.method == "tools/call" and call.target is not None:
        grant = policy.grant_of(caller)
        if grant is None:
            reason = f'the grant token names policy grant "{caller.policy_grant}", which is gone'
            return Verdict(False, NO_POLICY_RULE, reason)
        return _tool(policy, grant, call, call.target, risk)
    entry = policy.methods.match(call.method)
    if entry is None:
        return Verdict(True, UNLISTED_METHOD_RULE, f"method {call.method} is not governed")
    what = f"method {call.method}"
    return _rules(entry.rules, entry, policy.everyone, call, what, on_deny=policy.on_deny)


def _tool(policy: Policy, grant: Grant, call: McpCall, tool: str, risk: str) -> Verdict:
    key = (id(grant), tool, risk)  # the policy holds its grants: their ids stay theirs
    known: Verdict | None = policy.verdicts.get(key)
    if known is not None:
        return known
    verdict, reads_arguments = _judge_tool(policy, grant, call, tool, risk)
    # Tool names are the client's: the cache is bounded, and past its bound only slower.
    if not reads_arguments and len(policy.verdicts) < MAX_KNOWN_VERDICTS:
        policy.verdicts[key] = verdict
    return verdict


def _judge_tool(
    policy: Policy, grant: Grant, call: McpCall, tool: str, risk: str
) -> tuple[Verdict, bool]:
    """The verdict, and whether a call with other arguments could have another."""
    what = f'tool "{tool}"'
    if policy.is_hidden(tool):
        reason = policy.on_deny or f'Tool "{tool}" is hidden by policy'
        return _refused(grant.mode, HIDDEN_RULE, reason, grant), False
    entry, rules = governing(grant, tool, risk)
    if entry is None and grant.default is Action.DENY:
        reason = policy.on_deny or f"{what} is not in the policy, which denies by default"
        return _refused(grant.mode, DEFAULT_DENY_RULE, reason, grant), False
    verdict = _rules(rules, entry, grant, call, what, on_deny=policy.on_deny)
    return verdict, any(_reads_arguments(r) for r in rules)


def _reads_arguments(rule: Rule) -> bool:
    return bool(
        rule.conditions
        or rule.denies
        or rule.approval is not None
        or any(c.increment_from is not None for c in rule.counts)
    )


def governing(grant: Grant, tool: str, risk: str) -> tuple[Entry | None, tuple[Rule, ...]]:
    """The entry that governs `tool` in `grant` (its own, else its class's; None leaves it to
    the default) and every rule a call of it must pass: its own, its class's, then the
    grant's rules for every tool."""
    entry = grant.tools.match(tool)
    # A class with rules governs the tools the grant does not name, as their entry would.
    classed = grant.risk.get(risk)
    rules = (entry.rules if entry else ()) + (classed.rules if classed else ()) + grant.every_tool
    return entry or classed, rules


def visible(policy: Policy, grant: str, tool: str, risk: str = UNKNOWN_RISK) -> bool:
    """Whether a `tools/list` answer shows `tool` to a caller of grant `grant`.

    A tool is left out when no call to it could pass for this caller, whatever its arguments:
    `hide` names it, the grant denies it by default, or one of its enforced rules is a plain
    deny. Every other tool is shown: allowed, limited, conditional and approval-gated ones,
    since some call to them may pass, and every tool of a dry-run grant, whose calls pass.
    A grant the policy no longer has (a reload between the request and its answer) shows
    nothing, as its calls would be refused. `tools_list: whole` shows every tool. `risk` is
    the tool's class, as for `evaluate`.
    """
    if policy.list_view is ListView.WHOLE:
        return True
    found = policy.grant_named(grant)
    if found is None:
        return False
    if found.mode is Mode.DRY_RUN:
        return True
    if policy.is_hidden(tool):
        return False
    entry, rules = governing(found, tool, risk)
    if entry is None and found.default is Action.DENY:
        return False
    return not any(r.action is Action.DENY and r.mode is Mode.ENFORCE for r in rules)


def _refused(mode: Mode, rule: str, reason: str, grant: Grant) -> Verdict:
    if mode is Mode.DRY_RUN:
        return Verdict(True, rule, f"would deny: {reason}", grant.name, would_deny=reason)
    return Verdict(False, rule, reason, grant.name)


def _rules(
    rules: tuple[Rule, ...],
    entry: Entry | None,
    grant: Grant,
    call: McpCall,
    what: str,
    *,
    on_deny: str | None,
) -> Verdict:
    uses: list[Use] = []
    dry_uses: list[Use] = []
    would_deny = None
    approval = None
    for rule in rules:
        failure, costs = _judge(rule, call, what, rule.reason or on_deny)
        if failure is None and _needs_approval(rule, call):
            if rule.mode is Mode.ENFORCE:
                approval = approval or rule
            else:
                failure = "needs a person's approval"
        if failure is not None and rule.mode is Mode.ENFORCE:
            return Verdict(False, rule.id, failure, grant.name)
        if failure is not None:
            would_deny = would_deny or f"{rule.id}: {failure}"
            continue
        target = uses if rule.mode is Mode.ENFORCE else dry_uses
        target += [Use(c, cost, rule) for c, cost in zip(rule.counts, costs, strict=True) if cost]
    rule_id = entry.id if entry else DEFAULT_ALLOW_RULE
    reason = next((r.reason for r in rules if r.reason), None) or f"{what} is allowed by {rule_id}"
    if would_deny:
        reason = f"would deny: {would_deny}"
    if approval is not None:
        rule_id = approval.id
    return Verdict(
        True, rule_id, reason, grant.name, tuple(uses), tuple(dry_uses), would_deny, approval
    )


def _needs_approval(rule: Rule, call: McpCall) -> bool:
    if rule.approval is None:
        return False
    return all(c.judge(call.arguments)[0] for c in rule.approval.when)


def _judge(
    rule: Rule, call: McpCall, what: str, message: str | None
) -> tuple[str | None, list[int]]:
    """(why the rule refuses the call or None, the units each of its counters would take);
    `message` is the policy's own sentence for a refusal (`reason`, `on_deny`)."""
    if rule.action is Action.DENY:
        return message or f"{what} is denied by {rule.id}", []
    for condition in rule.conditions:
        holds, why = condition.judge(call.arguments)
        if not holds:
            return f"{message} ({why})" if message else why, []
    for condition in rule.denies:
        fired, why = fires(condition, call.arguments)
        if fired:
            return f"{message} ({why})" if message else f"{what}: {why}", []
    costs = []
    for counting in rule.counts:
        cost, problem = _cost(counting, call)
        if problem:
            return problem, []
        costs.append(cost)
    return None, costs


def _cost(counting: Counting, call: McpCall) -> tuple[int, str | None]:
    if counting.increment_from is None:
        return counting.increment, None
    where = "args." + ".".join(counting.increment_from)
    value = resolve(call.arguments, counting.increment_from)
    counter = counting.limit.counter
    # An amount that cannot be counted is refused, never counted as zero: "spend" that
    # escapes its budget is exactly what a budget exists to stop.
    if not is_number(value):
        return 0, f'{where} must be a number: it is what budget "{counter}" counts'
    if value < 0:
        return 0, f'{where} must not be negative: it is what budget "{counter}" counts'
    if value != int(value):
        return 0, f"{where} must be a whole number (use minor units such as cents)"
    return int(value), None


def hits(uses: tuple[Use, ...], caller: Caller, grant: str) -> tuple[Hit, ...]:
    made = []
    for use in uses:
        limit = use.counting.limit
        scope, subject = _subject(limit.scope, caller, grant)
        # Everything a Hit holds, as plain values: a frozen Hit and its CounterKey cost far
        # more to build than to find again.
        key = (limit.counter, scope, subject, limit.max, limit.window, use.cost)
        hit = _KNOWN_HITS.get(key)
        if hit is None:
            hit = Hit(CounterKey(limit.counter, scope, subject), limit.max, limit.window, use.cost)
            if len(_KNOWN_HITS) >= MAX_KNOWN_HITS:
                _KNOWN_HITS.clear()  # identities and sessions are many: keep the recent ones
            _KNOWN_HITS[key] = hit
        made.append(hit)
    return tuple(made)


def _subject(scope: Scope, caller: Caller, grant: str) -> tuple[str, tuple[str, ...]]:
    """The scope's name and whom the budget is kept for."""
    if scope is Scope.GRANT:
        return _GRANT, (grant, caller.identity)
    if scope is Scope.IDENTITY:
        return _IDENTITY, (caller.identity,)
    if scope is Scope.SESSION:
        # Tied to the identity too: a session id is client-chosen and must not let one agent
        # spend (or guess its way into) another agent's session budget.
        return _SESSION, (caller.identity, caller.session or "")
    return _GLOBAL, ()
