"""The decision core wired for unit tests: in-process stores on a clock the test moves."""

from __future__ import annotations

import json
from typing import Any

from authz.approvals.base import Approval, ApprovalCaps, ApprovalStore
from authz.approvals.memory import MemoryApprovals
from authz.core.decision import Decider
from authz.core.outcome import Outcome
from authz.limits.base import CounterStore
from authz.limits.memory import MemoryStore
from authz.policy.model import Policy
from authz.protocol.identity import JWT_NAMESPACE, FromHeader
from authz.protocol.request import HttpRequest

IDENTITY_HEADER = "x-agent-id"


class Gate:
    """Calls tools as a given identity (with optional verified JWT claims) through a Decider
    whose counters and approvals run on `self.now`, or on the stores given."""

    def __init__(
        self,
        policy: Policy,
        now: float = 0.0,
        *,
        counters: CounterStore | None = None,
        approvals: ApprovalStore | None = None,
        caps: ApprovalCaps | None = None,
    ) -> None:
        self.now = now
        self.requested: list[Approval] = []
        self.approvals = approvals or MemoryApprovals(lambda: self.now, caps)
        self.counters = counters or MemoryStore(lambda: self.now)
        self.decider = Decider(
            lambda: policy,
            FromHeader(IDENTITY_HEADER),
            self.counters,
            approvals=self.approvals,
            on_approval_requested=self.requested.append,
        )

    async def __call__(
        self, tool: str, who: str = "agent", claims: dict[str, Any] | None = None, **args: Any
    ) -> Outcome:
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": tool, "arguments": args},
        }
        metadata = {JWT_NAMESPACE: {"jwt_payload": claims}} if claims else {}
        headers = {"content-type": "application/json", IDENTITY_HEADER: who}
        raw = json.dumps(body).encode()
        return await self.decider.decide(
            HttpRequest("POST", "/mcp", headers, raw, metadata=metadata)
        )
