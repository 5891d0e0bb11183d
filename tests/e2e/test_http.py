"""Raw HTTP through the shipped Envoy config: what SDK clients hide or never send.

The SDK clients swallow a failed GET stream or DELETE and never send hostile bodies, so these
requests check directly that the whole path (Envoy buffering the body, mcp-authz, the demo
server) answers each one as deploy/envoy/envoy.yaml and issue 2 say it should.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.e2e

LISTEN_KEY = "binance_us_create_listen_key"
LIMIT = 30
LEGACY = "2025-11-25"
MODERN = "2026-07-28"
ACCEPT = "application/json, text/event-stream"
MAX_REQUEST_BYTES = 1048576  # with_request_body.max_request_bytes in deploy/envoy/envoy.yaml
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json_rpc(self) -> dict[str, Any]:
        """The one JSON-RPC message in a JSON body or a single-event SSE body."""
        text = self.body.decode()
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            (text,) = (line[5:] for line in text.splitlines() if line.startswith("data:"))
        message: dict[str, Any] = json.loads(text)
        return message


@contextmanager
def connection(url: str) -> Iterator[http.client.HTTPConnection]:
    with closing(http.client.HTTPConnection(urlsplit(url).netloc, timeout=10)) as conn:
        yield conn


def send(url: str, method: str, headers: Mapping[str, str], body: bytes | None = None) -> Answer:
    with connection(url) as conn:
        conn.request(method, urlsplit(url).path, body=body, headers=dict(headers))
        response = conn.getresponse()
        return Answer(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )


def post(url: str, message: Any, **headers: str) -> Answer:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    all_headers = {"content-type": "application/json", "accept": ACCEPT, **headers}
    return send(url, "POST", all_headers, body)


def modern_call(tool: str, request_id: int = 7) -> dict[str, Any]:
    params = {"name": tool, "arguments": {"text": "hi"}, "_meta": MODERN_META}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def modern_headers(method: str, name: str) -> dict[str, str]:
    return {"mcp-protocol-version": MODERN, "mcp-method": method, "mcp-name": name}


def open_stream_status(url: str, headers: Mapping[str, str]) -> tuple[int, str]:
    """Status and content type of a GET SSE stream, read without waiting for its end."""
    with connection(url) as conn:
        conn.request("GET", urlsplit(url).path, headers=dict(headers))
        response = conn.getresponse()
        return response.status, response.getheader("content-type", "")


def test_2025_session_lifecycle_passes_through(gateway: str) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": LEGACY,
            "capabilities": {},
            "clientInfo": {"name": "e2e-raw", "version": "0"},
        },
    }
    answer = post(gateway, initialize)
    assert answer.status == 200, answer
    assert answer.json_rpc()["result"]["protocolVersion"] == LEGACY
    session = {"mcp-session-id": answer.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}

    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert post(gateway, initialized, **session).status == 202

    status, content_type = open_stream_status(gateway, {"accept": "text/event-stream", **session})
    assert status == 200
    assert content_type.startswith("text/event-stream")

    assert send(gateway, "DELETE", session).status == 200
    # The server really ended the session: the DELETE reached it, not just Envoy.
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert post(gateway, listing, **session).status == 404


def test_2026_call_passes_with_matching_headers(gateway: str) -> None:
    answer = post(gateway, modern_call("echo"), **modern_headers("tools/call", "echo"))
    # The seed policy denies echo: the point is that the body-and-headers request reached a
    # decision, returned as a JSON-RPC error for id 7 at HTTP 200.
    assert answer.status == 200, answer
    assert answer.headers["content-type"].startswith("application/json")
    message = answer.json_rpc()
    assert message["id"] == 7
    assert message["error"]["code"] == -32000


def test_rate_limited_answer_carries_retry_after(gateway: str) -> None:
    headers = modern_headers("tools/call", LISTEN_KEY)
    for request_id in range(LIMIT):
        allowed = post(gateway, modern_call(LISTEN_KEY, request_id), **headers)
        assert "result" in allowed.json_rpc(), allowed

    refused = post(gateway, modern_call(LISTEN_KEY, LIMIT), **headers)
    assert refused.status == 200, refused
    error = refused.json_rpc()["error"]
    assert error["code"] == -32001
    assert refused.headers["retry-after"] == str(error["data"]["retry_after"])


def test_2026_header_naming_another_tool_is_refused(gateway: str) -> None:
    answer = post(
        gateway, modern_call("transfer_funds"), **modern_headers("tools/call", LISTEN_KEY)
    )
    assert answer.status == 400, answer
    message = answer.json_rpc()
    assert message["id"] == 7
    assert message["error"]["code"] == -32020


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"mcp-protocol-version": MODERN, "mcp-method": "tools/call"}, id="no-name"),
        pytest.param({"mcp-protocol-version": MODERN}, id="no-method"),
    ],
)
def test_2026_call_without_routing_headers_is_refused(
    gateway: str, headers: dict[str, str]
) -> None:
    answer = post(gateway, modern_call(LISTEN_KEY), **headers)
    assert answer.status == 400, answer
    error = answer.json_rpc()["error"]
    assert error["code"] == -32020
    # Refused by mcp-authz, so nothing was counted (the MCP server's errors carry no data).
    assert error["data"]["reason"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":', -32700, id="malformed-json"),
        pytest.param(b'{"jsonrpc":"1.0","id":1,"method":"tools/list"}', -32600, id="not-json-rpc"),
        # A parser keeping the last key and a server keeping the first would disagree.
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
            b'"params":{"name":"binance_us_create_listen_key","name":"transfer_funds"}}',
            -32700,
            id="duplicate-key",
        ),
        # Reaches mcp-authz byte for byte only because Envoy packs the body as bytes; as a
        # string field Envoy would have turned the tool name into "echo!".
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo\xff"}}',
            -32700,
            id="not-utf-8",
        ),
    ],
)
def test_malformed_requests_are_refused(gateway: str, body: bytes, code: int) -> None:
    answer = post(gateway, body, **{"mcp-protocol-version": LEGACY})
    assert answer.status == 400, answer
    error = answer.json_rpc()["error"]
    assert error["code"] == code
    # Refused by mcp-authz (the MCP server's own errors carry no reason) before the server.
    assert error["data"]["reason"]


def test_body_over_envoy_limit_is_refused_whole(gateway: str) -> None:
    padding = "x" * MAX_REQUEST_BYTES
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}
    call["params"]["arguments"] = {"text": padding}
    assert post(gateway, call, **{"mcp-protocol-version": LEGACY}).status == 413


def test_nothing_passes_without_mcp_authz(gateway_without_authz: str) -> None:
    headers = modern_headers("tools/call", LISTEN_KEY)
    answer = post(gateway_without_authz, modern_call(LISTEN_KEY), **headers)
    assert answer.status == 503, answer
