"""Envoy CheckRequests as Envoy builds them, for tests that drive the service directly, and the
port a `mcp-authz serve` subprocess says it serves on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from authz._gen.envoy.config.core.v3 import base_pb2
from authz._gen.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

Attr = attribute_context_pb2.AttributeContext


def check_request(
    body: bytes, *, method: str = "POST", raw_headers: bool = False, **headers: str
) -> Any:
    """A CheckRequest for a JSON POST to /mcp; `x_agent_id="a"` adds `x-agent-id: a`.

    `raw_headers` sends them as Envoy does with `encode_raw_headers`: a list, not a map."""
    h = {"content-type": "application/json"}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    http = Attr.HttpRequest(method=method, path="/mcp", raw_body=body)
    if raw_headers:
        http.header_map.headers.extend(
            base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in h.items()
        )
    else:
        http.headers.update(h)
    return external_auth_pb2.CheckRequest(attributes=Attr(request=Attr.Request(http=http)))


def serving_port(lines: Iterator[str]) -> int:
    """The ext_authz port from a `mcp-authz serve` process's start-up line on stderr."""
    for line in lines:
        if "serving ext_authz on port" in line:
            return int(line.split("on port ")[1].split(";")[0])
    raise AssertionError("the server never said it was serving")
