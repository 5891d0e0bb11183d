"""Spans of a Check, read back from the SDK's in-memory exporter, through the real servicer."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from authz._gen.envoy.service.auth.v3 import attribute_context_pb2
from authz.core.decision import Decider, FailMode
from authz.edges.authz_grpc import AuthorizationServicer
from authz.limits.base import Hit, HitResult, StoreUnavailable
from authz.limits.memory import MemoryStore
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.observe.metrics import Metrics, PolicyTools
from authz.observe.telemetry import (
    CHECK_SPAN,
    STORE_SPAN,
    ExportProtocol,
    OtelSettings,
    Telemetry,
    _DropCountingProcessor,
)
from authz.policy.load import parse_policy
from authz.protocol.identity import FromHeader
from tests.checks import check_request

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


@dataclass
class Harness:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    audit: io.StringIO
    servicer: AuthorizationServicer

    async def check(
        self, body: bytes, metadata: Sequence[tuple[str, str]] = (), **headers: str
    ) -> Any:
        return await self.servicer.Check(
            check_request(body, **{"x-agent-id": "agent-1", **headers}), Context(metadata)
        )

    def only(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans.get_finished_spans() if s.name == name]
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
    store: Any = None, fail_mode: FailMode = FailMode.CLOSED, *, tracing: bool = True
) -> Harness:
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    policy = parse_policy(json.dumps(POLICY).encode(), "policy.json")
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider([reader]).get_meter("test"), PolicyTools(lambda: policy))
    telemetry = Telemetry(tracers.get_tracer("test") if tracing else None, metrics)
    chosen = telemetry.observe(store or MemoryStore(), "memory")
    decider = Decider(lambda: policy, FromHeader("x-agent-id"), chosen, fail_mode)
    audit = io.StringIO()
    servicer = AuthorizationServicer(decider, AuditLog(audit, ArgumentAudit(b"k" * 32)), telemetry)
    return Harness(spans, reader, audit, servicer)


async def test_allowed_call_is_a_server_span_with_semantic_attributes_and_a_store_child() -> None:
    h = harness()
    await h.check(call("echo"), traceparent=TRACEPARENT, mcp_session_id="s-1")
    span = h.only(CHECK_SPAN)
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes or {})
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
    store = h.only(STORE_SPAN)
    assert store.kind is SpanKind.CLIENT
    assert store.parent is not None
    assert store.parent.span_id == span.context.span_id
    assert (store.attributes or {})["mcp_authz.store.allowed"] is True


async def test_parent_is_the_request_traceparent_and_the_audit_line_names_the_span() -> None:
    h = harness()
    await h.check(call("echo"), traceparent=TRACEPARENT, tracestate="vendor=abc")
    span = h.only(CHECK_SPAN)
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.parent.is_remote
    assert span.context.trace_state.get("vendor") == "abc"
    (line,) = h.audit_lines()
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, format(span.context.span_id, "016x"))


async def test_the_ext_authz_call_context_wins_over_the_request_headers() -> None:
    # A tracing Envoy sends its ext_authz span in the gRPC metadata; ours must nest under it.
    h = harness()
    await h.check(call("echo"), [("traceparent", ENVOY_PARENT)], traceparent=TRACEPARENT)
    parent = h.only(CHECK_SPAN).parent
    assert parent is not None
    assert format(parent.span_id, "016x") == "00f067aa0ba902b7"


async def test_without_a_traceparent_the_span_starts_a_trace() -> None:
    h = harness()
    await h.check(call("echo"), traceparent="00-garbage")
    span = h.only(CHECK_SPAN)
    assert span.parent is None
    assert h.audit_lines()[0]["trace_id"] == format(span.context.trace_id, "032x")


async def test_denial_sets_error_status_with_the_reason() -> None:
    h = harness()
    await h.check(call("transfer"))
    span = h.only(CHECK_SPAN)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == dict(span.attributes or {})["mcp_authz.reason"]
    assert "not in the policy" in (span.status.description or "")
    attributes = dict(span.attributes or {})
    assert (attributes["mcp_authz.decision"], attributes["error.type"]) == ("denied", "denied")
    assert attributes["mcp_authz.rule"] == "(default deny)"
    assert not [s for s in h.spans.get_finished_spans() if s.name == STORE_SPAN]


async def test_rate_limit_carries_retry_after_and_no_budget_left() -> None:
    h = harness()
    await h.check(call("echo", rid=1))
    await h.check(call("echo", rid=2))
    limited = h.spans.get_finished_spans()[-1]
    attributes = dict(limited.attributes or {})
    assert attributes["mcp_authz.decision"] == "rate_limited"
    assert 0 < float(attributes["mcp_authz.retry_after"]) <= 60  # type: ignore[arg-type]
    assert attributes["mcp_authz.remaining"] == 0
    assert limited.status.status_code is StatusCode.ERROR


async def test_malformed_body_is_a_span_without_call_attributes() -> None:
    h = harness()
    await h.check(b'{"jsonrpc": "2.0", "id": 3, "method": ')
    span = h.only(CHECK_SPAN)
    attributes = dict(span.attributes or {})
    assert attributes["mcp_authz.decision"] == "malformed"
    assert attributes["error.type"] == "malformed"
    assert "mcp.method.name" not in attributes
    assert "gen_ai.tool.name" not in attributes
    assert span.status.status_code is StatusCode.ERROR


async def test_store_down_fail_closed_marks_both_spans_and_counts_the_activation() -> None:
    h = harness(DownStore(), FailMode.CLOSED)
    await h.check(call("echo"))
    store = h.only(STORE_SPAN)
    assert store.status.status_code is StatusCode.ERROR
    assert [e.name for e in store.events] == ["exception"]
    check = h.only(CHECK_SPAN)
    assert dict(check.attributes or {})["mcp_authz.decision"] == "limits_unavailable"
    assert h.points("mcp_authz.fail_mode.activations") == {
        frozenset({("fail_mode", "closed")}): 1,
        frozenset({("fail_mode", "open")}): 0,
    }
    assert h.points("mcp_authz.store.errors") == {frozenset({("store", "memory")}): 1}


async def test_store_down_fail_open_allows_and_says_so() -> None:
    h = harness(DownStore(), FailMode.OPEN)
    await h.check(call("echo"))
    check = h.only(CHECK_SPAN)
    attributes = dict(check.attributes or {})
    assert (attributes["mcp_authz.decision"], attributes["mcp_authz.fail_open"]) == (
        "allowed",
        True,
    )
    assert check.status.status_code is StatusCode.UNSET
    assert h.points("mcp_authz.fail_mode.activations") == {
        frozenset({("fail_mode", "open")}): 1,
        frozenset({("fail_mode", "closed")}): 0,
    }


async def test_dry_run_rule_is_flagged_on_an_allowed_span() -> None:
    h = harness()
    await h.check(call("shadow"))
    attributes = dict(h.only(CHECK_SPAN).attributes or {})
    assert attributes["mcp_authz.decision"] == "allowed"
    assert attributes["mcp_authz.dry_run"] is True
    assert "not yet" in str(attributes["mcp_authz.would_deny"])


async def test_a_call_waiting_for_approval_names_the_approval() -> None:
    h = harness()
    await h.check(call("wire", amount=5))
    span = h.only(CHECK_SPAN)
    attributes = dict(span.attributes or {})
    assert attributes["mcp_authz.decision"] == "approval_required"
    assert attributes["mcp_authz.approval.status"] == "pending"
    assert attributes["mcp_authz.approval.id"] == h.audit_lines()[0]["approval"]["id"]
    assert span.status.status_code is StatusCode.ERROR


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
    assert h.spans.get_finished_spans() == ()
    (line,) = h.audit_lines()
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, PARENT_ID)
    assert h.points("mcp_authz.decisions")


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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "http/json",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "only otlp and none"),
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
