"""One request, one decision: parse, identify, evaluate, count.

This is the single decision core every transport calls. It does no I/O of its own but the
counter store's one atomic operation, and it never raises for anything a client sends.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import cast

from authz.approvals.base import Approval, ApprovalStore, Request, Status
from authz.approvals.memory import MemoryApprovals
from authz.errors import Refusal, RequestRefused
from authz.identity import Caller, IdentitySource, caller_of
from authz.limits.base import CounterStore, HitResult, LimitState, StoreUnavailable, combine
from authz.mcp import McpCall, RequestId, parse_request
from authz.policy.evaluate import Verdict, evaluate, hits
from authz.policy.model import ApprovalRule, Policy, Rule
from authz.request import HttpRequest


class FailMode(StrEnum):
    """What to do with a call that needs counting when the counter store cannot answer."""

    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Outcome:
    decision_id: str
    policy_version: str
    refusal: Refusal | None
    rule: str
    reason: str
    calls: tuple[McpCall, ...] = ()
    # The call a refusal is about (the first denied one of a batch).
    subject: McpCall | None = None
    caller: Caller | None = None
    grant: str | None = None
    limits: tuple[LimitState, ...] = ()
    retry_after: float | None = None
    # Allowed only because the store was down and the fail mode is open.
    fail_open: bool = False
    # What a dry-run rule would have refused; the call itself went through.
    would_deny: str | None = None
    # The approval a refused call waits for, or the one an allowed call used.
    approval: Approval | None = None
    request_ids: tuple[RequestId | None, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    @property
    def label(self) -> str:
        return "allowed" if self.refusal is None else self.refusal.label


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
    ) -> None:
        self._policy = policy
        self._identity = identity
        self._store = store
        self._fail_mode = fail_mode
        self._new_id = new_id
        self._payload_key = jwt_payload_key
        self._approvals = approvals or MemoryApprovals()
        self._on_approval_requested = on_approval_requested

    async def decide(self, request: HttpRequest) -> Outcome:
        # One policy for the whole request, even if a reload lands while it is judged.
        policy = self._policy()
        base = Outcome(self._new_id(), policy.version, None, "", "")
        try:
            calls = parse_request(request)
        except RequestRefused as e:
            return replace(
                base,
                refusal=e.refusal,
                rule="request",
                reason=e.message,
                request_ids=(e.request_id,),
            )
        base = replace(base, calls=calls, request_ids=tuple(c.id for c in calls))
        identity = self._identity.identify(request)
        if identity is None:
            return replace(
                base,
                refusal=Refusal.UNAUTHENTICATED,
                rule="identity",
                reason="the request carries no identity from the configured source",
            )
        caller = caller_of(request, identity, self._payload_key)
        return await self._judge(policy, replace(base, caller=caller), caller)

    async def _judge(self, policy: Policy, base: Outcome, caller: Caller) -> Outcome:
        verdicts = [(call, evaluate(policy, call, caller)) for call in base.calls]
        for call, verdict in verdicts:
            if not verdict.allowed:
                return _verdict(base, call, verdict, Refusal.DENIED)
        approved: list[Approval] = []
        for call, verdict in verdicts:
            if verdict.approval is not None:
                waiting = await self._approval(base, call, verdict, caller)
                if waiting.refusal is not None:
                    return waiting
                approved.append(cast(Approval, waiting.approval))
        outcome = _allowed(base, verdicts)
        counted = [(c, v) for c, v in verdicts if v.uses]
        if counted:
            wanted = combine([h for _, v in counted for h in hits(v.uses, caller, v.grant)])
            try:
                result = await self._store.hit(wanted)
            except StoreUnavailable as e:
                return self._unavailable(base, counted[0], str(e))
            if not result.allowed:
                return _limited(base, counted, result)
            outcome = replace(outcome, limits=result.states)
        if approved:
            outcome = await self._use(outcome, approved)
            if outcome.refusal is not None:
                return outcome
        return await self._dry_run(outcome, verdicts, caller)

    async def _approval(
        self, base: Outcome, call: McpCall, verdict: Verdict, caller: Caller
    ) -> Outcome:
        """The approved approval for this call (as `outcome.approval`), or the refusal that
        asks for one. Approval-gated calls fail closed whatever the fail mode."""
        rule = cast(Rule, verdict.approval)
        gate = cast(ApprovalRule, rule.approval)
        tool = call.tool or str(call.method)
        asked = rule.reason or f'tool "{tool}" needs a person\'s approval'
        request = Request(
            caller.identity,
            verdict.grant,
            tool,
            call.arguments,
            rule.id,
            asked,
            gate.approvers,
            gate.approver_claims,
        )
        held = replace(base, subject=call, rule=rule.id, grant=verdict.grant)
        try:
            approval, created = await self._approvals.request(request, gate.lifetime)
        except StoreUnavailable as e:
            return replace(
                held,
                refusal=Refusal.LIMITS_UNAVAILABLE,
                reason=f"approvals cannot be checked ({e}); approval-gated calls "
                "always fail closed",
            )
        if created:
            self._on_approval_requested(approval)
        if approval.status is Status.APPROVED:
            return replace(held, approval=approval)
        expires = _iso(approval.expires_at)
        if approval.status is Status.DENIED:
            return replace(
                held,
                refusal=Refusal.APPROVAL_DENIED,
                approval=approval,
                reason=f"{asked}; approval {approval.id} was denied by "
                f"{approval.decided_by} (until {expires})",
            )
        return replace(
            held,
            refusal=Refusal.APPROVAL_REQUIRED,
            approval=approval,
            reason=f"{asked}; approval {approval.id} was requested and expires at "
            f"{expires}: retry the same call once a person has approved it",
        )

    async def _use(self, outcome: Outcome, approved: list[Approval]) -> Outcome:
        """Spend each approval; one already spent (a concurrent identical call) refuses."""
        for approval in approved:
            try:
                used = await self._approvals.consume(approval.id)
            except StoreUnavailable as e:
                return replace(
                    outcome,
                    refusal=Refusal.LIMITS_UNAVAILABLE,
                    reason=f"approvals cannot be checked ({e}); approval-gated "
                    "calls always fail closed",
                )
            if not used:
                return replace(
                    outcome,
                    refusal=Refusal.APPROVAL_REQUIRED,
                    approval=approval,
                    reason=f"approval {approval.id} was already used: ask again",
                )
        return replace(outcome, approval=approved[0])

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


def _allowed(base: Outcome, verdicts: list[tuple[McpCall, Verdict]]) -> Outcome:
    if not verdicts:
        return replace(base, rule="request", reason="no MCP call in the request")
    call, verdict = verdicts[0]
    would_deny = next((v.would_deny for _, v in verdicts if v.would_deny), None)
    return replace(
        base,
        subject=call,
        rule=verdict.rule,
        reason=verdict.reason,
        grant=verdict.grant,
        would_deny=would_deny,
    )


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
    if wait is None:
        detail = f"the call needs {state.hit.cost}, more than {budget} ever allows"
    elif state.hit.cost == 1:
        detail = f"{budget} is spent; retry in {_seconds(wait)}s"
    else:
        detail = (
            f"{budget} has {state.remaining} left and the call needs {state.hit.cost}; "
            f"retry in {_seconds(wait)}s"
        )
    reason = f"{use.rule.reason} ({detail})" if use.rule.reason else detail
    return replace(
        base,
        refusal=Refusal.RATE_LIMITED,
        subject=call,
        rule=use.rule.id,
        grant=verdict.grant,
        reason=reason,
        limits=result.states,
        retry_after=wait,
    )


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _seconds(wait: float) -> int:
    return max(1, int(-(-wait // 1)))


def retry_seconds(outcome: Outcome) -> int | None:
    """Whole seconds to wait before the refused call can fit (rounded up, at least 1)."""
    return None if outcome.retry_after is None else _seconds(outcome.retry_after)
