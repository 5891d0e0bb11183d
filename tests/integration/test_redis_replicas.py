"""Four `mcp-authz serve` processes sharing one Redis: one budget, whatever happens to them.

The seed policy caps `binance_us_create_listen_key` at 30 calls a minute per grant.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz._gen.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2_grpc
from tests.checks import check_request
from tests.conftest import RedisServer

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"
TOOL = "binance_us_create_listen_key"
Attr = attribute_context_pb2.AttributeContext
RATE_LIMITED, LIMITS_UNAVAILABLE = -32001, -32002


def check(rid: int) -> Any:
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": TOOL}}
    return check_request(json.dumps(body).encode())


@contextmanager
def replica(workdir: Path, redis_url: str, prefix: str, *extra: str) -> Iterator[int]:
    """One `mcp-authz serve` process on a free port; yields the port, SIGTERMs it after."""
    log = workdir / f"serve-{uuid.uuid4().hex}.log"
    command = [
        sys.executable, "-m", "authz", "serve", "--policy", str(SEED),
        "--listen", "127.0.0.1:0", "--audit-log", str(workdir / "audit.jsonl"),
        "--redis-url", redis_url, "--redis-prefix", prefix, *extra,
    ]  # fmt: skip
    with log.open("w") as out, subprocess.Popen(command, stderr=out) as proc:
        try:
            yield _port_from(log, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def _port_from(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "serving ext_authz on port" in line:
                return int(line.split("on port ")[1].split(";")[0])
        assert proc.poll() is None, log.read_text()
        time.sleep(0.02)
    raise AssertionError(f"the replica never said it was serving:\n{log.read_text()}")


async def hammer(ports: list[int], calls: int) -> list[int]:
    """Send `calls` concurrent Checks spread over the replicas; each answer's JSON-RPC code
    (0 when allowed)."""
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports]
    try:
        stubs = [external_auth_pb2_grpc.AuthorizationStub(ch) for ch in channels]
        responses = await asyncio.gather(
            *(stubs[i % len(stubs)].Check(check(i), timeout=5) for i in range(calls))
        )
    finally:
        for ch in channels:
            await ch.close()
    return [_code(r) for r in responses]


def _code(response: Any) -> int:
    if response.HasField("ok_response"):
        return 0
    return int(json.loads(response.denied_response.body)["error"]["code"])


@pytest.fixture
def prefix() -> str:
    return f"replicas-{uuid.uuid4().hex}"


def test_four_replicas_admit_exactly_the_limit_and_survive_restarts(
    redis_server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    with ExitStack() as stack:
        ports = [stack.enter_context(replica(tmp_path, redis_server.url, prefix)) for _ in range(4)]
        codes = asyncio.run(hammer(ports, 200))
    assert codes.count(0) == 30
    assert codes.count(RATE_LIMITED) == 170
    # Every replica restarted: the budget is still spent.
    with replica(tmp_path, redis_server.url, prefix) as port:
        assert asyncio.run(hammer([port], 5)) == [RATE_LIMITED] * 5


def test_a_dead_redis_follows_the_fail_mode_and_counting_resumes(
    own_redis: RedisServer, tmp_path: Path, prefix: str
) -> None:
    with (
        replica(tmp_path, own_redis.url, prefix) as closed,
        replica(tmp_path, own_redis.url, prefix, "--fail-mode", "open") as open_,
    ):
        assert asyncio.run(hammer([closed, open_], 10)) == [0] * 10
        own_redis.kill()
        # How long a check may wait on a silent Redis is test_redis_faults' part; here, each
        # replica answers by its own fail mode.
        codes = asyncio.run(hammer([closed, open_], 100))
        assert codes[0::2] == [LIMITS_UNAVAILABLE] * 50
        assert codes[1::2] == [0] * 50
        own_redis.start()  # empty: the budget starts again
        time.sleep(1.1)  # each replica's breaker cool-down: its next check is the probe
        assert asyncio.run(hammer([closed], 1)) == [0]
        assert asyncio.run(hammer([open_], 1)) == [0]
        codes = asyncio.run(hammer([closed, open_], 40))
    assert codes.count(0) == 28
    assert codes.count(RATE_LIMITED) == 12
