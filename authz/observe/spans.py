"""The decision spans' light path: the OTLP spans the SDK would send for a Check and its
counter store call, at a fraction of its cost.

Per Check, the hot path draws a span id and a start and end time and keeps the `Outcome`; one
bounded queue hands these records to one export thread, which writes the OTLP
`ExportTraceServiceRequest` bytes straight from them (`Encoder`, below) and sends them through
the SDK's own OTLP exporters (their endpoint, headers, TLS, compression, timeout and retries,
from the OTEL_* variables). The SDK's span objects, its per-attribute validation and
its generic encoder cost ~1.2M instructions per check (docs/performance.md, "What tracing
costs"), which is why these two span kinds bypass them; the rare admin spans stay on the SDK.
"""

from __future__ import annotations

import logging
import struct
import threading
import traceback
from collections import deque
from collections.abc import Sequence
from contextvars import ContextVar
from random import getrandbits
from time import time_ns
from typing import Any, Final, Protocol

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from authz.core.outcome import Outcome, ToolFacts
from authz.observe.metrics import Metrics

log = logging.getLogger("mcp_authz.telemetry")

# Named as the gRPC semantic conventions name a server span: service/method.
CHECK_SPAN: Final = "envoy.service.auth.v3.Authorization/Check"
STORE_SPAN: Final = "counter store hit"

SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
# The batch processor's defaults (OTEL_BSP_*), in decisions rather than spans.
DEFAULT_QUEUE: Final = 2048
DEFAULT_BATCH: Final = 512
DEFAULT_DELAY: Final = 5.0


class Failure:
    """An exception that ended a span: its status and its `exception` event, as the SDK
    records them (formatted at once: the traceback grows as the exception travels on)."""

    __slots__ = ("attributes", "description", "time")

    def __init__(self, error: BaseException) -> None:
        self.time = time_ns()
        kind = type(error)
        module = kind.__module__
        qualname = kind.__qualname__
        self.description = f"{kind.__name__}: {error}"
        self.attributes: dict[str, AttributeValue] = {
            "exception.type": f"{module}.{qualname}" if module != "builtins" else qualname,
            "exception.message": str(error),
            "exception.stacktrace": "".join(traceback.format_exception(error)),
            "exception.escaped": "True",
        }


# A store's own span attributes, as (name, value) pairs: hashable, to key encoded blocks.
StoreAttributes = tuple[tuple[str, AttributeValue], ...]


class StoreCall:
    """The counter store's part of one Check: a CLIENT child span."""

    __slots__ = ("allowed", "backend", "end", "failure", "keys", "start")

    def __init__(self, backend: StoreAttributes, keys: int) -> None:
        # The store's own attributes, shared by its calls.
        self.backend = backend
        self.keys = keys
        self.start = time_ns()
        self.end = 0
        self.allowed: bool | None = None
        self.failure: Failure | None = None


class DecisionSpan:
    """One sampled Check: what its SERVER span needs, filled in as the Check goes."""

    __slots__ = (
        "end",
        "failure",
        "outcome",
        "parent_id",
        "span_id",
        "start",
        "stores",
        "trace_id",
        "trace_state",
    )

    def __init__(self, trace_id: int, parent_id: int, trace_state: TraceState | None) -> None:
        self.trace_id = trace_id
        self.span_id = getrandbits(64)
        # 0 for a trace this span starts; else the remote parent's span id.
        self.parent_id = parent_id
        self.trace_state = trace_state
        self.start = time_ns()
        self.end = 0
        self.outcome: Outcome | None = None
        self.failure: Failure | None = None
        self.stores: list[StoreCall] = []

    def get_span_context(self) -> SpanContext:
        return SpanContext(
            self.trace_id, self.span_id, False, SAMPLED, self.trace_state or TraceState()
        )


# The sampled Check the current task works for; the store's calls become its children.
CURRENT: ContextVar[DecisionSpan | None] = ContextVar("mcp_authz_decision_span", default=None)


class Transport(Protocol):
    """Sends one serialized OTLP `ExportTraceServiceRequest`; False when the collector did
    not take it (after the exporter's retries)."""

    def send(self, request: bytes) -> bool: ...

    def shutdown(self) -> None: ...


class GrpcTransport(GrpcSpanExporter):
    """The SDK's OTLP/gRPC span exporter, handed a built request instead of SDK spans: its
    channel, retries and deadline, through the mixin's own translate/count hooks."""

    def _translate_data(self, data: Any) -> ExportTraceServiceRequest:
        request: ExportTraceServiceRequest = data
        return request

    def _count_data(self, data: Any) -> int:
        return sum(len(s.spans) for r in data.resource_spans for s in r.scope_spans)

    def send(self, request: bytes) -> bool:
        # The stub serializes a message: upb parses ours back, in C, once per batch.
        message = ExportTraceServiceRequest.FromString(request)
        return self._export(message) is SpanExportResult.SUCCESS  # type: ignore[arg-type]


class HttpTransport(HttpSpanExporter):
    """The SDK's OTLP/HTTP span exporter's client (session, headers, compression, retries),
    handed our serialized request. `_client` and, for gRPC, `_export` are the SDK's private
    parts: tests/integration/test_otel_export.py sends through both against a real receiver,
    so an SDK release that moves them fails there rather than in a pod."""

    def send(self, request: bytes) -> bool:
        return bool(self._client.export(request).success)


class SpanQueue:
    """Finished decisions, exported in batches on one thread; bounded, and what it drops or
    the collector refuses is counted (`mcp_authz.telemetry.spans_dropped`)."""

    def __init__(
        self,
        transport: Transport,
        metrics: Metrics,
        resource: Resource,
        scope: InstrumentationScope,
        *,
        max_queue: int = DEFAULT_QUEUE,
        batch: int = DEFAULT_BATCH,
        delay: float = DEFAULT_DELAY,
    ) -> None:
        self._transport = transport
        self._metrics = metrics
        self._max_queue = max_queue
        self._batch = min(batch, max_queue)
        self._delay = delay
        self._queue: deque[DecisionSpan] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._flushing = 0
        # Spans of the batch on its way (under `_changed`), and whether shutdown gave up on it.
        self._pending = 0
        self._abandoned = False
        self.failed = 0
        self._encoder = Encoder(resource, scope)
        self._exporter = threading.Thread(target=self._run, name="mcp-authz-spans", daemon=True)
        self._exporter.start()

    def put(self, span: DecisionSpan) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue:
            self._metrics.record_spans_dropped(1 + len(span.stores), "queue_full")
            return
        queue.append(span)
        if len(queue) == self._batch:
            with self._changed:
                self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        """Export everything queued now; False if that took longer than `timeout` seconds."""
        with self._changed:
            self._flushing += 1
            self._changed.notify_all()
            try:
                return self._changed.wait_for(
                    lambda: not self._queue and not self._pending, timeout
                )
            finally:
                self._flushing -= 1

    def close(self, seconds: float) -> None:
        """Export what is queued for up to `seconds`, then stop; the rest is dropped."""
        failed_before = self.failed
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._exporter.join(seconds)
        with self._changed:
            # An export the deadline cut short may still be unwinding on our thread.
            self._abandoned = True
            lost = self._pending + sum(1 + len(s.stores) for s in self._queue)
            self._queue.clear()
        # Ends a pending export (the gRPC exporter closes its channel, stopping retries).
        self._transport.shutdown()
        if lost:
            self._metrics.record_spans_dropped(lost, "shutdown")
        lost += self.failed - failed_before
        if lost:
            log.warning("shutdown: dropped %d spans the collector had not taken in time", lost)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(self._due, self._delay)
                stopping = self._stopping
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                self._pending = sum(1 + len(s.stores) for s in batch)
            if batch:
                self._export(batch)
            with self._changed:
                self._pending = 0
                self._changed.notify_all()
                if stopping and not self._queue:
                    return

    def _due(self) -> bool:
        queued = len(self._queue)
        return self._stopping or queued >= self._batch or bool(self._flushing and queued)

    def _export(self, batch: Sequence[DecisionSpan]) -> None:
        spans = sum(1 + len(s.stores) for s in batch)
        try:
            sent = self._transport.send(self._encoder.request(batch))
        except Exception:
            log.exception("exporting %d spans failed", spans)
            sent = False
        if sent:
            return
        with self._changed:
            if self._abandoned:
                return  # shutdown counted these already
            self.failed += spans
        self._metrics.record_spans_dropped(spans, "export_failed")


class Encoder:
    """Decision records to the bytes of an OTLP `ExportTraceServiceRequest`: the spans the SDK's
    encoder would write for them.

    Written as protobuf wire format by hand rather than through upb messages: building a
    message per attribute, then copying each into its parent (upb copies by serializing), cost
    ~300k instructions per check; the export thread's whole work is now ~120k, the attribute
    pairs that repeat from check to check (decision, rule, tool, policy version, ...) encoded
    once. Only what these spans use is written; tests parse it back with upb.
    """

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        # The SDK encodes the resource and the scope, once: one empty span carries both.
        empty = ReadableSpan(
            "", SpanContext(1, 1, False), resource=resource, instrumentation_scope=scope
        )
        (template,) = encode_spans([empty]).resource_spans
        scope_spans = template.scope_spans[0]
        self._scope = _field(1, scope_spans.scope.SerializeToString()) + _string(
            3, scope_spans.schema_url
        )
        self._resource = _field(1, template.resource.SerializeToString())
        self._resource_schema = _string(3, template.schema_url)
        self._pairs: dict[str, dict[AttributeValue, tuple[type, bytes]]] = {}
        self._kept = 0
        self._store_blocks: dict[tuple[StoreAttributes, int, bool | None], bytes] = {}

    def request(self, batch: Sequence[DecisionSpan]) -> bytes:
        spans = b"".join([span for decision in batch for span in self._spans(decision)])
        scope_spans = _field(2, self._scope + spans)
        return _field(1, self._resource + scope_spans + self._resource_schema)

    def _spans(self, decision: DecisionSpan) -> list[bytes]:
        trace_id = _field(1, decision.trace_id.to_bytes(16, "big"))
        span_id = decision.span_id.to_bytes(8, "big")
        state = decision.trace_state
        trace_state = _string(3, state.to_header()) if state else b""
        outcome = decision.outcome
        message: str | None = None
        if decision.failure is not None:
            message = decision.failure.description
        elif outcome is not None and not outcome.allowed:
            message = outcome.reason
        check = [
            trace_id,
            _field(2, span_id),
            trace_state,
            _field(4, decision.parent_id.to_bytes(8, "big")) if decision.parent_id else b"",
            _CHECK_NAME,
            _SERVER,
            _FIXED64_7 + _U64.pack(decision.start),
            _FIXED64_8 + _U64.pack(decision.end),
            self._attributes(check_attributes(outcome)) if outcome is not None else b"",
            self._event(decision.failure),
            _status(message),
            _REMOTE_FLAGS if decision.parent_id else _LOCAL_FLAGS,
        ]
        spans = [_field(2, b"".join(check))]
        parent = _field(4, span_id)
        for call in decision.stores:
            store = [
                trace_id,
                _field(2, getrandbits(64).to_bytes(8, "big")),
                trace_state,
                parent,
                _STORE_NAME,
                _CLIENT,
                _FIXED64_7 + _U64.pack(call.start),
                _FIXED64_8 + _U64.pack(call.end),
                self._store_attributes(call),
                self._event(call.failure),
                _status(None if call.failure is None else call.failure.description),
                _LOCAL_FLAGS,
            ]
            spans.append(_field(2, b"".join(store)))
        return spans

    def _attributes(self, attributes: dict[str, AttributeValue], number: int = 9) -> bytes:
        # Keyed by name, then value, with the value's type kept: True == 1 == 1.0.
        pairs = self._pairs
        if self._kept > _PAIRS_KEPT:
            pairs.clear()  # the ids unique to one check would otherwise fill it
            self._kept = 0
        out = []
        for key, value in attributes.items():
            values = pairs.get(key)
            if values is None:
                values = pairs[key] = {}
            known = values.get(value)
            if known is None or known[0] is not type(value):
                encoded = _field(number, _string(1, key) + _field(2, _value(value)))
                known = values[value] = (type(value), encoded)
                self._kept += 1
            out.append(known[1])
        return b"".join(out)

    def _store_attributes(self, call: StoreCall) -> bytes:
        # A store's calls differ only in their key count and answer: a handful of blocks.
        known = (call.backend, call.keys, call.allowed)
        block = self._store_blocks.get(known)
        if block is None:
            attributes = dict(call.backend)
            attributes["mcp_authz.store.keys"] = call.keys
            if call.allowed is not None:
                attributes["mcp_authz.store.allowed"] = call.allowed
            block = self._store_blocks[known] = self._attributes(attributes)
        return block

    def _event(self, failure: Failure | None) -> bytes:
        if failure is None:
            return b""
        event = _FIXED64_1 + _U64.pack(failure.time) + _string(2, "exception")
        return _field(11, event + self._attributes(failure.attributes, 3))


_U64: Final = struct.Struct("<Q")
_F64: Final = struct.Struct("<d")
_PAIRS_KEPT: Final = 4096
_ONE_BYTE: Final = tuple(bytes((n,)) for n in range(0x80))


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: bytes, a string, a message, one element of a repeated one."""
    return _LENGTH_TAGS[number] + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode()) if text else b""


def _value(value: AttributeValue) -> bytes:
    """An AnyValue; our attributes are scalars, and bool is tested before the int it is."""
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, bool):
        return _tag(2, 0) + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _tag(3, 0) + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)
    if isinstance(value, float):
        return _tag(4, 1) + _F64.pack(value)
    raise TypeError(f"span attribute value {value!r}: only scalars are encoded")


def _status(message: str | None) -> bytes:
    """Unset without a message; else an error saying it."""
    if message is None:
        return b""
    return _field(15, _string(2, message) + _tag(3, 0) + _varint(Status.STATUS_CODE_ERROR))


# The length-delimited tags of the field numbers these messages use (1-15).
_LENGTH_TAGS: Final = tuple(_tag(number, 2) for number in range(16))
_FIXED64_1: Final = _tag(1, 1)
_FIXED64_7: Final = _tag(7, 1)
_FIXED64_8: Final = _tag(8, 1)
_CHECK_NAME: Final = _string(5, CHECK_SPAN)
_STORE_NAME: Final = _string(5, STORE_SPAN)
_SERVER: Final = _tag(6, 0) + _varint(PbSpan.SPAN_KIND_SERVER)
_CLIENT: Final = _tag(6, 0) + _varint(PbSpan.SPAN_KIND_CLIENT)
# Span.flags (fixed32): whether the parent is remote, as the SDK's encoder says it.
_HAS_IS_REMOTE: Final = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_LOCAL_FLAGS: Final = _tag(16, 5) + struct.pack("<I", _HAS_IS_REMOTE)
_REMOTE_FLAGS: Final = _tag(16, 5) + struct.pack(
    "<I",
    _HAS_IS_REMOTE | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK,
)


def check_attributes(outcome: Outcome) -> dict[str, AttributeValue]:
    """Semantic-convention attributes of the call judged, then our own."""
    attributes: dict[str, AttributeValue] = {}
    call = outcome.subject or next(iter(outcome.calls), None)
    if call is not None and call.method is not None:
        attributes["mcp.method.name"] = call.method
    if call is not None and call.tool is not None:
        attributes["gen_ai.tool.name"] = call.tool
        attributes["gen_ai.operation.name"] = "execute_tool"
    request_id = call.id if call is not None else next(iter(outcome.request_ids), None)
    if request_id is not None:
        attributes["jsonrpc.request.id"] = str(request_id)
    if outcome.caller is not None:
        attributes["enduser.id"] = outcome.caller.identity
        if outcome.caller.session is not None:
            attributes["mcp.session.id"] = outcome.caller.session
    if outcome.refusal is not None:
        attributes["error.type"] = outcome.refusal.label
    return attributes | _decision_attributes(outcome)


def _decision_attributes(outcome: Outcome) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "mcp_authz.decision": outcome.label,
        "mcp_authz.decision_id": outcome.decision_id,
        "mcp_authz.rule": outcome.rule,
        "mcp_authz.reason": outcome.reason,
        "mcp_authz.policy_version": outcome.policy_version,
        "mcp_authz.dry_run": outcome.would_deny is not None,
        "mcp_authz.fail_open": outcome.fail_open,
        "mcp_authz.calls": len(outcome.calls),
    }
    if outcome.would_deny is not None:
        attributes["mcp_authz.would_deny"] = outcome.would_deny
    if outcome.grant is not None:
        attributes["mcp_authz.grant"] = outcome.grant
    if outcome.limits:
        attributes["mcp_authz.remaining"] = min(s.remaining for s in outcome.limits)
    if outcome.retry_after is not None:
        attributes["mcp_authz.retry_after"] = outcome.retry_after
    if outcome.approval is not None:
        attributes["mcp_authz.approval.id"] = outcome.approval.id
        attributes["mcp_authz.approval.status"] = outcome.approval.status.value
    if outcome.tool is not None:
        attributes |= _tool_attributes(outcome.tool)
    return attributes


def _tool_attributes(tool: ToolFacts) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "mcp_authz.tool.risk": tool.risk,
        "mcp_authz.tool.upstream": tool.upstream,
    }
    if tool.open_world is not None:
        attributes["mcp_authz.tool.open_world"] = tool.open_world
    if tool.fingerprint is not None:
        attributes["mcp_authz.tool.fingerprint"] = tool.fingerprint
    if tool.offered is not None:
        attributes["mcp_authz.tool.offered_fingerprint"] = tool.offered
    if tool.argument_path is not None:
        attributes["mcp_authz.tool.argument_path"] = tool.argument_path
    return attributes
