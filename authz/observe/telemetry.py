"""Traces of every decision, and the export of traces and metrics.

One server span per sampled Check, a child of the trace context Envoy sends in the request
headers (W3C `traceparent` / `tracestate`), so the decision sits inside the agent's request
trace; the counter store's work is a child span of it. Configuration comes from the standard
OTEL_* variables, read once at start-up. Nothing is exported without an OTLP endpoint, and
then spans leave through a bounded queue on their own thread: a slow or absent collector
costs a Check nothing but dropped spans, and those are counted. The decision spans take the
light path of authz/observe/spans.py; the admin API's spans are the SDK's.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from random import getrandbits
from time import monotonic, perf_counter, time_ns
from typing import Final

from opentelemetry import trace
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
from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader as PeriodicReader
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from authz import __version__
from authz.core.outcome import Outcome
from authz.limits.base import CounterKey, CounterStore, Hit, HitResult, LimitState
from authz.observe.metrics import Metrics, PrometheusEndpoint
from authz.observe.spans import (
    CHECK_SPAN,
    CURRENT,
    DEFAULT_BATCH,
    DEFAULT_DELAY,
    DEFAULT_QUEUE,
    DecisionSpan,
    Failure,
    GrpcTransport,
    HttpTransport,
    SpanQueue,
    StoreAttributes,
    StoreCall,
    Transport,
)

log = logging.getLogger("mcp_authz.telemetry")

SERVICE: Final = "mcp-authz"
_TRACEPARENT_FORMAT: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?"
)
# The header (and gRPC metadata key) the propagator reads the parent from.
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
# Seconds `Telemetry.shutdown` may take when the caller names no limit.
SHUTDOWN_TIMEOUT: Final = 1.0
# Stops one exporter or endpoint within the seconds it is given.
Closer = Callable[[float], object]
# gRPC invocation metadata: (key, value) pairs, bytes for binary (`-bin`) keys.
Metadata = Iterable[tuple[str, str | bytes]]
# What `Telemetry.check` yields: a sampled decision's record, else the caller's span (not
# recording), whose context the audit line names.
CheckSpan = DecisionSpan | Span
# The sampler's decisions that export: RECORD_ONLY spans would never leave the process.
_KEPT: Final = frozenset({Decision.RECORD_AND_SAMPLE})


class ExportProtocol(StrEnum):
    GRPC = "grpc"
    HTTP = "http/protobuf"


@dataclass(frozen=True, slots=True)
class OtelSettings:
    """What the OTEL_* variables ask for: per signal, the OTLP protocol, or None for no export;
    and the span queue's sizes (OTEL_BSP_*, as the SDK's batch processor names them)."""

    traces: ExportProtocol | None = None
    metrics: ExportProtocol | None = None
    max_queue: int = DEFAULT_QUEUE
    batch: int = DEFAULT_BATCH
    delay: float = DEFAULT_DELAY

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OtelSettings:
        """Raises ValueError for a setting we cannot honour, so start-up fails saying why."""
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        return cls(
            _protocol(env, "TRACES"),
            _protocol(env, "METRICS"),
            _positive(env, OTEL_BSP_MAX_QUEUE_SIZE, DEFAULT_QUEUE),
            _positive(env, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, DEFAULT_BATCH),
            _positive(env, OTEL_BSP_SCHEDULE_DELAY, int(DEFAULT_DELAY * 1000)) / 1000,
        )


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a whole number") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: expected a number above 0")
    return value


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
        spans: SpanQueue | None = None,
        sampler: Sampler = DEFAULT_ON,
    ) -> None:
        # The admin API's spans; None when they are not exported.
        self._tracer = tracer
        # The decisions' spans; None when they are not exported: then none is ever made.
        self._spans = spans
        self._sampler = sampler
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
        the rest of the OTEL_* variables (headers, timeouts, compression, sampler) here."""
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
        # The sampler (OTEL_TRACES_SAMPLER) is the SDK's, for both kinds of span.
        tracers = TracerProvider(resource=resource, shutdown_on_exit=False)
        scope = InstrumentationScope("mcp_authz", __version__)
        spans = SpanQueue(
            _transport(otel.traces),
            metrics,
            resource,
            scope,
            max_queue=otel.max_queue,
            batch=otel.batch,
            delay=otel.delay,
        )
        processor = _DropCountingProcessor(_span_exporter(otel.traces), metrics)
        tracers.add_span_processor(processor)
        # The processor itself, not the provider: only it takes a time limit.
        closers[:0] = [spans.close, processor.close]
        tracer = tracers.get_tracer(scope.name, scope.version)
        return cls(tracer, metrics, closers, spans, tracers.sampler)

    @contextmanager
    def check(self, headers: Mapping[str, str], metadata: Metadata = ()) -> Iterator[CheckSpan]:
        """The span of one Check, current while the block runs, exported when it ends.

        Unsampled or without tracing the span is the caller's, not recording: the audit log
        still gets the trace id that links the decision to the request's trace.
        """
        parent = remote_parent(headers, metadata)
        spans = self._spans
        decision = None if spans is None else self._sampled(parent)
        if spans is None or decision is None:
            yield NonRecordingSpan(parent)
            return
        token = CURRENT.set(decision)
        try:
            yield decision
        except BaseException as e:
            decision.failure = Failure(e)
            raise
        finally:
            CURRENT.reset(token)
            decision.end = time_ns()
            spans.put(decision)

    def _sampled(self, parent: SpanContext) -> DecisionSpan | None:
        """The record of a Check the sampler keeps, or None."""
        if self._sampler is DEFAULT_ON:
            # The default, parent-based: the parent's flag decides, a new trace is kept.
            if not parent.is_valid:
                return DecisionSpan(getrandbits(128), 0, None)
            if not parent.trace_flags.sampled:
                return None
            return DecisionSpan(parent.trace_id, parent.span_id, parent.trace_state)
        trace_id = parent.trace_id if parent.is_valid else getrandbits(128)
        context = set_span_in_context(NonRecordingSpan(parent)) if parent.is_valid else None
        result = self._sampler.should_sample(context, trace_id, CHECK_SPAN, SpanKind.SERVER)
        if result.decision not in _KEPT:
            return None
        return DecisionSpan(trace_id, parent.span_id, result.trace_state)

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

    def finish(self, span: CheckSpan, outcome: Outcome, seconds: float) -> None:
        self.metrics.record_check(outcome, seconds)
        if isinstance(span, DecisionSpan):
            # Its attributes are written on the export thread, from the outcome.
            span.outcome = outcome

    def observe(self, store: CounterStore, backend: str) -> CounterStore:
        return ObservedStore(store, backend, self.metrics)

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
    """A counter store whose every hit is a latency sample and, in a sampled Check, a child
    span."""

    def __init__(self, store: CounterStore, backend: str, metrics: Metrics) -> None:
        self._store = store
        self._backend = backend
        self._metrics = metrics
        self._attributes: StoreAttributes = (("mcp_authz.store.backend", backend),)
        if backend == "redis":
            self._attributes += (("db.system.name", "redis"),)

    async def hit(self, hits: Sequence[Hit]) -> HitResult:
        decision = CURRENT.get()
        if decision is None:
            if not self._metrics.recording:
                return await self._store.hit(hits)
            return await self._timed(hits)
        call = StoreCall(self._attributes, len(hits))
        try:
            result = await self._timed(hits)
        except BaseException as e:
            call.failure = Failure(e)
            raise
        finally:
            call.end = time_ns()
            decision.stores.append(call)
        call.allowed = result.allowed
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


def remote_parent(headers: Mapping[str, str], metadata: Metadata) -> SpanContext:
    """The trace context of the Check call itself when the caller sent one, else the HTTP
    request's; invalid when neither did.

    A tracing Envoy sends its ext_authz span's context in the gRPC metadata, and the request
    headers it puts in the CheckRequest carry only what the client sent (often nothing): the
    metadata nests our span under Envoy's, the headers keep it in the agent's trace at least.
    """
    carrier = {key: value for key, value in metadata if isinstance(value, str)}
    for source in (carrier, headers):
        parent = _traceparent(source)
        if parent is not None:
            return parent
    return INVALID_SPAN_CONTEXT


def _traceparent(source: Mapping[str, str]) -> SpanContext | None:
    """W3C `traceparent` and `tracestate`, read as the SDK's TraceContextTextMapPropagator
    reads them (tests/unit/test_telemetry.py holds the two side by side). Its extract builds a
    Context around a span around the SpanContext, ~4x the work of this parse, on every Check
    that carries a trace context, sampled or not."""
    value = source.get(TRACEPARENT)
    if value is None:
        return None
    match = _TRACEPARENT_FORMAT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    # Version ff is forbidden; version 00 has nothing after the flags.
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = source.get(TRACESTATE)
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(int(flags, 16)),
        trace_state=TraceState.from_header([state]) if state is not None else TraceState(),
    )


def _resource() -> Resource:
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win; our name only replaces the SDK's
    # "unknown_service" placeholder.
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    return resource


def _transport(protocol: ExportProtocol) -> Transport:
    if protocol is ExportProtocol.GRPC:
        return GrpcTransport()
    return HttpTransport()


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
