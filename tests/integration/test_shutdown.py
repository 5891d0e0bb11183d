"""SIGTERM ends `mcp-authz serve` within --grace + 1 s whatever the OTLP collector does.

A pod gets 30 s between SIGTERM and SIGKILL; the exporters' own timeouts (10 s per export,
with retries) must not spend them. The collector here is either a port that accepts TCP and
never answers, or one that refuses; spans still queued are dropped and counted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import grpc
import pytest

from authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from tests.checks import check_request, serving_port
from tests.conftest import free_port
from tests.integration.test_grpc_server import tool_call

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "policies" / "seed.json"
GRACE = 1.0
# What a loaded machine adds to the interpreter's exit. Without the grace, a silent collector
# holds shutdown for the exporter's own 10 s timeout, so the test still fails far below that.
EXIT_SLACK = 4.0
CHECKS = 3


@contextmanager
def silent_collector() -> Iterator[int]:
    """A port whose kernel completes every TCP handshake and that never sends a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


@contextmanager
def refusing_collector() -> Iterator[int]:
    yield free_port()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize(
    "collector", [silent_collector, refusing_collector], ids=["silent", "refusing"]
)
def test_sigterm_exits_within_the_grace_and_counts_the_spans_dropped(
    collector: Callable[[], AbstractContextManager[int]], protocol: str
) -> None:
    with collector() as collector_port:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            # Spans wait in the queue until shutdown, as between two batches.
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
            "MCP_AUTHZ_GRACE": str(GRACE),
        }
        argv = [sys.executable, "-m", "authz", "serve", "--policy", str(SEED)]
        argv += ["--listen", "127.0.0.1:0", "--audit-log", "off"]
        with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as proc:
            assert proc.stderr is not None
            port = serving_port(proc.stderr)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                for rid in range(CHECKS):
                    stub.Check(check_request(tool_call(rid=rid)), timeout=5)
            proc.send_signal(signal.SIGTERM)
            try:
                # The bound under test, not a speed measurement: past it a pod is SIGKILLed.
                code = proc.wait(timeout=GRACE + EXIT_SLACK)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            rest = proc.stderr.read()
    assert code == 0, rest
    # Each Check is two spans: the decision and its counter store hit.
    assert f"shutdown: dropped {2 * CHECKS} spans" in rest


def test_json_logs_are_one_object_a_line() -> None:
    argv = [sys.executable, "-m", "authz", "serve", "--policy", str(SEED), "--log-format", "json"]
    argv += ["--listen", "127.0.0.1:0", "--audit-log", "off"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(json.loads(line))
            if "serving ext_authz" in lines[-1]["message"]:
                break
        proc.send_signal(signal.SIGTERM)
        lines += [json.loads(line) for line in proc.stderr]
        assert proc.wait(timeout=GRACE + 5) == 0
    assert {"time", "level", "logger", "message", "version"} <= set(lines[0])
    assert any(line["message"].startswith("shutting down") for line in lines)
