"""What was decided about one request: the value every edge (Envoy, audit, telemetry) reads."""

from __future__ import annotations

from dataclasses import dataclass

from authz.approvals.base import Approval
from authz.limits.base import LimitState
from authz.protocol.errors import Refusal
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall, RequestId
from authz.protocol.request import UNKNOWN_ORIGIN, Origin


@dataclass(frozen=True, slots=True)
class ToolFacts:
    """What the catalogue says about a called tool: for replies, spans and audit lines."""

    upstream: str
    # One of RISK_LABELS: read, write, destructive, or unknown (never listed, no catalogue).
    risk: str
    open_world: bool | None = None
    # The pinned definition's fingerprint; None for a tool never listed.
    fingerprint: str | None = None
    # The definition the server offers now, when it drifted from the pin.
    offered: str | None = None
    # Where the arguments failed the tool's inputSchema.
    argument_path: str | None = None


# Not frozen: a frozen dataclass sets each of these fields through object.__setattr__, five
# times the cost of a plain one, and the decision core builds one per request and completes
# it in place (authz/core/decision.py). Once `Decider.decide` returns it, nothing changes it.
@dataclass(slots=True)
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
    origin: Origin = UNKNOWN_ORIGIN
    # The catalogue's word on the subject's tool, when a catalogue is configured.
    tool: ToolFacts | None = None
    # The caller's grant when the answer may list tools (a tools/list, or a GET event
    # stream): the response side filters the list for it. "" when the caller's grant token
    # names a grant the policy lacks (nothing is then shown).
    view_grant: str | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    @property
    def label(self) -> str:
        return "allowed" if self.refusal is None else self.refusal.label


def whole_seconds(wait: float) -> int:
    return max(1, int(-(-wait // 1)))


def retry_seconds(outcome: Outcome) -> int | None:
    """Whole seconds to wait before the refused call can fit (rounded up, at least 1)."""
    return None if outcome.retry_after is None else whole_seconds(outcome.retry_after)
