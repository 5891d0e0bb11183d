"""One request, one decision: parse, identify, evaluate, count.

This is the single decision core every transport calls. It does no I/O of its own but the
counter store's one atomic operation, and it never raises for anything a client sends.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from typing import cast

from authz.approvals.base import Approval, ApprovalStore
from authz.approvals.memory import MemoryApprovals
from authz.core.approval_gate import ApprovalGate
from authz.core.grant_identity import GrantIdentity, Identified
from authz.core.outcome import Outcome, whole_seconds
from authz.core.tool_check import Looked, ToolCheck
from authz.limits.base import (
    CounterStore,
    Crowded,
    HitResult,
    LimitState,
    StoreUnavailable,
    combine,
)
from authz.policy.evaluate import Verdict, evaluate, hits
from authz.policy.model import UNKNOWN_RISK, Policy
from authz.protocol.echo import echo
from authz.protocol.errors import Refusal, RequestRefused
from authz.protocol.identity import Caller, IdentitySource, caller_of
from authz.protocol.mcp import McpCall, RequestId, parse_request
from authz.protocol.request import HttpRequest

# Why a budget with room was refused: a new key would be one too many (docs/limits.md).
_CROWDED = {
    Crowded.SESSIONS: "this identity already has as many sessions with live session budgets "
    "as the gateway keeps; reuse a session, or wait for one to go idle",
    Crowded.KEYS: "the in-process counter store holds as many live budgets as it keeps; "
    "a new one opens when one goes idle",
}


class FailMode(StrEnum):
    """What to do with a call that needs counting when the counter store cannot answer."""

    CLOSED = "closed"
    OPEN = "open"


class Decider:
    def __init__(
        self,
        policy: Callable[[], Policy],
        identity: IdentitySource,
        store: CounterStore,
        fail_mode: FailMode = FailMode.CLOSED,
        *,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        jwt_payload_key: str = "jwt_payload",
        approvals: ApprovalStore | None = None,
        on_approval_requested: Callable[[Approval], None] = lambda approval: None,
        grants: GrantIdentity | None = None,
        tools: ToolCheck | None = None,
    ) -> None:
        self._policy = policy
        self._identity = identity
        self._store = store
        self._fail_mode = fail_mode
        self._new_id = new_id
        self._payload_key = jwt_payload_key
        self._approvals = ApprovalGate(approvals or MemoryApprovals(), on_approval_requested)
        # With grant tokens the token names the caller (and maybe its policy), not `identity`.
        self._grants = grants
        # With a tool catalogue, each called tool is looked up, classed and checked.
        self._tools = tools

    async def decide(self, request: HttpRequest) -> Outcome:
        outcome = await self._decide(request)
        # Reasons repeat client-chosen text; every reply, span and audit line reads this one.
        outcome.reason = echo(outcome.reason)
        outcome.origin = request.origin()
        return outcome

    async def _decide(self, request: HttpRequest) -> Outcome:
        # One policy for the whole request, even if a reload lands while it is judged.
        policy = self._policy()
        decision_id = self._new_id()
        try:
            calls = parse_request(request)
        except RequestRefused as e:
            return _refused(decision_id, policy, e, (), (e.request_id,))
        ids = tuple([c.id for c in calls])
        try:
            # A caller's identity and session are client-chosen too, and bounded.
            identified = (
                self._identify(request, policy)
                if self._grants is None
                else await self._grants.identify(request, policy)
            )
        except RequestRefused as e:
            return _refused(decision_id, policy, e, calls, ids)
        if isinstance(identified, str):
            return Outcome(
                decision_id,
                policy.version,
                Refusal.UNAUTHENTICATED,
                "identity",
                identified,
                calls=calls,
                request_ids=ids,
            )
        caller, policy = identified.caller, identified.policy
        # Built once and completed in place (see _allowed): this is the per-request hot path.
        base = Outcome(
            decision_id, policy.version, None, "", "", calls=calls, caller=caller, request_ids=ids
        )
        outcome = (
            await self._judge_calls(policy, base, caller, [None] * len(calls))
            if self._tools is None
            else await self._judge(policy, base, caller, request, self._tools)
        )
        if outcome.allowed and _may_list_tools(calls):
            grant = policy.grant_of(caller)
            return replace(outcome, view_grant="" if grant is None else grant.name)
        return outcome

    def _identify(self, request: HttpRequest, policy: Policy) -> Identified | str:
        """The caller by the configured identity source (grant tokens are looked up apart)."""
        identity = self._identity.identify(request)
        if identity is None:
            return "the request carries no identity from the configured source"
        return Identified(caller_of(request, identity, self._payload_key), policy)

    async def _judge(
        self, policy: Policy, base: Outcome, caller: Caller, request: HttpRequest, tools: ToolCheck
    ) -> Outcome:
        """The calls judged with what the tool catalogue says of each."""
        looked = await tools.look(policy, request, base.calls)
        outcome = await self._judge_calls(policy, base, caller, looked)
        subject = next((i for i, c in enumerate(base.calls) if c is outcome.subject), 0)
        found = looked[subject] if looked else None
        if found is None:
            return outcome
        unread = any(f is not None and f.error for f in looked)
        fail_open = outcome.fail_open or (outcome.allowed and unread)
        # This request's own outcome (see _allowed): completed in place, not copied.
        outcome.tool, outcome.fail_open = outcome.tool or found.facts, fail_open
        return outcome

    async def _judge_calls(
        self, policy: Policy, base: Outcome, caller: Caller, looked: list[Looked | None]
    ) -> Outcome:
        verdicts = [
            (call, evaluate(policy, call, caller, found.facts.risk if found else UNKNOWN_RISK))
            for call, found in zip(base.calls, looked, strict=True)
        ]
        admitted = self._admit(policy, base, verdicts, looked)
        if isinstance(admitted, Outcome):
            return admitted
        verdicts = admitted
        gated = any(v.approval is not None for _, v in verdicts)
        held = await self._hold(base, verdicts, caller) if gated else []
        if isinstance(held, Outcome):
            return held
        # The approvals first: a call that cannot have its approval is refused uncharged.
        refused = await self._approvals.spend(held) if held else None
        if refused is not None:
            return refused
        outcome = await self._count(base, verdicts, caller)
        if held:
            spent = [cast(Approval, h.approval) for h in held]
            outcome = await self._approvals.settle(outcome, spent, passed=outcome.allowed)
        if not outcome.allowed or not any(v.dry_uses for _, v in verdicts):
            return outcome
        return await self._dry_run(outcome, verdicts, caller)

    async def _count(
        self, base: Outcome, verdicts: list[tuple[McpCall, Verdict]], caller: Caller
    ) -> Outcome:
        """Count the request's limits, all or nothing: allowed with their states, or refused."""
        states: tuple[LimitState, ...] = ()
        counted = [(c, v) for c, v in verdicts if v.uses]
        if counted:
            wanted = [h for _, v in counted for h in hits(v.uses, caller, v.grant)]
            # One hit has no other to merge with (the usual single call of one budget).
            if len(wanted) > 1:
                wanted = list(combine(wanted))
            try:
                result = await self._store.hit(wanted)
            except StoreUnavailable as e:
                return self._unavailable(base, counted[0], str(e))
            if not result.allowed:
                return _limited(base, counted, result)
            states = result.states
        return _allowed(base, verdicts, states)

    def _admit(
        self,
        policy: Policy,
        base: Outcome,
        verdicts: list[tuple[McpCall, Verdict]],
        looked: list[Looked | None],
    ) -> list[tuple[McpCall, Verdict]] | Outcome:
        """The verdicts as the policy and then the catalogue leave them, or the first
        refusal: the policy's own first, so a tool it denies anyway is refused as denied."""
        for call, verdict in verdicts:
            if not verdict.allowed:
                return _verdict(base, call, verdict, Refusal.DENIED)
        if self._tools is None:
            return verdicts
        checked = []
        for (call, verdict), found in zip(verdicts, looked, strict=True):
            result = (
                verdict if found is None else self._tools.judge(policy, base, call, verdict, found)
            )
            if isinstance(result, Outcome):
                return result
            checked.append((call, result))
        return checked

    async def _hold(
        self, base: Outcome, verdicts: list[tuple[McpCall, Verdict]], caller: Caller
    ) -> list[Outcome] | Outcome:
        """Each gated call's outcome holding its approved approval; or the refusal that
        stops the request."""
        held: list[Outcome] = []
        for call, verdict in verdicts:
            if verdict.approval is None:
                continue
            waiting = await self._approvals.hold(base, call, verdict, caller)
            if waiting.refusal is not None:
                return waiting
            approval = cast(Approval, waiting.approval)
            if any(cast(Approval, h.approval).id == approval.id for h in held):
                # One approval covers one call: refused here, before anything is counted.
                return replace(
                    waiting,
                    refusal=Refusal.APPROVAL_REQUIRED,
                    reason=f"the request carries the call approved by {approval.id} more "
                    "than once; one approval covers one call",
                )
            held.append(waiting)
        return held

    async def _dry_run(
        self, outcome: Outcome, verdicts: list[tuple[McpCall, Verdict]], caller: Caller
    ) -> Outcome:
        """Count dry-run budgets apart from the real ones, and note what they would refuse."""
        dry = combine([h for _, v in verdicts for h in hits(v.dry_uses, caller, v.grant)])
        if not dry:
            return outcome
        try:
            result = await self._store.hit(dry)
        except StoreUnavailable:
            return outcome
        if result.allowed:
            return outcome
        spent = result.blocking[0].hit.key.counter
        note = f'budget "{spent}" is spent'
        return replace(
            outcome,
            would_deny=outcome.would_deny or note,
            reason=f"would deny: {outcome.would_deny or note}",
        )

    def _unavailable(self, base: Outcome, first: tuple[McpCall, Verdict], error: str) -> Outcome:
        call, verdict = first
        reason = f"rate limits cannot be checked ({error})"
        if self._fail_mode is FailMode.OPEN:
            return replace(
                base,
                subject=call,
                rule=verdict.rule,
                grant=verdict.grant,
                fail_open=True,
                reason=reason + "; allowed because the fail mode is open",
            )
        refused = Verdict(False, verdict.rule, reason + "; the fail mode is closed", verdict.grant)
        return _verdict(base, call, refused, Refusal.LIMITS_UNAVAILABLE)


def _may_list_tools(calls: tuple[McpCall, ...]) -> bool:
    """A tools/list, or a bodiless request (a GET opens the server's event stream, where a
    resumed stream may replay a list answer)."""
    return not calls or any(c.method == "tools/list" for c in calls)


def _refused(
    decision_id: str,
    policy: Policy,
    error: RequestRefused,
    calls: tuple[McpCall, ...],
    ids: tuple[RequestId | None, ...],
) -> Outcome:
    return Outcome(
        decision_id,
        policy.version,
        error.refusal,
        "request",
        error.message,
        calls=calls,
        request_ids=ids,
    )


def _allowed(
    base: Outcome, verdicts: list[tuple[McpCall, Verdict]], limits: tuple[LimitState, ...]
) -> Outcome:
    if not verdicts:
        return replace(base, rule="request", reason="no MCP call in the request")
    # `base` is this request's own, made by _decide: completed in place, not copied.
    call, verdict = verdicts[0]
    base.subject, base.rule, base.reason = call, verdict.rule, verdict.reason
    base.grant, base.limits = verdict.grant, limits
    for _, v in verdicts:
        if v.would_deny:
            base.would_deny = v.would_deny
            break
    return base


def _verdict(base: Outcome, call: McpCall, verdict: Verdict, refusal: Refusal) -> Outcome:
    return replace(
        base,
        refusal=refusal,
        subject=call,
        rule=verdict.rule,
        reason=verdict.reason,
        grant=verdict.grant,
    )


def _limited(base: Outcome, counted: list[tuple[McpCall, Verdict]], result: HitResult) -> Outcome:
    state = result.blocking[0]
    call, verdict, use = next(
        (c, v, u)
        for c, v in counted
        for u in v.uses
        if u.counting.limit.counter == state.hit.key.counter
    )
    limit = use.counting.limit
    budget = f'limit "{limit.counter}" ({limit.describe()})'
    wait = result.retry_after
    if state.crowded is not None:
        detail = f"{_CROWDED[state.crowded]}; retry in {whole_seconds(wait or 0.0)}s"
    elif wait is None:
        detail = f"the call needs {state.hit.cost}, more than {budget} ever allows"
    elif state.hit.cost == 1:
        detail = f"{budget} is spent; retry in {whole_seconds(wait)}s"
    else:
        detail = (
            f"{budget} has {state.remaining} left and the call needs {state.hit.cost}; "
            f"retry in {whole_seconds(wait)}s"
        )
    reason = f"{use.rule.reason} ({detail})" if use.rule.reason else detail
    return replace(
        base,
        refusal=Refusal.RATE_LIMITED,
        subject=call,
        rule=use.counting.id or use.rule.id,
        grant=verdict.grant,
        reason=reason,
        limits=result.states,
        retry_after=wait,
    )
