"""A replica's health follows its Redis in fail-closed mode, and only then.

Two real `mcp-authz serve` processes share one real Redis, one fail-closed and one fail-open.
Redis is killed: the fail-closed one turns NOT_SERVING (its liveness service stays SERVING, so
a liveness probe does not restart it), the fail-open one keeps serving; Redis comes back and
the fail-closed one serves again. The same over the HTTP health endpoint (`--health-listen`)
of the HTTP transport, which has no gRPC port; and that endpoint's answers to what is not a
health check.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.edges.health import (
    AUTHORIZATION_SERVICE,
    HTTP_MAX_HEAD,
    LIVENESS,
    ReplicaHealth,
    serve_http,
)
from tests.checks import serving_port
from tests.conftest import RedisServer, free_port
from tests.integration.served_series import scrape

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# An upper bound for a status change (WATCH_INTERVAL + WATCH_TIMEOUT is 2 s), generous for a
# loaded machine: the test waits for the change, it does not time it.
CHANGE_WITHIN = 30.0


@contextmanager
def serve(redis_url: str, fail_mode: str, *options: str) -> Iterator[int]:
    argv = [sys.executable, "-m", "authz", "serve", "--policy", str(SEED), "--audit-log", "off"]
    argv += ["--listen", "127.0.0.1:0", "--redis-url", redis_url, "--fail-mode", fail_mode]
    argv += ["--grace", "1", *options]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        try:
            yield serving_port(proc.stderr)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
    assert proc.returncode == 0


def status(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


def wait_status(port: int, want: int) -> None:
    deadline = time.monotonic() + CHANGE_WITHIN
    while (seen := status(port)) != want:
        assert time.monotonic() < deadline, f"health stayed {seen}, expected {want}"
        time.sleep(0.1)


def serving_gauge(metrics_at: str) -> list[tuple[dict[str, str], float]]:
    """The `mcp_authz_serving` samples on a replica's /metrics, labels without the scope's."""
    return [
        ({k: v for k, v in s.labels.items() if not k.startswith("otel_scope_")}, s.value)
        for s in scrape(metrics_at)
        if s.name == "mcp_authz_serving"
    ]


def test_health_follows_redis_in_fail_closed_mode_only(own_redis: RedisServer) -> None:
    metrics_at = f"127.0.0.1:{free_port()}"
    with ExitStack() as stack:
        closed = stack.enter_context(serve(own_redis.url, "closed", "--metrics-listen", metrics_at))
        opened = stack.enter_context(serve(own_redis.url, "open"))
        for port in (closed, opened):
            for service in ("", AUTHORIZATION_SERVICE, LIVENESS):
                assert status(port, service) == SERVING
        assert serving_gauge(metrics_at) == [({}, 1.0)]
        own_redis.kill()
        wait_status(closed, NOT_SERVING)
        # The gauge changes before the status does, so it reads 0 once health does.
        assert serving_gauge(metrics_at) == [({}, 0.0)]
        assert status(closed, AUTHORIZATION_SERVICE) == NOT_SERVING
        assert status(closed, LIVENESS) == SERVING
        assert status(opened) == SERVING
        own_redis.start()
        wait_status(closed, SERVING)
        assert serving_gauge(metrics_at) == [({}, 1.0)]


def http_status(port: int, path: str = "/ready", method: str = "GET") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_http_health_follows_redis_for_the_http_transport(own_redis: RedisServer) -> None:
    port = free_port()
    options = ("--transport", "http", "--health-listen", f"127.0.0.1:{port}")
    with serve(own_redis.url, "closed", *options):
        assert (http_status(port), http_status(port, "/live")) == (200, 200)
        own_redis.kill()
        deadline = time.monotonic() + CHANGE_WITHIN
        while http_status(port) != 503:
            assert time.monotonic() < deadline, "/ready stayed 200 without Redis"
            time.sleep(0.1)
        assert http_status(port, "/live") == 200
        own_redis.start()
        while http_status(port) != 200:
            assert time.monotonic() < deadline + CHANGE_WITHIN, "/ready stayed 503"
            time.sleep(0.1)


async def test_http_health_endpoint_answers_only_health_checks() -> None:
    replica = await ReplicaHealth.start(judging=False)
    server, port = await serve_http("127.0.0.1:0", replica)
    ask = asyncio.to_thread
    try:
        assert await ask(http_status, port) == 503
        assert await ask(http_status, port, "/live") == 200
        await replica.set_judging(True)
        assert await ask(http_status, port) == 200
        assert await ask(http_status, port, "/ready?x=1") == 404
        assert await ask(http_status, port, "/mcp") == 404
        assert await ask(http_status, port, "/ready", "POST") == 405
        assert await ask(overlong_head, port) == b""
        await replica.drain()
        assert await ask(http_status, port) == 503
        assert await ask(http_status, port, "/live") == 503
    finally:
        server.close()
        await server.wait_closed()


def overlong_head(port: int) -> bytes:
    """What the endpoint answers a request head longer than it reads: nothing, it hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /ready HTTP/1.1\r\nx-pad: " + b"a" * HTTP_MAX_HEAD * 2 + b"\r\n\r\n")
        try:
            return s.recv(100)
        except ConnectionResetError:  # closed with our bytes unread: the kernel resets
            return b""
