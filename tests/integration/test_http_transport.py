"""The HTTP ext_authz transport for real: its server on a free port, raw HTTP/1.1 as Envoy's
http_service sends it, answers compared byte for byte with the gRPC path's; `--transport` and
`--workers` start-up checks through `mcp-authz serve`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz._gen.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2_grpc
from authz.core.reply import Reply
from authz.core.response_plan import PLAN_HEADER, ResponsePlan
from authz.edges.authz_grpc import create_server
from authz.edges.authz_http import (
    MAX_BODY,
    REFUSAL_STATUS,
    HttpCheck,
    HttpServer,
    create_http_server,
    encode,
)
from authz.observe.telemetry import Telemetry
from authz.protocol.identity import IdentitySourceKind
from authz.runner import Gateway
from authz.settings import Settings
from tests.checks import check_request
from tests.conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "policies" / "seed.json"
TOOL = "binance_us_create_listen_key"
LIMIT = 30
Attr = attribute_context_pb2.AttributeContext


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def tool_call(name: str = TOOL, rid: Any = 1) -> bytes:
    message = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name}}
    return json.dumps(message).encode()


def http_request(
    body: bytes, *, method: str = "POST", path: str = "/check/mcp", **headers: str
) -> bytes:
    """A request as Envoy's http_service writes it: prefixed path, allowed headers, body."""
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1:10000"]
    merged = {"content-type": "application/json"} | {
        k.replace("_", "-"): v for k, v in headers.items()
    }
    lines += [f"{k}: {v}" for k, v in merged.items()]
    lines += [f"content-length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return Answer(int(status_line.split()[1]), headers, body)


class Client:
    """One keep-alive connection, as Envoy keeps to the authorization server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, raw: bytes, answers: int = 1) -> list[Answer]:
        self.writer.write(raw)
        await self.writer.drain()
        return [await read_answer(self.reader) for _ in range(answers)]

    async def check(self, body: bytes, **kw: Any) -> Answer:
        (answer,) = await self.send(http_request(body, **kw))
        return answer


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    """Both transports on free ports, each with its own fresh gateway (seed policy)."""
    running: list[Any] = []
    ports = []
    for transport in ("http", "grpc"):
        settings = Settings(policy=SEED, audit_log=str(tmp_path / f"audit-{transport}.jsonl"))
        gateway = Gateway.build(settings)
        if transport == "http":
            check = HttpCheck(
                gateway.decider(), gateway.audit, Telemetry.off(), IdentitySourceKind.NONE
            )
            server, port = await create_http_server("127.0.0.1:0", check)
        else:
            server, port, _ = await create_server("127.0.0.1:0", gateway.decider(), gateway.audit)
        running.append((server, gateway))
        ports.append(port)
    yield ports[0], ports[1]
    for server, gateway in running:
        await server.stop(None)
        gateway.audit.close()


@pytest.fixture
async def client(servers: tuple[int, int]) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", servers[0])
    yield Client(reader, writer)
    writer.close()
    await writer.wait_closed()


async def test_allows_with_headers_then_refuses_the_31st(client: Client) -> None:
    for i in range(LIMIT):
        answer = await client.check(tool_call(rid=i))
        assert answer.status == 200, answer
        assert answer.body == b""
    assert answer.headers["x-ratelimit-remaining"] == "0"
    assert answer.headers["x-ratelimit-limit"] == str(LIMIT)
    assert len(answer.headers["x-mcp-authz-decision-id"]) == 32
    refused = await client.check(tool_call(rid=99))
    # A refusal agents read as a JSON-RPC answer: 299 here, 200 once Envoy's mapper ran.
    assert refused.status == REFUSAL_STATUS
    assert refused.headers["content-type"] == "application/json"
    assert 0 < int(refused.headers["retry-after"]) <= 60
    error = json.loads(refused.body)
    assert (error["id"], error["error"]["code"]) == (99, -32001)
    assert error["error"]["data"]["decision_id"] == refused.headers["x-mcp-authz-decision-id"]


# Bodies that once crashed the audit writer or the budget count (issue #12, item 7).
HOSTILE = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
    b'"arguments":{"text":"\\ud800"}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
    b'"arguments":{"n":1e400}}}',
)

CASES = [
    pytest.param(tool_call("transfer_funds"), {}, id="denied-tool"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":', {}, id="malformed-json"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"x","method":"y"}', {}, id="duplicate-key"),
    pytest.param(b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}', {}, id="no-id"),
    pytest.param(b'{"a":"\xff"}', {}, id="not-utf-8"),
    pytest.param(HOSTILE[0], {}, id="lone-surrogate"),
    pytest.param(HOSTILE[1], {}, id="float-overflow"),
    pytest.param(b"", {}, id="no-body"),
    pytest.param(tool_call(), {"content_type": "text/plain"}, id="not-json-media-type"),
    pytest.param(tool_call(), {"content_encoding": "gzip"}, id="compressed"),
    pytest.param(
        tool_call(),
        {"mcp_protocol_version": "2026-07-28", "mcp_method": "tools/call", "mcp_name": "echo"},
        id="header-mismatch",
    ),
    pytest.param(tool_call(), {"x_envoy_auth_partial_body": "true"}, id="truncated"),
]


@pytest.mark.parametrize(("body", "headers"), CASES)
async def test_refusals_match_the_grpc_path(
    servers: tuple[int, int], client: Client, body: bytes, headers: dict[str, str]
) -> None:
    over_http = await client.check(body, **headers)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers[1]}") as channel:
        response = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
            check_request(body, **{"content-length": str(len(body)), **headers})
        )
    assert response.HasField("denied_response"), response
    denied = response.denied_response
    grpc_headers = {h.header.key: h.header.value for h in denied.headers}
    status = 200 if over_http.status == REFUSAL_STATUS else over_http.status
    assert status == denied.status.code
    assert without_ids(over_http.headers) == without_ids(grpc_headers)
    assert without_ids(json.loads(over_http.body)) == without_ids(json.loads(denied.body))


async def test_hostile_bodies_get_one_audit_line_on_each_transport(
    servers: tuple[int, int], client: Client, tmp_path: Path
) -> None:
    for body in HOSTILE:
        assert (await client.check(body)).status == 400
        async with grpc.aio.insecure_channel(f"127.0.0.1:{servers[1]}") as channel:
            response = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(body, **{"content-length": str(len(body))})
            )
        assert response.HasField("denied_response")
    for transport in ("http", "grpc"):
        lines = (tmp_path / f"audit-{transport}.jsonl").read_text().splitlines()
        assert [json.loads(line)["decision"] for line in lines] == ["invalid", "malformed"]


def without_ids(value: Any) -> Any:
    """The value with decision ids blanked (each transport's decision has its own)."""
    if isinstance(value, dict):
        return {
            k: "<id>" if k in ("decision_id", "x-mcp-authz-decision-id") else without_ids(v)
            for k, v in value.items()
            if k != "content-length"
        }
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


async def test_pipelined_requests_are_answered_in_order(client: Client) -> None:
    raw = b"".join(http_request(tool_call(rid=i)) for i in range(3))
    raw += http_request(tool_call("transfer_funds", rid=3))
    answers = await client.send(raw, answers=4)
    assert [a.status for a in answers] == [200, 200, 200, REFUSAL_STATUS]
    assert json.loads(answers[3].body)["id"] == 3


async def test_repeated_headers_are_joined_as_envoy_joins_them(client: Client) -> None:
    body = tool_call("echo")
    raw = http_request(body, mcp_protocol_version="2026-07-28", mcp_name="echo")
    # Two Mcp-Method headers: read as "tools/call,tools/list", never as the first alone.
    raw = raw.replace(
        b"mcp-name:", b"mcp-method: tools/call\r\nmcp-method: tools/list\r\nmcp-name:"
    )
    (answer,) = await client.send(raw)
    assert answer.status == 400
    assert json.loads(answer.body)["error"]["code"] == -32020


async def test_bodiless_methods_pass(client: Client) -> None:
    for method in ("GET", "DELETE"):
        answer = await client.check(b"", method=method, mcp_session_id="s1")
        assert answer.status == 200, (method, answer)


async def test_a_body_over_the_cap_is_refused_and_the_connection_closed(
    servers: tuple[int, int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", servers[0])
    head = f"POST /check/mcp HTTP/1.1\r\ncontent-length: {MAX_BODY + 1}\r\n\r\n".encode()
    writer.write(head + b"x" * (MAX_BODY + 1))
    answer = await read_answer(reader)
    assert answer.status == 413
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_garbage_gets_400_and_a_closed_connection(servers: tuple[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", servers[0])
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    assert (await read_answer(reader)).status == 400
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_stop_lets_an_answer_in_flight_finish() -> None:
    release = asyncio.Event()

    async def slow(_request: Any) -> bytes:
        await release.wait()
        return encode(Reply(200, ()), allowed=True)

    server, port = await create_http_server("127.0.0.1:0", slow)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(http_request(tool_call()))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(stop_later(server, release))
    assert (await read_answer(reader)).status == 200
    await stopping
    writer.close()
    await writer.wait_closed()


async def stop_later(server: HttpServer, release: asyncio.Event) -> None:
    asyncio.get_running_loop().call_later(0.05, release.set)
    await server.stop(2.0)


@pytest.mark.parametrize("source", [IdentitySourceKind.JWT, IdentitySourceKind.MTLS])
def test_identity_sources_http_service_cannot_carry_are_refused(
    tmp_path: Path, source: IdentitySourceKind
) -> None:
    gateway = Gateway.build(Settings(policy=SEED, audit_log="off"))
    with pytest.raises(ValueError, match="http_service"):
        HttpCheck(gateway.decider(), gateway.audit, Telemetry.off(), source)
    result = serve("--transport", "http", "--identity-source", source.value)
    assert result.returncode == 2
    assert f"--identity-source {source.value}" in result.stderr
    assert "--transport grpc" in result.stderr


def test_workers_without_redis_are_refused() -> None:
    result = serve("--workers", "2")
    assert result.returncode == 2
    assert "--workers 2 needs --redis-url" in result.stderr


def serve(*flags: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "authz", "serve", "--policy", str(SEED), *flags]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_two_workers_share_the_port_and_one_budget(
    tmp_path: Path, own_redis: RedisServer, transport: str
) -> None:
    port = free_port()
    audit = tmp_path / "audit.jsonl"
    argv = [
        sys.executable, "-m", "authz", "serve", "--policy", str(SEED),
        "--listen", f"127.0.0.1:{port}", "--redis-url", own_redis.url, "--workers", "2",
        "--transport", transport, "--audit-log", str(audit), "--grace", "1",
    ]  # fmt: skip
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_for_workers(proc.pid, port)
            codes = asyncio.run(calls_over_fresh_connections(port, transport, LIMIT + 10))
        finally:
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=20)
        assert proc.returncode == 0, errors
    # One budget for both workers: exactly the limit passes, whoever answered.
    assert codes.count(0) == LIMIT
    assert codes.count(-32001) == 10
    assert len(audit.read_text().splitlines()) == LIMIT + 10
    assert not children_of(proc.pid)


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def wait_for_workers(pid: int, port: int) -> None:
    """Both workers started and the port answers."""
    import socket  # noqa: PLC0415

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(children_of(pid)) >= 2:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                pass
            else:
                time.sleep(1.0)  # the second worker binds a moment after the first
                return
        time.sleep(0.05)
    raise AssertionError("the workers never came up")


async def calls_over_fresh_connections(port: int, transport: str, n: int) -> list[int]:
    """`n` calls, each on a new connection so the kernel spreads them over the workers; the
    JSON-RPC code of each answer (0 when allowed)."""
    codes = []
    for i in range(n):
        if transport == "http":
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answer = await Client(reader, writer).check(tool_call(rid=i))
            writer.close()
            await writer.wait_closed()
            codes.append(0 if answer.status == 200 else json.loads(answer.body)["error"]["code"])
        else:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                response = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                    check_request(tool_call(rid=i), content_length=str(len(tool_call(rid=i))))
                )
            denied = response.denied_response
            codes.append(
                0 if response.HasField("ok_response") else json.loads(denied.body)["error"]["code"]
            )
    return codes


def test_worker_env_twin_is_read() -> None:
    env = os.environ | {"MCP_AUTHZ_WORKERS": "3"}
    argv = [sys.executable, "-m", "authz", "serve", "--policy", str(SEED)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert result.returncode == 2
    assert "--workers 3 needs --redis-url" in result.stderr


async def test_the_response_plan_is_ours_set_or_removed(client: Client) -> None:
    """ext_proc trusts x-mcp-authz-response because ext_authz always sets it (a counted call,
    a list) or removes a client's copy (anything else), over HTTP as over gRPC."""
    forged = '{"d":"forged","r":[["c","global",[],1,60,1]]}'
    counted = await client.check(tool_call(), x_mcp_authz_response=forged)
    plan = ResponsePlan.decode(counted.headers[PLAN_HEADER])
    assert plan.decision_id == counted.headers["x-mcp-authz-decision-id"]
    assert [h.key.counter for h in plan.refund] == ["binance_us_create_listen_key_rate"]
    listing = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
    assert ResponsePlan.decode((await client.check(listing)).headers[PLAN_HEADER]).filters
    free = await client.check(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert PLAN_HEADER not in free.headers
    assert PLAN_HEADER in free.headers["x-envoy-auth-headers-to-remove"].split(",")
