"""One request through the real Envoy and mcp-authz is one trace.

Envoy (the shipped config, its collector address pointed at a test receiver) exports its
request span and its ext_authz call span; mcp-authz exports its decision span and the
counter store span beneath it. All must share one trace id, with our span a child of
Envoy's ext_authz span, whether the agent sent a traceparent or Envoy started the trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.e2e.conftest import PROCESSES
from tests.e2e.test_http import LISTEN_KEY, modern_call, modern_headers, post
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan, grpc_receiver

from stack import (  # isort: skip - on sys.path through tests/e2e/conftest.py
    SEED_POLICY,
    Ports,
    Process,
    start_authz,
    start_envoy,
)

pytestmark = pytest.mark.e2e

ENVOY_SERVICE = "mcp-envoy"
EXT_AUTHZ_SPAN = "async envoy.service.auth.v3.Authorization.Check egress"
CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
# Envoy's OpenTelemetry tracer flushes every 5 s (its stats flush interval).
ENVOY_FLUSH_TIMEOUT = 30.0


@pytest.fixture
def traced(
    request: pytest.FixtureRequest,
    demo_server: tuple[Ports, Process],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, OtlpReceiver, Process]]:
    """mcp-authz and Envoy both exporting to one receiver: the MCP URL, the receiver, and
    mcp-authz (stop it to flush its spans)."""
    demo_ports, demo_process = demo_server
    ports = replace(Ports.free(), mcp_server=demo_ports.mcp_server)
    with grpc_receiver() as (received, collector):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        processes = request.node.stash[PROCESSES] = [demo_process]
        with start_authz(ports, SEED_POLICY, tmp_path / "mcp-authz.log") as authz:
            processes.append(authz)
            with start_envoy(ports, tmp_path, tmp_path / "envoy.log", collector=collector) as envoy:
                processes.append(envoy)
                yield ports.mcp_url, received, authz


def by_name(spans: list[ReceivedSpan], name: str, trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name and s.trace_id == trace_id]


def test_envoy_and_mcp_authz_spans_form_one_trace(
    traced: tuple[str, OtlpReceiver, Process],
) -> None:
    url, received, authz = traced
    headers = modern_headers("tools/call", LISTEN_KEY)
    assert "result" in post(url, modern_call(LISTEN_KEY, 1), **headers).json_rpc()
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    denied = post(
        url,
        modern_call("transfer_funds", 2),
        traceparent=traceparent,
        **modern_headers("tools/call", "transfer_funds"),
    )
    assert denied.json_rpc()["error"]["code"] == -32000
    assert received.wait_for(
        lambda r: len([s for s in r.spans if s.name == EXT_AUTHZ_SPAN]) >= 2, ENVOY_FLUSH_TIMEOUT
    ), [s.name for s in received.spans]
    # mcp-authz flushes its batch on SIGTERM: after stop() everything it had has arrived.
    authz.stop()

    ours = {s.attributes["jsonrpc.request.id"]: s for s in received.spans if s.name == CHECK_SPAN}
    for request_id in ("1", "2"):
        decision = ours[request_id]
        (ext_authz,) = by_name(received.spans, EXT_AUTHZ_SPAN, decision.trace_id)
        (ingress,) = [s for s in received.spans if s.span_id == ext_authz.parent_span_id]
        assert decision.parent_span_id == ext_authz.span_id
        assert ingress.trace_id == decision.trace_id
        assert ingress.resource["service.name"] == ENVOY_SERVICE
        assert decision.resource["service.name"] == "mcp-authz"

    allowed = ours["1"]
    (store,) = [s for s in received.spans if s.parent_span_id == allowed.span_id]
    assert store.trace_id == allowed.trace_id
    # The agent's traceparent is the root of the second request's trace.
    assert ours["2"].trace_id == CLIENT_TRACE
    (ingress,) = [
        s
        for s in received.spans
        if s.trace_id == CLIENT_TRACE
        and s.kind == 2
        and s.resource["service.name"] == ENVOY_SERVICE
    ]
    assert ingress.parent_span_id == CLIENT_SPAN
    assert ours["2"].attributes["mcp_authz.decision"] == "denied"
