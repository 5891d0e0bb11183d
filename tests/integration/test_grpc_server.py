"""The real gRPC server on a free port, driven with real Envoy CheckRequests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz._gen.envoy.config.core.v3 import base_pb2
from authz._gen.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2_grpc
from authz.core.decision import Decider
from authz.core.response_plan import PLAN_HEADER
from authz.edges.authz_grpc import create_server
from authz.limits.base import Hit, HitResult
from authz.limits.memory import MemoryStore
from authz.protocol.identity import FromHeader
from authz.runner import Gateway
from authz.settings import Settings
from tests.checks import check_request

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "policies" / "seed.json"
TOOL = "binance_us_create_listen_key"
Attr = attribute_context_pb2.AttributeContext


def tool_call(name: str = TOOL, rid: Any = 1) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name}}
    ).encode()


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    audit = tmp_path / "audit.jsonl"
    gateway = Gateway.build(Settings(policy=SEED, listen="127.0.0.1:0", audit_log=str(audit)))
    server, port, _ = await create_server("127.0.0.1:0", gateway.decider(), gateway.audit)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)
    gateway.audit.close()


async def test_allow_then_rate_limit_over_grpc(channel: grpc.aio.Channel) -> None:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    for i in range(30):
        response = await stub.Check(check_request(tool_call(rid=i)))
        assert response.status.code == 0, response
        assert response.HasField("ok_response")
    added = {h.header.key: h.header.value for h in response.ok_response.response_headers_to_add}
    assert added["x-ratelimit-remaining"] == "0"
    denied = await stub.Check(check_request(tool_call(rid=99)))
    assert denied.status.code == 7
    assert denied.denied_response.status.code == 200
    body = json.loads(denied.denied_response.body)
    assert (body["id"], body["error"]["code"]) == (99, -32001)
    headers = {h.header.key: h.header.value for h in denied.denied_response.headers}
    assert headers["content-type"] == "application/json"
    assert 0 < int(headers["retry-after"]) <= 60
    assert denied.dynamic_metadata.fields["decision"].string_value == "rate_limited"
    assert (
        denied.dynamic_metadata.fields["decision_id"].string_value
        == body["error"]["data"]["decision_id"]
    )


async def test_unlisted_tool_denied_and_raw_header_map_read(channel: grpc.aio.Channel) -> None:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    denied = await stub.Check(check_request(tool_call("transfer_funds"), raw_headers=True))
    assert json.loads(denied.denied_response.body)["error"]["code"] == -32000
    # A repeated Mcp-Method in the raw header list must not hide behind its first value.
    req = check_request(tool_call(), raw_headers=True, mcp_method="tools/call")
    req.attributes.request.http.header_map.headers.append(
        base_pb2.HeaderValue(key="mcp-method", raw_value=b"tools/list")
    )
    mismatch = await stub.Check(req)
    assert mismatch.denied_response.status.code == 400
    assert json.loads(mismatch.denied_response.body)["error"]["code"] == -32020


async def test_malformed_and_partial_bodies_are_denied(channel: grpc.aio.Channel) -> None:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    for request, code in [
        (check_request(b"\x00\xff not json"), -32700),
        (check_request(tool_call(), x_envoy_auth_partial_body="true"), -32004),
        (check_request(tool_call(), content_encoding="gzip"), -32004),
    ]:
        response = await stub.Check(request)
        assert response.status.code == 7
        assert json.loads(response.denied_response.body)["error"]["code"] == code


async def test_allowed_requests_carry_a_decision_id_the_client_cannot_forge(
    channel: grpc.aio.Channel,
) -> None:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    response = await stub.Check(check_request(tool_call(), x_mcp_authz_decision_id="forged"))
    # The decision id, and the response plan ext_proc reads (the call was counted).
    header, plan = response.ok_response.headers
    assert (header.header.key, plan.header.key) == ("x-mcp-authz-decision-id", PLAN_HEADER)
    assert header.header.value != "forged"
    assert plan.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert header.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "envoy.service.auth.v3.Authorization"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_serve_answers_then_drains_on_sigterm(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "authz",
            "serve",
            "--policy",
            str(SEED),
            "--listen",
            "127.0.0.1:0",
            "--audit-log",
            str(audit),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"MCP_AUTHZ_GRACE": "2"},
    ) as proc:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            if "serving ext_authz on port" in line:
                port = int(line.split("on port ")[1].split(";")[0])
                break
        assert port, "the server never said it was serving"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            response = external_auth_pb2_grpc.AuthorizationStub(ch).Check(
                check_request(tool_call())
            )
            assert response.status.code == 0
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=10) == 0
    assert "draining for up to 2.0s" in rest
    (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert (record["decision"], record["tools"]) == ("allowed", [TOOL])


def test_serve_refuses_a_bad_policy_naming_file_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "policy.json"
    limit = {"counter": "c", "window": "fortnight", "max": 1}
    bad.write_text(json.dumps({"version": "1", "tools": {"t": {"limits": [limit]}}}))
    result = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--policy", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"{bad}: $.tools.t.limits[0].window: expected" in result.stderr


class HeldStore(MemoryStore):
    """Counts as the in-process store does, once the test lets the first hit through."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def hit(self, hits: Sequence[Hit]) -> HitResult:
        self.reached.set()
        await self.release.wait()
        return await super().hit(hits)


async def test_a_check_envoy_gives_up_on_still_counts_once_and_writes_its_audit_line(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"
    gateway = Gateway.build(Settings(policy=SEED, listen="127.0.0.1:0", audit_log=str(audit)))
    store = HeldStore()
    decider = Decider(gateway.policy, FromHeader("x-agent-id"), store)
    server, port, _ = await create_server("127.0.0.1:0", decider, gateway.audit)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = external_auth_pb2_grpc.AuthorizationStub(ch)
            call = stub.Check(check_request(tool_call(), x_agent_id="a"))
            await store.reached.wait()
            call.cancel()  # as Envoy does past its timeout
            with pytest.raises(asyncio.CancelledError):
                await call
            # Room for the cancellation to reach the server before the store answers;
            # if it comes later the check simply completes, and the test still holds.
            await asyncio.sleep(0.5)
            store.release.set()
            answered = await stub.Check(check_request(tool_call(rid=2), x_agent_id="a"))
    finally:
        await server.stop(None)
        gateway.audit.close()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["request_id"], r["decision"]) for r in lines] == [(1, "allowed"), (2, "allowed")]
    added = {h.header.key: h.header.value for h in answered.ok_response.response_headers_to_add}
    assert added["x-ratelimit-remaining"] == "28"  # the abandoned call was counted, once
