"""`mcp-authz serve` exports its spans and metrics over OTLP to a real receiver.

The server runs as a subprocess configured only by the standard OTEL_* variables, as in a
pod; on SIGTERM it flushes, so once it has exited everything it had to say has arrived.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from tests.checks import check_request, serving_port
from tests.integration.otlp_receiver import (
    OtlpReceiver,
    ReceivedSpan,
    grpc_receiver,
    http_receiver,
)
from tests.integration.test_grpc_server import tool_call

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "policies" / "seed.json"
TOOL = "binance_us_create_listen_key"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
CLIENT_KIND = 3
STATUS_ERROR = 2

Receivers = Callable[[], AbstractContextManager[tuple[OtlpReceiver, int]]]


def otel_env(port: int, protocol: str, **extra: str) -> dict[str, str]:
    # The outer environment's OTEL_* settings must not leak into the server under test.
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return base | {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_SERVICE_NAME": "authz-under-test",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
        **extra,
    }


def serve_and_check(env: dict[str, str], requests: list[Any]) -> None:
    """Start `mcp-authz serve`, send `requests` as Checks, and stop it with SIGTERM."""
    argv = [sys.executable, "-m", "authz", "serve", "--policy", str(SEED)]
    argv += ["--listen", "127.0.0.1:0", "--audit-log", "off"]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        port = serving_port(proc.stderr)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            for request in requests:
                stub.Check(request, timeout=5)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0, rest


def checks(receiver: OtlpReceiver) -> list[ReceivedSpan]:
    return [s for s in receiver.spans if s.kind == SERVER_KIND]


@pytest.mark.parametrize(
    ("protocol", "receiver"),
    [("grpc", grpc_receiver), ("http/protobuf", http_receiver)],
    ids=["grpc", "http"],
)
def test_serve_exports_decision_spans_and_metrics(protocol: str, receiver: Receivers) -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    with receiver() as (received, port):
        serve_and_check(
            otel_env(port, protocol),
            [
                check_request(tool_call(rid=5), traceparent=traceparent),
                check_request(tool_call("transfer_funds", rid=6)),
                # Not sampled upstream: recorded nowhere, the decision metrics still count it.
                check_request(tool_call(rid=7), traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00"),
            ],
        )
    allowed, denied = sorted(checks(received), key=lambda s: s.attributes["jsonrpc.request.id"])
    assert (allowed.trace_id, allowed.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert allowed.attributes["mcp_authz.decision"] == "allowed"
    assert allowed.attributes["gen_ai.tool.name"] == TOOL
    assert allowed.resource["service.name"] == "authz-under-test"
    assert allowed.resource["deployment.environment.name"] == "test"
    assert allowed.resource["telemetry.sdk.name"] == "opentelemetry"
    (store,) = [s for s in received.spans if s.kind == CLIENT_KIND]
    assert (store.trace_id, store.parent_span_id) == (TRACE_ID, allowed.span_id)
    assert denied.trace_id != TRACE_ID
    assert denied.parent_span_id == ""
    assert (denied.status_code, denied.attributes["mcp_authz.decision"]) == (STATUS_ERROR, "denied")
    assert "not in the policy" in denied.status_message
    decisions = {
        (p.attributes["decision"], p.attributes["tool"]): p.value
        for p in received.points
        if p.metric == "mcp_authz.decisions"
    }
    assert decisions == {("allowed", TOOL): 2, ("denied", "other"): 1}
    latencies = [p for p in received.points if p.metric == "mcp_authz.check.duration"]
    assert sum(p.value for p in latencies) == 3
    assert latencies[0].resource["service.name"] == "authz-under-test"


def test_metrics_can_be_switched_off_while_traces_flow() -> None:
    with grpc_receiver() as (received, port):
        env = otel_env(port, "grpc", OTEL_METRICS_EXPORTER="none")
        serve_and_check(env, [check_request(tool_call())])
    assert len(checks(received)) == 1
    assert received.points == []


def test_an_unsupported_protocol_stops_start_up() -> None:
    env = otel_env(1, "http/json")
    result = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--policy", str(SEED), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "OTLP protocol 'http/json' is not supported" in result.stderr
