"""What the client is told, independent of the transport that carries it to Envoy.

A refusal is a JSON-RPC error for every request id in the body, so MCP clients match it to
the call and show the agent the policy's reason; an allowed request gets informative headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from authz.core.outcome import Outcome, ToolFacts, retry_seconds
from authz.core.response_plan import PLAN_HEADER, plan_header
from authz.protocol.echo import json_line
from authz.protocol.errors import Refusal

DECISION_HEADER = "x-mcp-authz-decision-id"
# The agent's credential (its grant token, or whatever else it sent) is for the gateway only:
# removed from every request before it goes upstream.
AGENT_CREDENTIAL = "authorization"
# A refusal for want of a known credential says how to present one (RFC 9110 11.6.1).
CHALLENGE = ("www-authenticate", 'Bearer realm="mcp-authz"')

_remaining = attrgetter("remaining")
_MESSAGES = {
    Refusal.DENIED: "Denied by policy: {reason}",
    Refusal.RATE_LIMITED: "Rate limited: {reason}",
    Refusal.LIMITS_UNAVAILABLE: "Refused: {reason}",
    Refusal.UNAUTHENTICATED: "Unauthenticated: {reason}",
    Refusal.APPROVAL_REQUIRED: "Approval required: {reason}",
    Refusal.APPROVAL_DENIED: "Approval denied: {reason}",
    Refusal.APPROVALS_FULL: "Too many approval requests: {reason}",
    Refusal.TOOL_CHANGED: "Tool changed: {reason}",
    Refusal.INVALID_ARGUMENTS: "Invalid arguments: {reason}",
}


# Not frozen, as McpCall (authz/protocol/mcp.py): one per request; never changed once made.
@dataclass(slots=True)
class Reply:
    status: int
    # Sent to the client with a refusal, or added to the upstream's answer when allowed.
    headers: tuple[tuple[str, str], ...]
    # Added to the request forwarded upstream (allowed only).
    upstream_headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    # Removed from the request forwarded upstream (allowed only).
    upstream_removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamCredential:
    """The MCP server's own credential, set on every allowed request in place of the agent's
    (`--upstream-header`, `--upstream-bearer-file`). Its repr hides the value, so no log or
    traceback can carry it."""

    header: str
    value: str

    def __repr__(self) -> str:
        return f"UpstreamCredential({self.header!r}, <redacted>)"

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return ((self.header, self.value),)


def reply_for(outcome: Outcome, upstream: UpstreamCredential | None = None) -> Reply:
    if outcome.refusal is None:
        return _allowed(outcome, upstream)
    return _refused(outcome, outcome.refusal)


def _refused(outcome: Outcome, refusal: Refusal) -> Reply:
    ids = [i for i in outcome.request_ids if i is not None]
    error = {"code": refusal.code, "message": _message(outcome, refusal), "data": _data(outcome)}
    doc: Any = (
        [_envelope(i, error) for i in ids]
        if len(outcome.calls) > 1 and ids
        else _envelope(ids[0] if ids else None, error)
    )
    # With no id to answer (a notification, or a body that could not be read), the transport
    # spec wants an HTTP error status rather than a JSON-RPC answer.
    status = refusal.http_status if ids or refusal.http_status != 200 else 403
    headers = [("content-type", "application/json"), (DECISION_HEADER, outcome.decision_id)]
    retry = retry_seconds(outcome)
    if retry is not None:
        headers.append(("retry-after", str(retry)))
    if refusal is Refusal.UNAUTHENTICATED:
        headers.append(CHALLENGE)
    body = json_line(doc).encode()
    return Reply(status, tuple(headers), body=body)


def _allowed(outcome: Outcome, upstream: UpstreamCredential | None) -> Reply:
    headers: tuple[tuple[str, str], ...] = ()
    if outcome.limits:
        tightest = min(outcome.limits, key=_remaining)
        headers = (
            ("x-ratelimit-limit", str(tightest.hit.limit)),
            ("x-ratelimit-remaining", str(tightest.remaining)),
            ("x-ratelimit-window", str(tightest.hit.window)),
        )
    added = [(DECISION_HEADER, outcome.decision_id), *(upstream.headers if upstream else ())]
    # The upstream's own credential overwrites the agent's when it uses the same header;
    # removing that header as well would drop the credential just set.
    same = upstream is not None and upstream.header == AGENT_CREDENTIAL
    removed = [] if same else [AGENT_CREDENTIAL]
    # The response side's plan is always ours: set, or a client's copy removed.
    plan = plan_header(outcome)
    if plan is None:
        removed.append(PLAN_HEADER)
    else:
        added.append((PLAN_HEADER, plan))
    return Reply(200, headers, tuple(added), upstream_removed=tuple(removed))


def _message(outcome: Outcome, refusal: Refusal) -> str:
    template = _MESSAGES.get(refusal, "Invalid MCP request: {reason}")
    return template.format(reason=outcome.reason)


def _data(outcome: Outcome) -> dict[str, Any]:
    data: dict[str, Any] = {
        "reason": outcome.reason,
        "rule": outcome.rule,
        "decision_id": outcome.decision_id,
        "policy_version": outcome.policy_version,
    }
    if outcome.subject is not None:
        data["method"] = outcome.subject.method
        if outcome.subject.tool is not None:
            data["tool"] = outcome.subject.tool
    if outcome.approval is not None and outcome.refusal is not None:
        data["approval_id"] = outcome.approval.id
        data["approval_status"] = outcome.approval.status.value
        data["approval_expires_at"] = outcome.approval.expires_at
    if outcome.tool is not None:
        data |= _tool_data(outcome.tool)
    blocking = [s for s in outcome.limits if s.retry_after != 0]
    if outcome.refusal is Refusal.RATE_LIMITED and blocking:
        data["counter"] = blocking[0].hit.key.counter
        data["retry_after"] = retry_seconds(outcome)
    if outcome.refusal is Refusal.APPROVALS_FULL:
        data["retry_after"] = retry_seconds(outcome)
    return data


def _tool_data(tool: ToolFacts) -> dict[str, Any]:
    data: dict[str, Any] = {"risk": tool.risk}
    if tool.offered is not None:
        data["pinned_fingerprint"] = tool.fingerprint
        data["offered_fingerprint"] = tool.offered
    if tool.argument_path is not None:
        data["path"] = tool.argument_path
    return data


def _envelope(request_id: object, error: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error}
