"""A collector stand-in for tests: the real OTLP services, keeping what they receive.

It serves the OTLP gRPC TraceService and MetricsService from `opentelemetry-proto`, and
OTLP/HTTP (`/v1/traces`, `/v1/metrics`, protobuf bodies), so an exporter under test talks to
it exactly as to an OpenTelemetry Collector.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass(frozen=True)
class ReceivedPoint:
    metric: str
    attributes: dict[str, Any]
    # A sum's value, or a histogram's count.
    value: float
    resource: dict[str, Any]


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.points: list[ReceivedPoint] = []
        self._changed = threading.Condition()

    def take_traces(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        spans = [
            ReceivedSpan(
                span.name,
                span.trace_id.hex(),
                span.span_id.hex(),
                span.parent_span_id.hex(),
                span.kind,
                span.status.code,
                span.status.message,
                attributes_of(span.attributes),
                attributes_of(rs.resource.attributes),
            )
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        with self._changed:
            self.spans += spans
            self._changed.notify_all()

    def take_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        points = [
            ReceivedPoint(metric.name, attributes_of(p.attributes), _number(p), resource)
            for rm in request.resource_metrics
            for resource in [attributes_of(rm.resource.attributes)]
            for sm in rm.scope_metrics
            for metric in sm.metrics
            for p in _data_points(metric)
        ]
        with self._changed:
            self.points += points
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[OtlpReceiver], bool], timeout: float) -> bool:
        """Block until `condition` holds for what has arrived, or `timeout` seconds pass."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout)


def _data_points(metric: Any) -> list[Any]:
    kind = metric.WhichOneof("data")
    return list(getattr(metric, kind).data_points) if kind else []


def _number(point: Any) -> float:
    if hasattr(point, "bucket_counts"):
        return float(point.count)
    return float(point.as_int if point.WhichOneof("value") == "as_int" else point.as_double)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        self._receiver.take_traces(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        self._receiver.take_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@contextmanager
def grpc_receiver() -> Iterator[tuple[OtlpReceiver, int]]:
    """A receiver on OTLP/gRPC and its port."""
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(receiver), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(receiver), server)
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(None)


@contextmanager
def http_receiver() -> Iterator[tuple[OtlpReceiver, int]]:
    """A receiver on OTLP/HTTP (protobuf) and its port."""
    receiver = OtlpReceiver()
    server = ThreadingHTTPServer((HOST, 0), _handler(receiver))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver, server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    routes: dict[str, tuple[Any, Callable[[Any], None], Any]] = {
        "/v1/traces": (
            trace_service_pb2.ExportTraceServiceRequest,
            receiver.take_traces,
            trace_service_pb2.ExportTraceServiceResponse,
        ),
        "/v1/metrics": (
            metrics_service_pb2.ExportMetricsServiceRequest,
            receiver.take_metrics,
            metrics_service_pb2.ExportMetricsServiceResponse,
        ),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            request_type, take, response_type = route
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            take(request_type.FromString(body))
            answer = response_type().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
