"""The ext_proc edge: Envoy's ExternalProcessor service, one bidirectional stream per request.

Envoy's shipped config (deploy/envoy) sends only the request headers by default and asks for
nothing else; what each request's answer needs is decided here, on those headers, from the
plan ext_authz left in them (core/response_plan.py), and set with `mode_override`:

- no plan (nothing counted, no list): nothing more is sent for this request;
- counted only (a `tools/call`): the response headers, for their status; never the body;
- an answer that may list tools (`tools/list`, a GET event stream): the response headers and
  the body, STREAMED, so a long-lived event stream flows event by event.

Every failure to judge (a plan that does not parse, an answer the rewriter refuses) ends in an
ImmediateResponse: before the answer's headers went out it is a 502 carrying a JSON-RPC error;
after, Envoy resets the stream. Either way no unfiltered list reaches the agent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc

from authz._gen.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from authz._gen.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from authz._gen.envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from authz._gen.envoy.type.v3 import http_status_pb2
from authz.core.reply import DECISION_HEADER
from authz.core.response_plan import PLAN_HEADER, PlanError, ResponsePlan
from authz.core.response_side import ListRewriter, ResponseEvent, ResponseRefused, ResponseSide
from authz.edges.envoy import joined_headers
from authz.observe.audit import AuditLog
from authz.protocol.echo import json_line
from authz.protocol.errors import Refusal
from authz.protocol.request import HttpRequest

log = logging.getLogger("mcp_authz")

EXTERNAL_PROCESSOR_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
_Mode = processing_mode_pb2.ProcessingMode
# A rewritten body has another length; the answer goes out chunked instead.
_LENGTH = "content-length"


class ExternalProcessorServicer(external_processor_pb2_grpc.ExternalProcessorServicer):
    def __init__(self, side: ResponseSide, audit: AuditLog) -> None:
        self._side = side
        self._audit = audit

    async def Process(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        # Envoy ends the stream when the request is over; once `mode_override` has said what
        # it wants, it sends nothing more than that.
        exchange = _Exchange(self._side, self._audit)
        async for message in request_iterator:
            yield await exchange.answer(message)


class _Exchange:
    """One HTTP request's stream: its plan, then its answer's status and body."""

    def __init__(self, side: ResponseSide, audit: AuditLog) -> None:
        self._side = side
        self._audit = audit
        self._plan: ResponsePlan | None = None
        self._request: HttpRequest | None = None
        self._rewriter: ListRewriter | None = None

    async def answer(self, message: Any) -> Any:
        phase = message.WhichOneof("request")
        try:
            if phase == "request_headers":
                return self._request_headers(message.request_headers)
            if phase == "response_headers":
                return await self._response_headers(message.response_headers)
            if phase == "response_body":
                return await self._response_body(message.response_body)
        except (PlanError, ResponseRefused) as e:
            return self._withhold(str(e))
        except Exception as e:
            # A bug, or a store failing in a way it does not wrap: still an answer withheld
            # and an audit line, never a broken stream with no trace of why.
            log.exception("ext_proc could not process a %s message", phase)
            return self._withhold(f"internal error ({type(e).__name__})")
        # Anything else (trailers, or a phase the shipped config never sends) passes as is.
        response = pb.ProcessingResponse()
        getattr(response, phase).SetInParent()
        return response

    def _request_headers(self, message: Any) -> Any:
        headers = joined_headers(message.headers.headers)
        response = pb.ProcessingResponse()
        mutation = response.request_headers.response.header_mutation
        # The plan is for us only: the upstream never sees it.
        mutation.remove_headers.append(PLAN_HEADER)
        value = headers.get(PLAN_HEADER)
        if value is None:
            return response
        self._plan = plan = ResponsePlan.decode(value)
        self._request = HttpRequest(
            headers.get(":method", ""), headers.get(":path", ""), headers, b""
        )
        mode = response.mode_override
        mode.response_header_mode = _Mode.SEND
        if plan.filters:
            mode.response_body_mode = _Mode.STREAMED
            # A compressed answer could not be read, so none is asked for.
            mutation.remove_headers.append("accept-encoding")
        return response

    async def _response_headers(self, message: Any) -> Any:
        response = pb.ProcessingResponse()
        response.response_headers.SetInParent()
        plan = self._plan
        if plan is None or self._request is None:
            return response
        headers = joined_headers(message.headers.headers)
        status = _status(headers.get(":status", ""))
        self._record(await self._side.answered(plan, status))
        if plan.filters and not message.end_of_stream:
            self._rewriter = self._side.rewriter(
                plan,
                self._request,
                headers.get("content-type", ""),
                headers.get("content-encoding", ""),
            )
            if self._rewriter is not None:
                mutation = response.response_headers.response.header_mutation
                mutation.remove_headers.append(_LENGTH)
        return response

    async def _response_body(self, message: Any) -> Any:
        response = pb.ProcessingResponse()
        body = response.response_body.response
        if self._rewriter is None:
            response.response_body.SetInParent()
            return response
        end = message.end_of_stream
        out = await self._rewriter.feed(message.body, end=end)
        for event in self._rewriter.events:
            self._record(event)
        self._rewriter.events.clear()
        if out:
            body.body_mutation.body = out
        else:
            body.body_mutation.clear_body = True
        return response

    def _withhold(self, why: str) -> Any:
        decision = self._plan.decision_id if self._plan is not None else ""
        self._record(ResponseEvent("response_refused", decision, {"reason": why}))
        refusal = Refusal.RESPONSE_WITHHELD
        error = {
            "code": refusal.code,
            "message": f"Refused: the gateway cannot judge the server's answer ({why})",
            "data": {"reason": why, "decision_id": decision},
        }
        response = pb.ProcessingResponse()
        immediate = response.immediate_response
        # Any HTTP status may be sent; the enum only names the common ones.
        immediate.status.code = cast("http_status_pb2.StatusCode", refusal.http_status)
        immediate.body = json_line({"jsonrpc": "2.0", "id": None, "error": error}).encode()
        for key, value in (("content-type", "application/json"), (DECISION_HEADER, decision)):
            option = immediate.headers.set_headers.add()
            option.header.key = key
            option.header.raw_value = value.encode()
        return response

    def _record(self, event: ResponseEvent | None) -> None:
        if event is not None:
            self._audit.record_response(event)


def _status(value: str) -> int:
    """The answer's HTTP status, as Envoy wrote it; anything else is refused, not guessed."""
    if not (value.isascii() and value.isdigit() and len(value) == 3):
        raise ResponseRefused(f"an answer with the status {value[:16]!r}")
    return int(value)


def add_external_processor(server: grpc.aio.Server, side: ResponseSide, audit: AuditLog) -> None:
    """Serve ExternalProcessor on `server` (the ext_authz gRPC server, or one of its own)."""
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(  # type: ignore[no-untyped-call]
        ExternalProcessorServicer(side, audit), server
    )
