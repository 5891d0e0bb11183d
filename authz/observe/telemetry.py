"""Traces of every decision, and the export of traces and metrics.

One server span per Check, a child of the trace context Envoy sends in the request headers
(W3C `traceparent` / `tracestate`), so the decision sits inside the agent's request trace;
the counter store's work is a child span of it. Configuration comes from the standard
OTEL_* variables, read once at start-up. Nothing is exported without an OTLP endpoint, and
then spans leave through a batch processor with a bounded queue on its own thread: a slow
or absent collector costs a Check nothing but dropped spans, and those are counted.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from time import monotonic, perf_counter
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader as PeriodicReader
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from authz import __version__
from authz.core.outcome import Outcome, ToolFacts
from authz.limits.base import CounterKey, CounterStore, Hit, HitResult, LimitState
from authz.observe.metrics import Metrics, PrometheusEndpoint

log = logging.getLogger("mcp_authz.telemetry")

SERVICE: Final = "mcp-authz"
# Named as the gRPC semantic conventions name a server span: service/method.
CHECK_SPAN: Final = "envoy.service.auth.v3.Authorization/Check"
STORE_SPAN: Final = "counter store hit"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
# The header (and gRPC metadata key) the propagator reads the parent from.
TRACEPARENT: Final = "traceparent"
# Seconds `Telemetry.shutdown` may take when the caller names no limit.
SHUTDOWN_TIMEOUT: Final = 1.0
# Stops one exporter or endpoint within the seconds it is given.
Closer = Callable[[float], object]
# gRPC invocation metadata: (key, value) pairs, bytes for binary (`-bin`) keys.
Metadata = Iterable[tuple[str, str | bytes]]


class ExportProtocol(StrEnum):
    GRPC = "grpc"
    HTTP = "http/protobuf"


@dataclass(frozen=True, slots=True)
class OtelSettings:
    """What the OTEL_* variables ask for: per signal, the OTLP protocol, or None for no export."""

    traces: ExportProtocol | None = None
    metrics: ExportProtocol | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OtelSettings:
        """Raises ValueError for a setting we cannot honour, so start-up fails saying why."""
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        return cls(_protocol(env, "TRACES"), _protocol(env, "METRICS"))


def _protocol(env: Mapping[str, str], signal: str) -> ExportProtocol | None:
    exporter = env.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return None
    if exporter != "otlp":
        raise ValueError(f"OTEL_{signal}_EXPORTER={exporter!r}: only otlp and none are supported")
    if not (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return None
    # The specification's default; Python's own SDK once defaulted to grpc, so say it.
    name = (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or ExportProtocol.HTTP.value
    ).strip()
    try:
        return ExportProtocol(name)
    except ValueError:
        supported = ", ".join(p.value for p in ExportProtocol)
        raise ValueError(f"OTLP protocol {name!r} is not supported (use {supported})") from None


class Telemetry:
    """The span and the metrics of every Check, and the exporters' lifetime."""

    def __init__(
        self,
        tracer: Tracer | None,
        metrics: Metrics,
        closers: Sequence[Closer] = (),
    ) -> None:
        # None when traces are not exported: then no span is ever created.
        self._tracer = tracer
        self.metrics = metrics
        self._closers = closers

    @classmethod
    def off(cls) -> Telemetry:
        return cls(None, Metrics(NoOpMeter("mcp_authz")))

    @classmethod
    def start(
        cls,
        otel: OtelSettings,
        known_tools: Callable[[], frozenset[str]],
        metrics_listen: str | None = None,
    ) -> Telemetry:
        """Providers and exporters as `otel` and the Prometheus address ask; the SDK reads
        the rest of the OTEL_* variables (headers, timeouts, sampler, batch sizes) here."""
        resource = _resource()
        closers: list[Closer] = []
        meter: Meter = NoOpMeter("mcp_authz")
        readers = _metric_readers(otel.metrics, metrics_listen, closers)
        if readers:
            meters = MeterProvider(readers, resource=resource, shutdown_on_exit=False)
            closers.insert(0, lambda seconds: meters.shutdown(timeout_millis=seconds * 1000))
            meter = meters.get_meter("mcp_authz", __version__)
        metrics = Metrics(meter, known_tools)
        if otel.traces is None:
            return cls(None, metrics, closers)
        tracers = TracerProvider(resource=resource, shutdown_on_exit=False)
        processor = _DropCountingProcessor(_span_exporter(otel.traces), metrics)
        tracers.add_span_processor(processor)
        # The processor itself, not the provider: only it takes a time limit.
        closers.insert(0, processor.close)
        return cls(tracers.get_tracer("mcp_authz", __version__), metrics, closers)

    @contextmanager
    def check(self, headers: Mapping[str, str], metadata: Metadata = ()) -> Iterator[Span]:
        """The span of one Check, current while the block runs.

        Without tracing the span is the caller's, not recording: the audit log still gets
        the trace id that links the decision to the request's trace.
        """
        parent = parent_context(headers, metadata)
        if self._tracer is None:
            yield trace.get_current_span(parent)
            return
        with self._tracer.start_as_current_span(
            CHECK_SPAN, context=parent, kind=SpanKind.SERVER
        ) as span:
            yield span

    @contextmanager
    def admin(self, name: str, attributes: Mapping[str, AttributeValue]) -> Iterator[Span]:
        """The span of one admin API call (authz/admin/server.py); not recording without tracing."""
        if self._tracer is None:
            yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(
            name, kind=SpanKind.SERVER, attributes=dict(attributes)
        ) as span:
            yield span

    def finish(self, span: Span, outcome: Outcome, seconds: float) -> None:
        self.metrics.record_check(outcome, seconds)
        if not span.is_recording():
            return
        span.set_attributes(check_attributes(outcome))
        if not outcome.allowed:
            span.set_status(Status(StatusCode.ERROR, outcome.reason))

    def observe(self, store: CounterStore, backend: str) -> CounterStore:
        return ObservedStore(store, backend, self._tracer, self.metrics)

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Flush what is queued and stop the exporters (spans first, then metrics), all within
        `timeout` seconds: a collector that is down or never answers must not hold a pod past
        its termination grace period. What is still queued then is dropped and counted."""
        deadline = monotonic() + timeout
        for done, close in enumerate(self._closers):
            # An equal share of what is left: a stuck span export must not leave the metrics
            # none (the SDK's MeterProvider refuses to shut down with no time at all).
            close(max(deadline - monotonic(), 0.0) / (len(self._closers) - done))


class ObservedStore:
    """A counter store whose every operation is a child span and a latency sample."""

    def __init__(
        self, store: CounterStore, backend: str, tracer: Tracer | None, metrics: Metrics
    ) -> None:
        self._store = store
        self._backend = backend
        self._tracer = tracer
        self._metrics = metrics

    async def hit(self, hits: Sequence[Hit]) -> HitResult:
        if self._tracer is None:
            if not self._metrics.recording:
                return await self._store.hit(hits)
            return await self._timed(hits)
        attributes: dict[str, AttributeValue] = {
            "mcp_authz.store.backend": self._backend,
            "mcp_authz.store.keys": len(hits),
        }
        if self._backend == "redis":
            attributes["db.system.name"] = "redis"
        with self._tracer.start_as_current_span(
            STORE_SPAN, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            result = await self._timed(hits)
            span.set_attribute("mcp_authz.store.allowed", result.allowed)
            return result

    async def _timed(self, hits: Sequence[Hit]) -> HitResult:
        started = perf_counter()
        try:
            result = await self._store.hit(hits)
        except Exception:
            self._metrics.record_store(self._backend, perf_counter() - started, failed=True)
            raise
        self._metrics.record_store(self._backend, perf_counter() - started, failed=False)
        return result

    async def refund(self, decision_id: str, hits: Sequence[Hit]) -> bool:
        return await self._store.refund(decision_id, hits)

    async def usage(self, hit: Hit) -> LimitState:
        return await self._store.usage(hit)

    async def reset(self, key: CounterKey) -> None:
        await self._store.reset(key)

    async def ready(self) -> None:
        await self._store.ready()

    async def close(self) -> None:
        await self._store.close()


def parent_context(headers: Mapping[str, str], metadata: Metadata) -> Context:
    """The trace context of the Check call itself when the caller sent one, else the HTTP
    request's.

    A tracing Envoy sends its ext_authz span's context in the gRPC metadata, and the request
    headers it puts in the CheckRequest carry only what the client sent (often nothing): the
    metadata nests our span under Envoy's, the headers keep it in the agent's trace at least.
    """
    carrier = {key: value for key, value in metadata if isinstance(value, str)}
    for source in (carrier, headers):
        if TRACEPARENT not in source:
            continue  # the propagator would find nothing: skip its work
        context = _PROPAGATOR.extract(source)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    return Context()


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


def _resource() -> Resource:
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win; our name only replaces the SDK's
    # "unknown_service" placeholder.
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    return resource


def _span_exporter(protocol: ExportProtocol) -> SpanExporter:
    if protocol is ExportProtocol.GRPC:
        return GrpcSpanExporter()
    return HttpSpanExporter()


def _metric_readers(
    protocol: ExportProtocol | None, listen: str | None, closers: list[Closer]
) -> list[MetricReader]:
    readers: list[MetricReader] = []
    if protocol is not None:
        exporter: MetricExporter = (
            GrpcMetricExporter() if protocol is ExportProtocol.GRPC else HttpMetricExporter()
        )
        # The export interval comes from OTEL_METRIC_EXPORT_INTERVAL (default 60 s).
        readers.append(PeriodicReader(exporter))
    if listen is not None:
        endpoint = PrometheusEndpoint.start(listen)
        closers.append(lambda _seconds: endpoint.stop())
        log.info("serving Prometheus metrics on http://%s/metrics", endpoint.address)
        readers.append(endpoint.reader)
    return readers


class _DropCountingProcessor(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans its bounded queue drops when full.

    The SDK drops them silently unless its experimental self-metrics are switched on, so we
    look at the queue ourselves: a full queue when a sampled span ends means one span lost.
    """

    def __init__(self, exporter: SpanExporter, metrics: Metrics) -> None:
        # Queue size, batch size and delays come from OTEL_BSP_* (default queue: 2048 spans).
        self._exporter_counting = _FailureCountingExporter(exporter, metrics)
        super().__init__(self._exporter_counting)
        self._metrics = metrics
        self._queue = _queue_of(self)
        if self._queue is None:
            log.warning("this opentelemetry-sdk hides its span queue: drops are not counted")

    def close(self, seconds: float) -> None:
        """Export what is queued for up to `seconds`, then stop; the rest is dropped."""
        # The SDK's own shutdown() waits 30 s; the batch processor under it takes a limit.
        # Past it, it stops exporting and shuts the exporter, which ends a pending export.
        failed_before = self._exporter_counting.failed
        self._batch_processor.shutdown(timeout_millis=int(seconds * 1000))
        # An export the deadline cut short may still be unwinding on the SDK's thread.
        lost = self._exporter_counting.abandon() + (len(self._queue) if self._queue else 0)
        if lost:
            self._metrics.record_spans_dropped(lost, "shutdown")
        # Exports that failed outright meanwhile were counted as export_failed; say them too.
        lost += self._exporter_counting.failed - failed_before
        if lost:
            log.warning("shutdown: dropped %d spans the collector had not taken in time", lost)

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if queue is not None and len(queue) == queue.maxlen and _sampled(span):
            self._metrics.record_spans_dropped(1, "queue_full")
        super().on_end(span)


def _queue_of(processor: BatchSpanProcessor) -> deque[ReadableSpan] | None:
    # Private to the SDK, hence looked up defensively once, at start-up.
    queue = getattr(getattr(processor, "_batch_processor", None), "_queue", None)
    return queue if isinstance(queue, deque) and queue.maxlen is not None else None


def _sampled(span: ReadableSpan) -> bool:
    return span.context is not None and span.context.trace_flags.sampled


class _FailureCountingExporter(SpanExporter):
    """Counts the spans of every batch the collector did not take (after the SDK's retries),
    and, at shutdown, those of a batch still on its way (see `abandon`)."""

    def __init__(self, exporter: SpanExporter, metrics: Metrics) -> None:
        self._exporter = exporter
        self._metrics = metrics
        self._lock = threading.Lock()
        self._pending = 0
        self._abandoned = False
        # Spans of failed exports so far, counted as export_failed (read by close's report).
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self._pending = len(spans)
        result = self._exporter.export(spans)
        with self._lock:
            self._pending = 0
            ours = result is not SpanExportResult.SUCCESS and not self._abandoned
            if ours:
                self.failed += len(spans)
        if ours:
            self._metrics.record_spans_dropped(len(spans), "export_failed")
        return result

    def abandon(self) -> int:
        """The spans of an export that has not returned yet; from now on this exporter counts
        no failure itself, so each lost span is counted once, by whoever reports it first."""
        with self._lock:
            self._abandoned = True
            return self._pending

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)
