"""Adversarial review: a server's inputSchema must never make the gateway open a connection.

jsonschema's default registry still retrieves remote `$ref`s (urlopen, synchronous, no
timeout: an SSRF from the gateway, and the event loop blocked for as long as the target
holds the socket). A local HTTP server stands in for the target and records every request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from authz.catalogue.validation import Schemas
from authz.protocol.tools import parse_tool


class _Target(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = json.dumps({"type": "integer"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def target() -> Iterator[tuple[str, list[str]]]:
    seen: ClassVar[list[str]] = []
    handler = type("Handler", (_Target,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    "ref",
    [
        "{base}/schema.json",
        "{base}/schema.json#/definitions/x",
    ],
)
def test_a_remote_ref_is_never_fetched(target: tuple[str, list[str]], ref: str) -> None:
    base, seen = target
    schema = {"type": "object", "properties": {"amount": {"$ref": ref.format(base=base)}}}
    tool = parse_tool({"name": "pay", "inputSchema": schema})
    found = Schemas().problem(tool, {"amount": 5})
    assert seen == []
    assert found is not None
    assert "does not fetch" in found.message


def test_a_remote_id_base_is_never_fetched(target: tuple[str, list[str]]) -> None:
    # A relative $ref against a remote $id resolves to a remote URL as well.
    base, seen = target
    schema = {
        "$id": f"{base}/root.json",
        "type": "object",
        "properties": {"amount": {"$ref": "other.json"}},
    }
    tool = parse_tool({"name": "pay", "inputSchema": schema})
    found = Schemas().problem(tool, {"amount": 5})
    assert seen == []
    assert found is not None


def test_a_local_ref_still_resolves() -> None:
    schema = {
        "type": "object",
        "$defs": {"amount": {"type": "integer"}},
        "properties": {"amount": {"$ref": "#/$defs/amount"}},
    }
    tool = parse_tool({"name": "pay", "inputSchema": schema})
    assert Schemas().problem(tool, {"amount": 5}) is None
    found = Schemas().problem(tool, {"amount": "5"})
    assert found is not None
    assert found.path == "$.amount"


@pytest.mark.parametrize("depth", [200, 900])
def test_a_schema_nested_too_deep_refuses_instead_of_raising(depth: int) -> None:
    # 200 levels is 2 KB of schema: well inside the definition bound.
    nested: dict[str, object] = {"type": "integer"}
    for _ in range(depth):
        nested = {"not": nested}
    tool = parse_tool(
        {"name": "pay", "inputSchema": {"type": "object", "properties": {"x": nested}}}
    )
    found = Schemas().problem(tool, {"x": 1})
    assert found is not None
    assert found.path == "$"
    assert "nested too deep" in found.message


def test_a_pattern_over_the_memory_bound_refuses_instead_of_taking_8_mib() -> None:
    # RE2's default budget is 8 MiB per pattern (its DFA caches grow to it while matching): a
    # server listing 1024 tools with such patterns would hold gigabytes. 84,000 instructions
    # fit that default but not the gateway's 1 MiB.
    pattern = r"[\s\S]{1000}" * 12
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}}}
    found = Schemas().problem(parse_tool({"name": "pay", "inputSchema": schema}), {"x": "a"})
    assert found is not None
    assert "cannot run" in found.message


def test_common_patterns_fit_the_memory_bound() -> None:
    for pattern in (r"^[\s\S]{0,1000}$", r"^(?:[a-z0-9-]{1,63}\.){1,10}[a-z]{2,63}$"):
        schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}}}
        tool = parse_tool({"name": "pay", "inputSchema": schema})
        assert Schemas().problem(tool, {"x": "mcp.example.com"}) is None, pattern


def test_unevaluated_properties_never_runs_a_server_pattern_on_pythons_re() -> None:
    # jsonschema's unevaluatedProperties matches patternProperties with Python's backtracking
    # `re`: "^(a+)+$" on a 40-character key would take hours. Such a schema cannot judge.
    nested = {"allOf": [{"patternProperties": {"^(a+)+$": {}}}], "unevaluatedProperties": False}
    for schema in (
        {"type": "object", "patternProperties": {"^(a+)+$": {}}, "unevaluatedProperties": False},
        {"type": "object", "properties": {"x": nested}},
    ):
        tool = parse_tool({"name": "pay", "inputSchema": schema})
        found = Schemas().problem(tool, {"a" * 40 + "!": 1, "x": {"a" * 40 + "!": 1}})
        assert found is not None
        assert found.path == "$"
        assert "unevaluatedProperties" in found.message
