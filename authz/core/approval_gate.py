"""The approval step of a decision: ask for a person's approval, or spend the one given.

An approval is spent before the call's limits are counted, then committed when the call
passes or released when it is refused for another reason: of concurrent identical calls
only one can hold it, and a refused call neither uses it nor is charged.

Approval-gated calls fail closed whatever the fail mode: a store that cannot answer never
lets a risky call through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

from authz.approvals.base import Approval, ApprovalsFull, ApprovalStore, Request, Status
from authz.core.outcome import Outcome
from authz.limits.base import StoreUnavailable
from authz.policy.evaluate import Verdict
from authz.policy.model import ApprovalRule, Rule
from authz.protocol.errors import Refusal
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall

log = logging.getLogger("mcp_authz.approvals")
_UNAVAILABLE = "approval-gated calls always fail closed"


class ApprovalGate:
    def __init__(self, store: ApprovalStore, on_requested: Callable[[Approval], None]) -> None:
        self._store = store
        self._on_requested = on_requested

    async def hold(self, base: Outcome, call: McpCall, verdict: Verdict, caller: Caller) -> Outcome:
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
            approval, created = await self._store.request(request, gate.lifetime)
        except StoreUnavailable as e:
            return _unavailable(held, e)
        except ApprovalsFull as e:
            return replace(
                held,
                refusal=Refusal.APPROVALS_FULL,
                reason=f"{asked}; {e}: none is asked until a person decides one or one expires",
                retry_after=max(e.retry_after, 0.0),
            )
        if created:
            self._on_requested(approval)
        if approval.status is Status.APPROVED:
            return replace(held, approval=approval)
        if approval.status is Status.IN_USE:
            return _in_use(held, approval)
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

    async def spend(self, held: Sequence[Outcome]) -> Outcome | None:
        """Spend the approval of every held call (each an outcome from `hold`), or none: the
        refusal when one is gone (a concurrent identical call holds it) or the store cannot
        answer."""
        spent: list[Approval] = []
        for outcome in held:
            approval = cast(Approval, outcome.approval)
            try:
                taken = await self._store.spend(approval.id)
            except StoreUnavailable as e:
                await self.settle(outcome, spent, passed=False)
                return _unavailable(outcome, e)
            if not taken:
                await self.settle(outcome, spent, passed=False)
                return _in_use(outcome, approval)
            spent.append(approval)
        return None

    async def settle(self, outcome: Outcome, spent: Sequence[Approval], *, passed: bool) -> Outcome:
        """Commit the spent approvals of a call that passed, release those of a refused one.

        Either way the decision stands: a store failing here leaves an approval in use, so
        nobody uses it until it expires (fail closed), and the call is not charged for it.
        """
        for approval in spent:
            try:
                await (self._store.commit if passed else self._store.release)(approval.id)
            except StoreUnavailable as e:
                log.warning("approval %s stays in use until it expires: %s", approval.id, e)
        if passed and spent:
            return replace(outcome, approval=spent[0])
        return outcome


def _unavailable(outcome: Outcome, error: StoreUnavailable) -> Outcome:
    return replace(
        outcome,
        refusal=Refusal.LIMITS_UNAVAILABLE,
        reason=f"approvals cannot be checked ({error}); {_UNAVAILABLE}",
    )


def _in_use(outcome: Outcome, approval: Approval) -> Outcome:
    return replace(
        outcome,
        refusal=Refusal.APPROVAL_REQUIRED,
        approval=replace(approval, status=Status.IN_USE),
        reason=f"approval {approval.id} is held by a concurrent identical call: retry; it "
        "is free again if that call is refused, and used if it passes",
    )


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
