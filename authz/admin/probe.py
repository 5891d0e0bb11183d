"""`mcp-authz probe HOST:PORT|URL`: one real ext_authz Check, as Envoy would send it.

For smoke tests and `helm test`. Given HOST:PORT it sends a `tools/call` JSON-RPC body over
gRPC with the generated Envoy messages and prints the decision. Given an http(s):// MCP URL it
POSTs a `tools/call` to Envoy, which asks mcp-authz: the whole path an agent's call takes (the
Service, Envoy's ext_authz filter, mcp-authz), with mcp-authz's own port left closed. That call
names no tool, so mcp-authz refuses it whatever the policy says, before any counter (nothing is
charged, nothing reaches the MCP server), and the answer carries its decision id header, which
Envoy's own answers (503 when mcp-authz is unreachable) never do. It exits 0 when mcp-authz
decided, allowed or denied alike (a denial is a working gateway), and 1 when it did not answer
or answered something Envoy could not use.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any, Final

import grpc

from authz._gen.envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from authz._gen.google.rpc import code_pb2
from authz.core.reply import DECISION_HEADER

DEFAULT_TOOL: Final = "mcp-authz-probe"
TIMEOUT: Final = 5.0
EXIT_ANSWERED: Final = 0
EXIT_NO_ANSWER: Final = 1
Attr = attribute_context_pb2.AttributeContext


def add_command(commands: Any) -> None:
    probe = commands.add_parser("probe", help="send one ext_authz Check and print the decision")
    probe.add_argument(
        "address",
        metavar="HOST:PORT|URL",
        help="the gRPC ext_authz address, or an http(s):// MCP URL served by Envoy",
    )
    probe.add_argument(
        "--tool", default=DEFAULT_TOOL, help="the tool of the tools/call (gRPC only: see above)"
    )
    probe.add_argument(
        "--identity-header",
        action="append",
        default=[],
        type=_header,
        metavar="NAME=VALUE",
        help="a request header, as Envoy would pass it (repeatable)",
    )
    probe.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds to wait")
    probe.set_defaults(handler=_probe)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().lower(), value


def tool_call(tool: str | None) -> bytes:
    params: dict[str, Any] = {"arguments": {}} if tool is None else {"name": tool, "arguments": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    return json.dumps(body).encode()


def check_request(tool: str, headers: list[tuple[str, str]]) -> Any:
    """A CheckRequest for a `tools/call` of `tool`, as Envoy builds one with pack_as_bytes."""
    http = Attr.HttpRequest(method="POST", path="/mcp", raw_body=tool_call(tool))
    http.headers.update({"content-type": "application/json", **dict(headers)})
    return external_auth_pb2.CheckRequest(attributes=Attr(request=Attr.Request(http=http)))


def describe(response: Any) -> str | None:
    """The decision in one line, or None when Envoy could not use the response."""
    code = response.status.code
    if code == code_pb2.OK and response.HasField("ok_response"):
        return "allowed (status OK)"
    if code == code_pb2.OK or not response.HasField("denied_response"):
        return None
    denied = response.denied_response
    try:
        error = json.loads(denied.body).get("error", {})
    except (ValueError, AttributeError):
        error = {}
    jsonrpc = f"; JSON-RPC error {error.get('code')}: {error.get('message')}" if error else ""
    return f"denied (status {code_pb2.Code.Name(code)}, HTTP {denied.status.code}){jsonrpc}"


def _probe(args: argparse.Namespace) -> int:
    if args.address.startswith(("http://", "https://")):
        return _probe_url(args)
    request = check_request(args.tool, args.identity_header)
    try:
        with grpc.insecure_channel(args.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)  # type: ignore[no-untyped-call]
            response = stub.Check(request, timeout=args.timeout, wait_for_ready=True)
    except grpc.RpcError as e:
        print(f"mcp-authz probe: {args.address} did not answer: {e.code().name}", file=sys.stderr)
        return EXIT_NO_ANSWER
    decision = describe(response)
    if decision is None:
        print(f"mcp-authz probe: malformed CheckResponse: {response}", file=sys.stderr)
        return EXIT_NO_ANSWER
    print(f"{args.tool}: {decision}")
    return EXIT_ANSWERED


def _probe_url(args: argparse.Namespace) -> int:
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        **dict(args.identity_header),
    }
    # http(s) only: _probe sends nothing else here.
    request = urllib.request.Request(  # noqa: S310
        args.address, data=tool_call(None), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310
            status, decision, body = response.status, response.headers.get(DECISION_HEADER), b""
    except urllib.error.HTTPError as e:
        status, decision, body = e.code, e.headers.get(DECISION_HEADER), e.read(512)
    except OSError as e:
        print(f"mcp-authz probe: {args.address} did not answer: {e}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if decision is None:
        print(
            f"mcp-authz probe: HTTP {status} from {args.address} without the {DECISION_HEADER} "
            f"header: mcp-authz did not decide (Envoy's own answer?) {body[:200]!r}",
            file=sys.stderr,
        )
        return EXIT_NO_ANSWER
    print(f"{args.address}: mcp-authz decided (HTTP {status}, decision {decision})")
    return EXIT_ANSWERED
