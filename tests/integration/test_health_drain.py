"""On SIGTERM a real `mcp-authz serve` says NOT_SERVING over the wire while it still drains.

The unit tests show ReplicaHealth.drain; these show what a health checker sees from outside:
SERVING before SIGTERM, then NOT_SERVING from the same, still running, process, for the
judging services and for `liveness` alike (drain calls grpcio-health-checking's
enter_graceful_shutdown, which turns every service NOT_SERVING for good).

What keeps the process up long enough to be seen: the runner drains with health already
NOT_SERVING and waits up to --grace for in-flight work. Once the gRPC server stops, new RPCs
are refused, so gRPC health is read from Watch streams opened before SIGTERM (themselves
in-flight RPCs that hold the drain). The HTTP transport's health port stays open until its
check server has drained, so one Check is held in flight by a paused Redis.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz._gen.envoy.service.ext_proc.v3 import (
    external_processor_pb2,
    external_processor_pb2_grpc,
)
from authz.edges.health import AUTHORIZATION_SERVICE, LIVENESS
from tests.checks import serving_port
from tests.conftest import RedisServer, free_port
from tests.integration.test_health import (
    CHANGE_WITHIN,
    NOT_SERVING,
    SEED,
    SERVING,
    http_status,
    wait_status,
)
from tests.integration.test_http_transport import http_request, tool_call

# Long enough that only the test's own release ends the drain, never the clock: each test
# lets go of what holds it (closes its streams, resumes Redis) and the process exits at once.
GRACE = 120.0


@contextmanager
def serving(redis_url: str, *options: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    argv = [sys.executable, "-m", "authz", "serve", "--policy", str(SEED), "--audit-log", "off"]
    argv += ["--listen", "127.0.0.1:0", "--redis-url", redis_url, *options]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["MCP_AUTHZ_GRACE"] = str(GRACE)
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        try:
            yield proc, serving_port(proc.stderr)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            rest = proc.communicate(timeout=CHANGE_WITHIN)[1]
    assert proc.returncode == 0, rest


def test_grpc_health_turns_not_serving_on_sigterm_while_draining(
    own_redis: RedisServer,
) -> None:
    with serving(own_redis.url, "--fail-mode", "closed") as (proc, port):
        wait_status(port, SERVING)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            services = ("", AUTHORIZATION_SERVICE, LIVENESS)
            watches = [
                stub.Watch(health_pb2.HealthCheckRequest(service=s), timeout=CHANGE_WITHIN)
                for s in services
            ]
            assert [next(w).status for w in watches] == [SERVING] * 3
            proc.send_signal(signal.SIGTERM)
            assert [next(w).status for w in watches] == [NOT_SERVING] * 3
            # Seen from a process that has not exited: its streams hold the drain open.
            assert proc.poll() is None
            # A new Check during the drain: NOT_SERVING if it beats the server's stop (which
            # follows the drain at once), refused UNAVAILABLE after it, or CANCELLED when it
            # lands while the server stops; never SERVING.
            try:
                answer: object = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            except grpc.RpcError as e:
                answer = e.code()
            assert answer in (NOT_SERVING, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        # The channel closed, the streams ended: nothing left in flight, the process exits.
        assert proc.wait(timeout=CHANGE_WITHIN) == 0


def unread_bytes(port: int) -> int:
    """Bytes waiting unread on the established connections of a local listener (Linux)."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":
                    total += int(fields[4].split(":")[1], 16)
    return total


def test_http_health_turns_503_on_sigterm_while_a_check_drains(own_redis: RedisServer) -> None:
    health = free_port()
    options = ("--transport", "http", "--health-listen", f"127.0.0.1:{health}")
    # Fail-open with a long Redis timeout: a paused Redis holds a Check in flight (and, with
    # no store watcher in fail-open mode, does not change readiness before SIGTERM).
    options += ("--fail-mode", "open", "--redis-timeout", str(GRACE))
    with serving(own_redis.url, *options) as (proc, port):
        assert (http_status(health), http_status(health, "/live")) == (200, 200)
        own_redis.pause()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=CHANGE_WITHIN) as held:
                held.sendall(http_request(tool_call()))
                # The Check is in flight once its counter command waits in paused Redis.
                deadline = time.monotonic() + CHANGE_WITHIN
                while unread_bytes(own_redis.port) == 0:
                    assert time.monotonic() < deadline, "the Check never reached Redis"
                    time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                while http_status(health) != 503:
                    assert time.monotonic() < deadline, "/ready stayed 200 after SIGTERM"
                    time.sleep(0.05)
                assert http_status(health, "/live") == 503
                assert proc.poll() is None
                own_redis.resume()
                # The held Check is answered (the drain let it finish), then the process exits.
                assert held.recv(64).startswith(b"HTTP/1.1 200"), "the held Check was lost"
        finally:
            own_redis.resume()
        assert proc.wait(timeout=CHANGE_WITHIN) == 0


def test_http_health_turns_503_on_sigterm_while_an_ext_proc_stream_drains(
    own_redis: RedisServer,
) -> None:
    # With --transport http, ext_proc has a gRPC server of its own. An open Process stream (one
    # per proxied request, held as long as its response) must not keep health saying 200.
    health, extproc = free_port(), free_port()
    options = ("--transport", "http", "--health-listen", f"127.0.0.1:{health}")
    options += ("--extproc-listen", f"127.0.0.1:{extproc}")
    with serving(own_redis.url, *options) as (proc, _port):
        assert http_status(health) == 200
        release = threading.Event()

        def headers_then_nothing() -> Iterator[external_processor_pb2.ProcessingRequest]:
            yield external_processor_pb2.ProcessingRequest(
                request_headers=external_processor_pb2.HttpHeaders(end_of_stream=True)
            )
            release.wait()

        with grpc.insecure_channel(f"127.0.0.1:{extproc}") as channel:
            stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
            stream = stub.Process(headers_then_nothing(), timeout=CHANGE_WITHIN)
            # Answered once: the server holds the stream, which stays open for the response.
            assert next(stream).HasField("request_headers")
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + CHANGE_WITHIN
            try:
                while http_status(health) != 503:
                    assert time.monotonic() < deadline, "/ready stayed 200 while ext_proc drained"
                    time.sleep(0.05)
                assert proc.poll() is None
            finally:
                release.set()
                stream.cancel()
        assert proc.wait(timeout=CHANGE_WITHIN) == 0
