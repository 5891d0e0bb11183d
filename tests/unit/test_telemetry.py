"""Spans of a Check through the real servicer, read back from the OTLP bytes the span queue
hands its transport (parsed with opentelemetry-proto's messages)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from authz._gen.envoy.service.auth.v3 import attribute_context_pb2
from authz.core.decision import Decider, FailMode
from authz.edges.authz_grpc import AuthorizationServicer
from authz.limits.base import Hit, HitResult, StoreUnavailable
from authz.limits.memory import MemoryStore
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.observe.metrics import Metrics, PolicyTools
from authz.observe.spans import CHECK_SPAN, STORE_SPAN, Encoder, SpanQueue
from authz.observe.telemetry import (
    ExportProtocol,
    OtelSettings,
    Telemetry,
    _DropCountingProcessor,
    remote_parent,
)
from authz.policy.load import parse_policy
from authz.protocol.identity import FromHeader
from tests.checks import check_request
from tests.integration.otlp_receiver import attributes_of

Attr = attribute_context_pb2.AttributeContext
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ENVOY_PARENT = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {
        "echo": {"limits": [{"counter": "echo", "window": "minute", "max": 1}]},
        "shadow": {"action": "deny", "reason": "not yet", "mode": "dry_run"},
        "wire": {"action": "approve"},
    },
}


class Context:
    """The part of a gRPC servicer context the servicer reads."""

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]] = ()) -> None:
        self._metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata


class DownStore:
    async def hit(self, hits: Sequence[Hit]) -> HitResult:
        raise StoreUnavailable("redis: connection refused")

    async def close(self) -> None:
        return None


def call(tool: str, rid: int = 7, **arguments: Any) -> bytes:
    params = {"name": tool, "arguments": arguments}
    return json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
    ).encode()


SERVER = PbSpan.SPAN_KIND_SERVER
CLIENT = PbSpan.SPAN_KIND_CLIENT
UNSET = Status.STATUS_CODE_UNSET
ERROR = Status.STATUS_CODE_ERROR
REMOTE_PARENT = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


@dataclass(frozen=True)
class Got:
    """One span as a collector receives it."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    trace_state: str
    kind: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    events: list[str]
    flags: int
    resource: dict[str, Any]


@dataclass
class Capture:
    """A transport keeping what it is sent, or holding the export thread until released."""

    spans: list[Got] = field(default_factory=list)
    accept: bool = True
    hold: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)
    closed: bool = False

    def send(self, request: bytes) -> bool:
        self.entered.set()
        if self.hold is not None:
            self.hold.wait()
        parsed = ExportTraceServiceRequest.FromString(request)
        self.spans += [
            Got(
                span.name,
                span.trace_id.hex(),
                span.span_id.hex(),
                span.parent_span_id.hex(),
                span.trace_state,
                span.kind,
                span.status.code,
                span.status.message,
                attributes_of(span.attributes),
                [e.name for e in span.events],
                span.flags,
                attributes_of(rs.resource.attributes),
            )
            for rs in parsed.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        return self.accept

    def shutdown(self) -> None:
        self.closed = True
        if self.hold is not None:
            self.hold.set()


def span_queue(transport: Capture, metrics: Metrics, **sizes: Any) -> SpanQueue:
    resource = Resource({"service.name": "test"})
    return SpanQueue(transport, metrics, resource, InstrumentationScope("test"), **sizes)


@dataclass
class Harness:
    transport: Capture
    queue: SpanQueue
    reader: InMemoryMetricReader
    audit: io.StringIO
    servicer: AuthorizationServicer

    async def check(
        self, body: bytes, metadata: Sequence[tuple[str, str]] = (), **headers: str
    ) -> Any:
        return await self.servicer.Check(
            check_request(body, **{"x-agent-id": "agent-1", **headers}), Context(metadata)
        )

    def finished(self) -> list[Got]:
        assert self.queue.flush(10)
        return self.transport.spans

    def only(self, name: str) -> Got:
        (span,) = [s for s in self.finished() if s.name == name]
        return span

    def points(self, metric: str) -> dict[frozenset[tuple[str, Any]], int | float]:
        """Label set to value (sums) or to count (histograms)."""
        return points(self.reader, metric)

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.getvalue().splitlines()]


def points(
    reader: InMemoryMetricReader, metric: str
) -> dict[frozenset[tuple[str, Any]], int | float]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        frozenset((point.attributes or {}).items()): (
            point.value if isinstance(point, NumberDataPoint) else point.count
        )
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for m in scope.metrics
        if m.name == metric
        for point in m.data.data_points
    }


def harness(
    store: Any = None,
    fail_mode: FailMode = FailMode.CLOSED,
    *,
    tracing: bool = True,
    sampler: Sampler = DEFAULT_ON,
) -> Harness:
    policy = parse_policy(json.dumps(POLICY).encode(), "policy.json")
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider([reader]).get_meter("test"), PolicyTools(lambda: policy))
    transport = Capture()
    queue = span_queue(transport, metrics)
    telemetry = Telemetry(None, metrics, [queue.close], queue if tracing else None, sampler)
    chosen = telemetry.observe(store or MemoryStore(), "memory")
    decider = Decider(lambda: policy, FromHeader("x-agent-id"), chosen, fail_mode)
    audit = io.StringIO()
    servicer = AuthorizationServicer(decider, AuditLog(audit, ArgumentAudit(b"k" * 32)), telemetry)
    return Harness(transport, queue, reader, audit, servicer)


async def test_allowed_call_is_a_server_span_with_semantic_attributes_and_a_store_child() -> None:
    h = harness()
    await h.check(call("echo"), traceparent=TRACEPARENT, mcp_session_id="s-1")
    span = h.only(CHECK_SPAN)
    assert span.kind == SERVER
    assert span.status_code == UNSET
    attributes = span.attributes
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == "echo"
    assert attributes["jsonrpc.request.id"] == "7"
    assert attributes["mcp.session.id"] == "s-1"
    assert attributes["enduser.id"] == "agent-1"
    assert attributes["mcp_authz.decision"] == "allowed"
    assert attributes["mcp_authz.rule"] == "/tools/echo"
    assert str(attributes["mcp_authz.policy_version"]).startswith("sha256:")
    assert attributes["mcp_authz.dry_run"] is False
    assert attributes["mcp_authz.remaining"] == 0
    assert span.resource == {"service.name": "test"}
    store = h.only(STORE_SPAN)
    assert store.kind == CLIENT
    assert (store.trace_id, store.parent_span_id) == (span.trace_id, span.span_id)
    assert store.attributes == {
        "mcp_authz.store.backend": "memory",
        "mcp_authz.store.keys": 1,
        "mcp_authz.store.allowed": True,
    }
    assert store.status_code == UNSET


async def test_parent_is_the_request_traceparent_and_the_audit_line_names_the_span() -> None:
    h = harness()
    await h.check(call("echo"), traceparent=TRACEPARENT, tracestate="vendor=abc")
    span = h.only(CHECK_SPAN)
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert span.flags & REMOTE_PARENT
    assert span.trace_state == "vendor=abc"
    (line,) = h.audit_lines()
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, span.span_id)


async def test_the_ext_authz_call_context_wins_over_the_request_headers() -> None:
    # A tracing Envoy sends its ext_authz span in the gRPC metadata; ours must nest under it.
    h = harness()
    await h.check(call("echo"), [("traceparent", ENVOY_PARENT)], traceparent=TRACEPARENT)
    assert h.only(CHECK_SPAN).parent_span_id == "00f067aa0ba902b7"


async def test_without_a_traceparent_the_span_starts_a_trace() -> None:
    h = harness()
    await h.check(call("echo"), traceparent="00-garbage")
    span = h.only(CHECK_SPAN)
    assert span.parent_span_id == ""
    assert not span.flags & REMOTE_PARENT
    assert h.audit_lines()[0]["trace_id"] == span.trace_id


async def test_denial_sets_error_status_with_the_reason() -> None:
    h = harness()
    await h.check(call("transfer"))
    span = h.only(CHECK_SPAN)
    assert span.status_code == ERROR
    assert span.status_message == span.attributes["mcp_authz.reason"]
    assert "not in the policy" in span.status_message
    attributes = span.attributes
    assert (attributes["mcp_authz.decision"], attributes["error.type"]) == ("denied", "denied")
    assert attributes["mcp_authz.rule"] == "(default deny)"
    assert not [s for s in h.finished() if s.name == STORE_SPAN]


async def test_rate_limit_carries_retry_after_and_no_budget_left() -> None:
    h = harness()
    await h.check(call("echo", rid=1))
    await h.check(call("echo", rid=2))
    limited = [s for s in h.finished() if s.name == CHECK_SPAN][-1]
    attributes = limited.attributes
    assert attributes["mcp_authz.decision"] == "rate_limited"
    assert 0 < float(attributes["mcp_authz.retry_after"]) <= 60  # type: ignore[arg-type]
    assert attributes["mcp_authz.remaining"] == 0
    assert limited.status_code == ERROR


async def test_malformed_body_is_a_span_without_call_attributes() -> None:
    h = harness()
    await h.check(b'{"jsonrpc": "2.0", "id": 3, "method": ')
    span = h.only(CHECK_SPAN)
    attributes = span.attributes
    assert attributes["mcp_authz.decision"] == "malformed"
    assert attributes["error.type"] == "malformed"
    assert "mcp.method.name" not in attributes
    assert "gen_ai.tool.name" not in attributes
    assert span.status_code == ERROR


async def test_store_down_fail_closed_marks_both_spans_and_counts_the_activation() -> None:
    h = harness(DownStore(), FailMode.CLOSED)
    await h.check(call("echo"))
    store = h.only(STORE_SPAN)
    assert store.status_code == ERROR
    assert store.events == ["exception"]
    assert store.status_message == "StoreUnavailable: redis: connection refused"
    check = h.only(CHECK_SPAN)
    assert check.attributes["mcp_authz.decision"] == "limits_unavailable"
    assert h.points("mcp_authz.fail_mode.activations") == {
        frozenset({("fail_mode", "closed")}): 1,
        frozenset({("fail_mode", "open")}): 0,
    }
    assert h.points("mcp_authz.store.errors") == {frozenset({("store", "memory")}): 1}


async def test_store_down_fail_open_allows_and_says_so() -> None:
    h = harness(DownStore(), FailMode.OPEN)
    await h.check(call("echo"))
    check = h.only(CHECK_SPAN)
    attributes = check.attributes
    assert (attributes["mcp_authz.decision"], attributes["mcp_authz.fail_open"]) == (
        "allowed",
        True,
    )
    assert check.status_code == UNSET
    assert h.points("mcp_authz.fail_mode.activations") == {
        frozenset({("fail_mode", "open")}): 1,
        frozenset({("fail_mode", "closed")}): 0,
    }


async def test_dry_run_rule_is_flagged_on_an_allowed_span() -> None:
    h = harness()
    await h.check(call("shadow"))
    attributes = h.only(CHECK_SPAN).attributes
    assert attributes["mcp_authz.decision"] == "allowed"
    assert attributes["mcp_authz.dry_run"] is True
    assert "not yet" in str(attributes["mcp_authz.would_deny"])


async def test_a_call_waiting_for_approval_names_the_approval() -> None:
    h = harness()
    await h.check(call("wire", amount=5))
    span = h.only(CHECK_SPAN)
    attributes = span.attributes
    assert attributes["mcp_authz.decision"] == "approval_required"
    assert attributes["mcp_authz.approval.status"] == "pending"
    assert attributes["mcp_authz.approval.id"] == h.audit_lines()[0]["approval"]["id"]
    assert span.status_code == ERROR


# Without a catalogue no tool has a class.
UNCLASSED = ("risk", "unknown")


async def test_decisions_metric_buckets_unknown_tools() -> None:
    h = harness()
    await h.check(call("echo"))
    await h.check(call("made-up-by-an-agent"))
    await h.check(call("another-one"))
    assert h.points("mcp_authz.decisions") == {
        frozenset(
            {("decision", "allowed"), ("tool", "echo"), ("rule", "/tools/echo"), UNCLASSED}
        ): 1,
        frozenset(
            {("decision", "denied"), ("tool", "other"), ("rule", "(default deny)"), UNCLASSED}
        ): 2,
    }
    assert h.points("mcp_authz.check.duration") == {
        frozenset({("decision", "allowed")}): 1,
        frozenset({("decision", "denied")}): 2,
    }


async def test_without_tracing_no_span_is_made_but_the_audit_keeps_the_callers_trace() -> None:
    h = harness(tracing=False)
    await h.check(call("echo"), traceparent=TRACEPARENT)
    assert h.finished() == []
    (line,) = h.audit_lines()
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, PARENT_ID)
    assert h.points("mcp_authz.decisions")


UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"


async def test_a_parent_not_sampled_records_nothing_and_the_audit_keeps_its_trace() -> None:
    h = harness()
    await h.check(call("echo"), [("traceparent", UNSAMPLED)])
    await h.check(call("echo", rid=8), traceparent=TRACEPARENT)
    # Only the sampled Check is exported, with its store call.
    assert [(s.name, s.trace_id) for s in h.finished()] == [
        (CHECK_SPAN, TRACE_ID),
        (STORE_SPAN, TRACE_ID),
    ]
    assert h.only(CHECK_SPAN).attributes["jsonrpc.request.id"] == "8"
    unsampled = h.audit_lines()[0]
    assert (unsampled["trace_id"], unsampled["span_id"]) == (TRACE_ID, PARENT_ID)
    assert h.points("mcp_authz.decisions")


async def test_the_configured_sampler_decides_for_checks_without_a_sampled_parent() -> None:
    # OTEL_TRACES_SAMPLER=parentbased_always_off: only what Envoy sampled is traced.
    h = harness(sampler=ParentBased(ALWAYS_OFF))
    await h.check(call("echo"))
    await h.check(call("echo", rid=8), traceparent=UNSAMPLED)
    assert h.finished() == []
    await h.check(call("echo", rid=9), traceparent=TRACEPARENT)
    assert h.only(CHECK_SPAN).trace_id == TRACE_ID


async def test_decisions_are_sent_in_batches_of_the_configured_size() -> None:
    transport = Capture()
    metrics = Metrics(MeterProvider([InMemoryMetricReader()]).get_meter("test"))
    queue = span_queue(transport, metrics, batch=2, delay=60.0)
    telemetry = Telemetry(None, metrics, [queue.close], queue)
    for _ in range(2):
        with telemetry.check({"traceparent": TRACEPARENT}):
            pass
    # A full batch goes at once, without waiting for the 60 s schedule or a flush.
    assert transport.entered.wait(10)
    telemetry.shutdown()
    assert [s.parent_span_id for s in transport.spans] == [PARENT_ID, PARENT_ID]
    assert transport.closed


def test_decisions_lost_to_a_full_queue_a_failed_export_or_shutdown_are_counted() -> None:
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider([reader]).get_meter("test"))
    transport = Capture(accept=False, hold=threading.Event())
    queue = span_queue(transport, metrics, max_queue=2, batch=2)
    telemetry = Telemetry(None, metrics, [queue.close], queue)

    def checks(count: int) -> None:
        for _ in range(count):
            with telemetry.check({"traceparent": TRACEPARENT}):
                pass

    checks(2)  # a full batch: the export thread takes both and is held in send
    assert transport.entered.wait(10)
    checks(5)  # two fill the queue again, three find it full
    assert transport.hold is not None
    transport.hold.set()
    assert queue.flush(10)
    # A collector that never answers holds the export thread: shutdown still ends in time.
    transport.hold.clear()
    transport.entered.clear()
    checks(2)
    assert transport.entered.wait(10)
    started = time.monotonic()
    telemetry.shutdown(0.2)
    assert time.monotonic() - started < 5
    assert points(reader, "mcp_authz.telemetry.spans_dropped") == {
        frozenset({("reason", "queue_full")}): 3,
        frozenset({("reason", "export_failed")}): 4,
        frozenset({("reason", "shutdown")}): 2,
    }


@pytest.mark.parametrize(
    "traceparent",
    [
        TRACEPARENT,
        UNSAMPLED,
        f"  {TRACEPARENT} ",
        f"00-{TRACE_ID}-{PARENT_ID}-03",
        f"01-{TRACE_ID}-{PARENT_ID}-01-future",
        f"00-{TRACE_ID}-{PARENT_ID}-01-future",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-1",
        f"00-{TRACE_ID}-{PARENT_ID}-01\n",
        f"01-{TRACE_ID}-{PARENT_ID}-01-a\nb",
        "00-garbage",
        "",
    ],
)
@pytest.mark.parametrize("tracestate", [None, "vendor=abc,other=x:y", "not a state"])
def test_the_trace_context_is_read_as_the_sdks_propagator_reads_it(
    traceparent: str, tracestate: str | None
) -> None:
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    sdk = get_current_span(TraceContextTextMapPropagator().extract(carrier)).get_span_context()
    assert remote_parent(carrier, ()) == sdk
    assert remote_parent(carrier, ()).trace_state == sdk.trace_state


def test_attribute_values_keep_their_type_through_the_encoders_cache() -> None:
    encoder = Encoder(Resource({}), InstrumentationScope("test"))
    for value in (True, 1, 1.0, -3, 2**63 - 1, "1", "é"):
        (pair,) = PbSpan.FromString(encoder._attributes({"a": value})).attributes
        assert attributes_of([pair]) == {"a": value}
        assert type(attributes_of([pair])["a"]) is type(value)


def test_nothing_is_exported_without_an_endpoint() -> None:
    assert OtelSettings.from_env({}) == OtelSettings(None, None)
    assert OtelSettings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == OtelSettings()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, (ExportProtocol.HTTP,) * 2),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            (ExportProtocol.GRPC,) * 2,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            (ExportProtocol.GRPC, None),
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "none"},
            (ExportProtocol.HTTP, None),
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"},
            (None, None),
        ),
    ],
)
def test_otel_settings_follow_the_standard_variables(
    env: dict[str, str], expected: tuple[ExportProtocol | None, ExportProtocol | None]
) -> None:
    settings = OtelSettings.from_env(env)
    assert (settings.traces, settings.metrics) == expected


def test_the_span_queue_is_sized_by_the_batch_processors_variables() -> None:
    env = {
        "OTEL_BSP_MAX_QUEUE_SIZE": "100",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10",
        "OTEL_BSP_SCHEDULE_DELAY": "250",
    }
    settings = OtelSettings.from_env(env)
    assert (settings.max_queue, settings.batch, settings.delay) == (100, 10, 0.25)
    assert OtelSettings.from_env({}).max_queue == 2048


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "http/json",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "only otlp and none"),
        (
            {"OTEL_BSP_MAX_QUEUE_SIZE": "0"},
            "OTEL_BSP_MAX_QUEUE_SIZE='0': expected a number above 0",
        ),
        ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY='soon': expected a whole"),
    ],
)
def test_unsupported_otel_settings_fail_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OtelSettings.from_env(env)


class BlockingExporter(SpanExporter):
    """Holds the batch processor's worker inside export until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait()
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.release.set()


def test_spans_lost_to_a_full_queue_or_a_failed_export_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider([reader]).get_meter("test"))
    exporter = BlockingExporter()
    processor = _DropCountingProcessor(exporter, metrics)
    tracer = TracerProvider()
    tracer.add_span_processor(processor)
    spans = tracer.get_tracer("test")

    def end(count: int) -> None:
        for _ in range(count):
            spans.start_span("s").end()

    end(2)  # a full batch wakes the worker, which takes both and blocks in export
    assert exporter.entered.wait(10)
    end(5)  # two fill the queue again, three find it full
    exporter.release.set()
    tracer.shutdown()
    assert points(reader, "mcp_authz.telemetry.spans_dropped") == {
        frozenset({("reason", "queue_full")}): 3,
        frozenset({("reason", "export_failed")}): 4,
    }
