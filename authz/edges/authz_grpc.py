"""The gRPC edge: Envoy's Authorization service, its ExternalProcessor (edges/extproc.py) and
the standard health service."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz.core.decision import Decider
from authz.core.reply import UpstreamCredential, reply_for
from authz.core.response_side import ResponseSide
from authz.edges import envoy
from authz.edges.extproc import add_external_processor
from authz.edges.health import ReplicaHealth
from authz.observe.audit import AuditLog
from authz.observe.telemetry import Telemetry


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
        self._deciding: set[asyncio.Task[Any]] = set()

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # noqa: N802 - gRPC method name
        # grpc.aio cancels the handler when Envoy drops the call (its timeout passed, or its
        # client left). By then the store may have counted the call: the decision runs to its
        # end in a task of its own and writes its audit line anyway, as over HTTP, where
        # nothing cancels it. The handler waits on a future the decision itself completes,
        # which cancelling leaves alone: asyncio.shield would do the same with a loop turn
        # more per check.
        answer = _Answer()
        task = asyncio.ensure_future(self._check(request, context, answer))
        self._deciding.add(task)
        task.add_done_callback(self._deciding.discard)
        return await answer

    async def _check(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any], answer: _Answer
    ) -> None:
        try:
            answer.set_result(await self._decide(request, context))
        except BaseException as e:
            answer.set_exception(e)  # the handler raises it, for grpc.aio to report
            if not isinstance(e, Exception):
                raise  # cancelled (the loop stopping) or exiting: the task ends so too

    async def _decide(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        http = envoy.to_http_request(request)
        with self._telemetry.check(http.headers, context.invocation_metadata() or ()) as span:
            outcome = await self._decider.decide(http)
            latency = time.perf_counter() - started
            self._telemetry.finish(span, outcome, latency)
            self._audit.record(outcome, latency, span.get_span_context())
        return envoy.to_check_response(outcome, reply_for(outcome, self._upstream))


class _Answer(asyncio.Future[Any]):
    """A Check's response, set by its decision; cancelling the handler that waits on it does
    not cancel it (the handler is cancelled when the answer comes, and none is sent)."""

    def cancel(self, msg: Any = None) -> bool:
        return False


async def create_server(
    listen: str,
    decider: Decider,
    audit: AuditLog,
    telemetry: Telemetry | None = None,
    upstream: UpstreamCredential | None = None,
    *,
    health: ReplicaHealth | None = None,
    response_side: ResponseSide | None = None,
) -> tuple[grpc.aio.Server, int, ReplicaHealth]:
    """A started server bound to `listen` (port 0 picks a free one), the bound port and the
    health it serves: `health` (the runner's, NOT_SERVING until the stores answer), or one
    that says SERVING from the start. With a `response_side` it serves ext_proc's
    ExternalProcessor too."""
    telemetry = telemetry or Telemetry.off()
    health = health or await ReplicaHealth.start(
        judging=True, on_change=telemetry.metrics.record_serving
    )
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(  # type: ignore[no-untyped-call]
        AuthorizationServicer(decider, audit, telemetry, upstream), server
    )
    if response_side is not None:
        add_external_processor(server, response_side, audit)
    return await _start(server, listen, health)


async def create_extproc_server(
    listen: str, response_side: ResponseSide, audit: AuditLog, health: ReplicaHealth
) -> tuple[grpc.aio.Server, int]:
    """ExternalProcessor alone, on a port of its own: with `--transport http`, where ext_authz
    is an HTTP server and ext_proc can only be gRPC. It serves the replica's health too."""
    server = grpc.aio.server()
    add_external_processor(server, response_side, audit)
    server, port, _ = await _start(server, listen, health)
    return server, port


async def _start(
    server: grpc.aio.Server, listen: str, health: ReplicaHealth
) -> tuple[grpc.aio.Server, int, ReplicaHealth]:
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    return server, port, health
