"""Client-chosen identifiers over their bound are refused as invalid requests, and audited."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from opentelemetry.trace import INVALID_SPAN_CONTEXT

from authz.core.decision import Decider
from authz.core.outcome import Outcome
from authz.core.reply import reply_for
from authz.limits.memory import MemoryStore
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.policy.load import parse_policy
from authz.protocol.bounds import (
    MAX_IDENTITY,
    MAX_METHOD,
    MAX_NAME,
    MAX_PROTOCOL_VERSION,
    MAX_REQUEST_ID,
    MAX_SESSION_ID,
    MAX_URI,
)
from authz.protocol.errors import Refusal
from authz.protocol.identity import FromHeader
from authz.protocol.request import HttpRequest

POLICY = parse_policy(b'{"version": "1", "default": "allow", "tools": {"a*b*c*": {}}}', "p.json")


def message(method: str = "tools/call", **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {"name": "t"}}


async def decide(body: dict[str, Any], **headers: str) -> Outcome:
    h = {"content-type": "application/json", "x-agent": "bot"} | {
        k.replace("_", "-"): v for k, v in headers.items()
    }
    request = HttpRequest("POST", "/mcp", h, json.dumps(body).encode())
    decider = Decider(lambda: POLICY, FromHeader("x-agent"), MemoryStore(lambda: 0.0))
    return await decider.decide(request)


def at(cap: int) -> str:
    return "x" * cap


@pytest.mark.parametrize(
    ("build", "cap"),
    [
        pytest.param(lambda n: message(name=n), MAX_NAME, id="tool name"),
        pytest.param(lambda n: message("prompts/get", name=n), MAX_NAME, id="prompt name"),
        pytest.param(lambda n: message("resources/read", uri=n), MAX_URI, id="resource uri"),
        pytest.param(message, MAX_METHOD, id="method"),
        pytest.param(lambda n: message() | {"id": n}, MAX_REQUEST_ID, id="request id"),
    ],
)
async def test_body_identifiers_up_to_their_bound_pass_and_longer_are_refused(
    build: Any, cap: int
) -> None:
    """Fails before the bounds: a 60 KB tool name was judged (and echoed) like any other."""
    assert (await decide(build(at(cap)))).refusal is not Refusal.INVALID_REQUEST
    refused = await decide(build(at(cap + 1)))
    assert refused.refusal is Refusal.INVALID_REQUEST
    assert f"at most {cap} are accepted" in refused.reason


@pytest.mark.parametrize(
    ("header", "cap"),
    [
        ("mcp-session-id", MAX_SESSION_ID),
        ("x-agent", MAX_IDENTITY),
        ("mcp-protocol-version", MAX_PROTOCOL_VERSION),
        ("mcp-method", MAX_METHOD),
    ],
)
async def test_header_identifiers_over_their_bound_are_refused(header: str, cap: int) -> None:
    refused = await decide(message(), **{header: at(cap + 1)})
    assert refused.refusal is Refusal.INVALID_REQUEST
    assert f"at most {cap} are accepted" in refused.reason


async def test_an_overlong_mcp_name_header_is_refused_before_it_is_decoded() -> None:
    refused = await decide(message(), mcp_name="=?base64?" + "QUFB" * 4096 + "?=")
    assert refused.refusal is Refusal.INVALID_REQUEST


async def test_a_lone_surrogate_in_a_tool_name_is_refused() -> None:
    refused = await decide(message(name="transfer\ud800"))
    assert refused.refusal is Refusal.INVALID_REQUEST
    assert "not valid Unicode" in refused.reason


async def test_a_refusal_is_a_json_rpc_invalid_request_with_an_audit_line() -> None:
    refused = await decide(message(name=at(MAX_NAME * 400)))
    reply = reply_for(refused)
    assert json.loads(reply.body)["error"]["code"] == -32600
    # The over-long id would have been echoed: it is refused without it.
    assert json.loads(reply_for(await decide(message() | {"id": at(10_000)})).body)["id"] is None
    stream = io.StringIO()
    AuditLog(stream, ArgumentAudit(b"k" * 32)).record(refused, 0.0, INVALID_SPAN_CONTEXT)
    line = json.loads(stream.getvalue())
    assert (line["decision"], line["rule"]) == ("invalid", "request")
