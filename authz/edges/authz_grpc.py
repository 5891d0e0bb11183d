"""The gRPC edge: Envoy's Authorization service and the standard health service."""

from __future__ import annotations

import time
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz.core.decision import Decider
from authz.core.reply import UpstreamCredential, reply_for
from authz.core.response_side import ResponseSide
from authz.edges import envoy
from authz.edges.extproc import EXTERNAL_PROCESSOR_SERVICE, add_external_processor
from authz.observe.audit import AuditLog
from authz.observe.telemetry import Telemetry

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(
        self,
        decider: Decider,
        audit: AuditLog,
        telemetry: Telemetry,
        upstream: UpstreamCredential | None = None,
    ) -> None:
        self._decider = decider
        self._audit = audit
        self._telemetry = telemetry
        self._upstream = upstream

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # noqa: N802 - gRPC method name
        started = time.perf_counter()
        http = envoy.to_http_request(request)
        with self._telemetry.check(http.headers, context.invocation_metadata() or ()) as span:
            outcome = await self._decider.decide(http)
            latency = time.perf_counter() - started
            self._telemetry.finish(span, outcome, latency)
            self._audit.record(outcome, latency, span.get_span_context())
        return envoy.to_check_response(outcome, reply_for(outcome, self._upstream))


async def create_server(
    listen: str,
    decider: Decider,
    audit: AuditLog,
    telemetry: Telemetry | None = None,
    upstream: UpstreamCredential | None = None,
    *,
    serving: bool = True,
    response_side: ResponseSide | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A started server bound to `listen` (port 0 picks a free one) and the bound port;
    with a `response_side`, it serves ext_proc's ExternalProcessor too.

    With `serving=False` health says NOT_SERVING until `mark_serving`: the runner first
    makes sure the stores answer."""
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(  # type: ignore[no-untyped-call]
        AuthorizationServicer(decider, audit, telemetry or Telemetry.off(), upstream), server
    )
    services: tuple[str, ...] = ("", AUTHORIZATION_SERVICE)
    if response_side is not None:
        add_external_processor(server, response_side, audit)
        services += (EXTERNAL_PROCESSOR_SERVICE,)
    return await _start(server, listen, services, serving=serving)


async def create_extproc_server(
    listen: str, response_side: ResponseSide, audit: AuditLog, *, serving: bool = True
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """ExternalProcessor alone, on its own port: with `--transport http`, where ext_authz is
    an HTTP server and ext_proc can only be gRPC."""
    server = grpc.aio.server()
    add_external_processor(server, response_side, audit)
    return await _start(server, listen, ("", EXTERNAL_PROCESSOR_SERVICE), serving=serving)


async def _start(
    server: grpc.aio.Server, listen: str, services: tuple[str, ...], *, serving: bool
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in services:
        await health_servicer.set(service, status)
    return server, port, health_servicer


async def mark_serving(
    health_servicer: health.aio.HealthServicer,
    services: tuple[str, ...] = ("", AUTHORIZATION_SERVICE),
) -> None:
    for service in services:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
