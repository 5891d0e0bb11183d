"""The gRPC edge's own work per check, in process: bench/inproc.py with the Authorization
servicer in place of the HTTP transport's check.

    .venv/bin/python bench/inproc_grpc.py [bench/inproc.py's options]

Each of bench/inproc.py's requests goes in as the serialized CheckRequest Envoy would send
(parsed per check, as grpc.aio does), through `AuthorizationServicer.Check` (the request read,
the decision, the audit line, the CheckResponse), and out serialized, with a context that
carries no invocation metadata. grpc.aio's own cost (bench/service_cg.py measures the whole
server) is left out, so A against B shows what our code on the gRPC edge costs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inproc  # bench/inproc.py

from authz._gen.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from authz.core.decision import Decider
from authz.core.reply import UpstreamCredential
from authz.edges.authz_grpc import AuthorizationServicer
from authz.observe.audit import AuditLog
from authz.observe.telemetry import Telemetry
from authz.protocol.identity import IdentitySourceKind
from authz.protocol.request import HttpRequest

Attr = attribute_context_pb2.AttributeContext


class Context:
    """What the servicer asks of grpc.aio's context."""

    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()


class GrpcCheck:
    """HttpCheck's shape (bench/inproc.py builds it), the servicer inside."""

    def __init__(
        self,
        decider: Decider,
        audit: AuditLog,
        telemetry: Telemetry,
        identity_source: IdentitySourceKind,
        upstream: UpstreamCredential | None = None,
    ) -> None:
        self._servicer = AuthorizationServicer(decider, audit, telemetry, upstream)
        self._context = Context()
        self._wire: dict[str, bytes] = {}

    async def __call__(self, request: HttpRequest) -> bytes:
        check = external_auth_pb2.CheckRequest.FromString(self._encoded(request))
        response = await self._servicer.Check(check, self._context)  # type: ignore[arg-type]
        return bytes(response.SerializeToString())

    def _encoded(self, request: HttpRequest) -> bytes:
        key = request.headers["x-request-id"] + request.headers.get("traceparent", "")
        wire = self._wire.get(key)
        if wire is None:
            headers = {
                ":authority": "127.0.0.1:10000", ":method": request.method,
                ":path": request.path, ":scheme": "http", **request.headers,
            }  # fmt: skip
            http = Attr.HttpRequest(
                id="1", method=request.method, path=request.path, host="127.0.0.1:10000",
                scheme="http", protocol="HTTP/1.1", size=len(request.body),
                raw_body=request.body, headers=headers,
            )  # fmt: skip
            attributes = Attr(request=Attr.Request(http=http))
            attributes.source.address.socket_address.address = "127.0.0.1"
            attributes.source.address.socket_address.port_value = 50000
            check = external_auth_pb2.CheckRequest(attributes=attributes)
            wire = self._wire[key] = check.SerializeToString()
        return wire


if __name__ == "__main__":
    inproc.HttpCheck = GrpcCheck  # type: ignore[misc,assignment]
    sys.exit(inproc.main())
