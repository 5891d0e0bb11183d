"""Start-up reaches Redis before it says SERVING: health waits, and says why meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from tests.checks import check_request
from tests.conftest import RedisServer, free_port
from tests.integration.test_grpc_server import tool_call

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"


def wait_for(lines: Iterator[str], text: str) -> str:
    for line in lines:
        if text in line:
            return line
    raise AssertionError(f"the server never logged {text!r}")


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
        return int(reply.status)


def test_health_is_not_serving_until_redis_answers(own_redis: RedisServer) -> None:
    own_redis.kill()
    port = free_port()
    argv = [sys.executable, "-m", "authz", "serve", "--policy", str(SEED), "--audit-log", "off"]
    argv += ["--listen", f"127.0.0.1:{port}", "--redis-url", own_redis.url, "--grace", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        try:
            waiting = wait_for(proc.stderr, "waiting for the store before serving")
            assert own_redis.url.rpartition(":")[2] in waiting  # names the store
            assert health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
            own_redis.start()
            wait_for(proc.stderr, "serving ext_authz on port")
            assert health(port) == health_pb2.HealthCheckResponse.SERVING
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                assert stub.Check(check_request(tool_call()), timeout=5).status.code == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
    assert proc.returncode == 0
