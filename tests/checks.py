"""Envoy CheckRequests as Envoy builds them, for tests that drive the service directly."""

from __future__ import annotations

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
