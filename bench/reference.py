"""Do-nothing ext_authz servers: the floor each transport sets before any policy work.

    .venv/bin/python bench/reference.py grpc|http PORT

`grpc`: a grpc.aio Authorization servicer that parses the JSON body and allows.
`http`: an HTTP/1.1 server on uvloop (a raw asyncio protocol) that reads the request, parses
the JSON body and answers 200. These are the "before" measurements the performance issue
quotes (~3.4k req/s and ~380 us CPU per check over gRPC, ~9.2k req/s and ~25 us over HTTP);
bench/run.py runs them as the `noop-grpc` and `noop-http` scenarios.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz._gen.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz._gen.google.rpc import code_pb2, status_pb2


class Allow(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
        json.loads(request.attributes.request.http.raw_body)
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))


async def serve_grpc(port: int) -> None:
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Allow(), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


class AllowHttp(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if body:
                json.loads(body)
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


async def serve_http(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AllowHttp, "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "grpc":
        # The standard loop: the reference. mcp-authz runs grpc.aio on uvloop, where
        # this server costs 410k instructions a check instead of 527k (docs/performance.md).
        asyncio.run(serve_grpc(port))
    else:
        uvloop.run(serve_http(port))


if __name__ == "__main__":
    main()
