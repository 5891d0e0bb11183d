"""The approval step of a decision: ask for a person's approval, or spend the one given.

Approval-gated calls fail closed whatever the fail mode: a store that cannot answer never
lets a risky call through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

from authz.approvals.base import Approval, ApprovalStore, Request, Status
from authz.core.outcome import Outcome
from authz.limits.base import StoreUnavailable
from authz.policy.evaluate import Verdict
from authz.policy.model import ApprovalRule, Rule
from authz.protocol.errors import Refusal
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall


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
            return replace(
                held,
                refusal=Refusal.LIMITS_UNAVAILABLE,
                reason=f"approvals cannot be checked ({e}); approval-gated calls "
                "always fail closed",
            )
        if created:
            self._on_requested(approval)
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

    async def use(self, outcome: Outcome, approved: list[Approval]) -> Outcome:
        """Spend each approval; one already spent (a concurrent identical call) refuses."""
        for approval in approved:
            try:
                used = await self._store.consume(approval.id)
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


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
