"""Every way a request can be refused, in one place.

Each kind has one JSON-RPC error code (what the agent sees), one HTTP status (what its
transport sees) and one short label (used in logs, audit records and metric labels alike).
The MCP specification reserves -32020..-32099 for itself, so our own codes sit in
-32000..-32019; the header/body mismatch is the specification's own error and keeps its code.
"""

from __future__ import annotations

from enum import Enum


class Refusal(Enum):
    # (JSON-RPC code, HTTP status, label)
    PARSE_ERROR = (-32700, 400, "malformed")
    INVALID_REQUEST = (-32600, 400, "invalid")
    HEADER_MISMATCH = (-32020, 400, "header_mismatch")
    # Policy refusals go out as HTTP 200: the TypeScript SDK client turns any other status
    # into a transport error and never shows the agent the JSON-RPC error and its reason.
    DENIED = (-32000, 200, "denied")
    RATE_LIMITED = (-32001, 200, "rate_limited")
    LIMITS_UNAVAILABLE = (-32002, 200, "limits_unavailable")
    UNAUTHENTICATED = (-32003, 401, "unauthenticated")
    BODY_UNREADABLE = (-32004, 400, "unreadable")
    APPROVAL_REQUIRED = (-32005, 200, "approval_required")
    APPROVAL_DENIED = (-32006, 200, "approval_denied")
    # A new approval request would pass the cap of pending ones (the caller's, or the store's).
    APPROVALS_FULL = (-32007, 200, "approvals_full")
    # The tool's definition differs from the one pinned for it (authz/catalogue): refused
    # until an operator accepts the new one.
    TOOL_CHANGED = (-32008, 200, "tool_changed")
    # The call's arguments do not validate strictly against the tool's inputSchema.
    INVALID_ARGUMENTS = (-32009, 200, "invalid_arguments")
    # The server's answer could not be judged (a tools/list the gateway cannot read with
    # certainty, over its bound, compressed): withheld rather than passed unfiltered.
    RESPONSE_WITHHELD = (-32010, 502, "response_withheld")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]

    @property
    def label(self) -> str:
        return self.value[2]


class RequestRefused(Exception):  # noqa: N818 - it is a refusal, not a failure of ours
    """A request that cannot be evaluated: malformed, ambiguous or unreadable."""

    def __init__(self, refusal: Refusal, message: str, request_id: str | int | None = None):
        super().__init__(message)
        self.refusal = refusal
        self.message = message
        self.request_id = request_id
