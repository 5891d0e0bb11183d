"""The real gRPC ExternalProcessor next to ext_authz, driven as Envoy drives it, on real Redis.

Each test first asks ext_authz (Check) so the plan it leaves is the real one, then plays the
ext_proc stream Envoy would open for that request: request headers, response headers, body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz._gen.envoy.config.core.v3 import base_pb2
from authz._gen.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz._gen.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from authz._gen.envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from authz.catalogue.memory import MemoryCatalogue
from authz.core.response_plan import PLAN_HEADER
from authz.edges.authz_grpc import create_server
from authz.runner import Gateway
from authz.settings import Settings
from tests.checks import check_request
from tests.conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "policies" / "seed.json"
TOOL = "binance_us_create_listen_key"
TOOLS = [
    {"name": TOOL, "description": "a listen key", "inputSchema": {"type": "object"}},
    {"name": "binance_us_new_order", "inputSchema": {"type": "object"}},
    {"name": "binance_us_account_info", "inputSchema": {"type": "object"}},
]
Mode = processing_mode_pb2.ProcessingMode


class Stub:
    def __init__(self, channel: grpc.aio.Channel, gateway: Gateway) -> None:
        self.check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
        self.processor = external_processor_pb2_grpc.ExternalProcessorStub(channel)
        self.gateway = gateway

    async def upstream_headers(self, body: dict[str, Any], **headers: str) -> dict[str, str]:
        """The request's headers as ext_authz leaves them for the filters after it."""
        response = await self.check(check_request(json.dumps(body).encode(), **headers))
        assert response.status.code == 0, response
        out = {"content-type": "application/json", ":method": "POST", ":path": "/mcp"}
        out.update({k.replace("_", "-"): v for k, v in headers.items()})
        for option in response.ok_response.headers:
            out[option.header.key] = option.header.value
        for name in response.ok_response.headers_to_remove:
            out.pop(name, None)
        return out

    async def listed(self) -> None:
        """The agent lists the tools first, as agents do: the catalogue then knows them, and
        calls to them can be judged (a tool never listed is refused with a catalogue)."""
        headers = await self.upstream_headers(list_request())
        await self.process(
            headers_message(headers),
            headers_message({":status": "200", "content-type": "application/json"}, response=True),
            body_message(json.dumps(listing()).encode(), end=True),
        )

    async def process(self, *messages: Any) -> list[Any]:
        call = self.processor.Process()
        answers = []
        for message in messages:
            await call.write(message)
            answers.append(await call.read())
            if answers[-1].HasField("immediate_response"):
                break  # Envoy sends nothing more on this stream
        await call.done_writing()
        return answers


def headers_message(headers: dict[str, str], *, response: bool = False, end: bool = False) -> Any:
    values = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    http = pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values), end_of_stream=end)
    return pb.ProcessingRequest(**{"response_headers" if response else "request_headers": http})


def body_message(data: bytes, *, end: bool) -> Any:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=end))


def listing(rid: int = 1, **extra: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS, **extra}}


def list_request(rid: int = 1, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/list", "params": params}


def call_request(rid: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": TOOL}}


@pytest.fixture
async def stub(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stub]:
    settings = Settings(
        policy=SEED,
        listen="127.0.0.1:0",
        audit_log=str(tmp_path / "audit.jsonl"),
        redis_url=redis_server.url,
        redis_prefix=f"extproc-{tmp_path.name}",
        redis_timeout=1.0,
    )
    gateway = Gateway.build(settings)
    # Calls are judged without the catalogue (test_catalogue_replicas.py and the e2e tests
    # judge with it); the response side records every list in one.
    decider = gateway.decider()
    gateway.catalogue = MemoryCatalogue()
    await gateway.store.ready()
    server, port, _ = await create_server(
        "127.0.0.1:0", decider, gateway.audit, response_side=gateway.response_side()
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Stub(channel, gateway)
    await server.stop(None)
    await gateway.store.close()
    gateway.audit.close()


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "response_event" in line]


async def test_a_json_list_is_cut_to_what_the_caller_may_call(stub: Stub, tmp_path: Path) -> None:
    headers = await stub.upstream_headers(list_request())
    body = json.dumps(listing()).encode()
    first, status, part, last = await stub.process(
        headers_message(headers),
        headers_message({":status": "200", "content-type": "application/json"}, response=True),
        body_message(body[:40], end=False),
        body_message(body[40:], end=True),
    )
    # The plan never goes upstream; the answer's headers and body are asked for, streamed.
    removed = first.request_headers.response.header_mutation.remove_headers
    assert PLAN_HEADER in removed
    assert first.mode_override.response_header_mode == Mode.SEND
    assert first.mode_override.response_body_mode == Mode.STREAMED
    assert "content-length" in status.response_headers.response.header_mutation.remove_headers
    assert part.response_body.response.body_mutation.clear_body
    answer = json.loads(last.response_body.response.body_mutation.body)
    assert [t["name"] for t in answer["result"]["tools"]] == [TOOL]
    [event] = [e for e in audit(tmp_path) if e["response_event"] == "tools_listed"]
    assert (event["shown"], event["hidden"], event["complete"]) == (1, 2, True)
    # The catalogue saw every tool the server offered, hidden ones too.
    assert len(await stub.gateway.catalogue.entries()) == 3  # type: ignore[union-attr]


async def test_an_event_stream_is_filtered_event_by_event(stub: Stub) -> None:
    headers = await stub.upstream_headers(list_request(rid=4, cursor="page-2"))
    note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "hi"}}
    stream = (
        b"id: prime\ndata: \n\n"
        + b"event: message\ndata: "
        + json.dumps(note).encode()
        + b"\n\n"
        + b"event: message\nid: e-2\ndata: "
        + json.dumps(listing(4, nextCursor="3")).encode()
        + b"\n\n"
    )
    cut = len(stream) - 30  # inside the list event
    answers = await stub.process(
        headers_message(headers),
        headers_message({":status": "200", "content-type": "text/event-stream"}, response=True),
        body_message(stream[:cut], end=False),
        body_message(stream[cut:], end=True),
    )
    early = answers[2].response_body.response.body_mutation.body
    # The priming event and the notification pass byte for byte before the list is complete.
    assert early == stream[: stream.index(b"event: message\nid: e-2")]
    late = answers[3].response_body.response.body_mutation.body
    assert late.startswith(b"event: message\nid: e-2\ndata: ")
    answer = json.loads(late.split(b"data: ", 1)[1])
    assert [t["name"] for t in answer["result"]["tools"]] == [TOOL]
    assert answer["result"]["nextCursor"] == "3"


async def test_a_5xx_answer_gives_the_count_back_once(stub: Stub, tmp_path: Path) -> None:
    await stub.listed()
    planned = [await stub.upstream_headers(call_request(rid=i)) for i in range(30)]
    refused = await stub.check(check_request(json.dumps(call_request(99)).encode()))
    assert refused.status.code == 7  # the budget of 30 a minute is spent
    last = planned[-1]
    first, status = await stub.process(
        headers_message(last),
        headers_message({":status": "503", "content-type": "text/plain"}, response=True),
    )
    # A counted call asks only for the answer's headers, never its body.
    assert first.mode_override.response_header_mode == Mode.SEND
    assert first.mode_override.response_body_mode == Mode.NONE
    assert status.HasField("response_headers")
    # The same decision answered 5xx again (a retried stream) gives nothing more back.
    await stub.process(headers_message(last), headers_message({":status": "502"}, response=True))
    allowed = await stub.check(check_request(json.dumps(call_request(100)).encode()))
    assert allowed.status.code == 0
    again = await stub.check(check_request(json.dumps(call_request(101)).encode()))
    assert again.status.code == 7
    refunds = [e for e in audit(tmp_path) if e["response_event"] == "refunded"]
    assert [e["repeated"] for e in refunds] == [False, True]
    assert refunds[0]["counters"] == ["binance_us_create_listen_key_rate"]


async def test_a_tools_own_error_result_is_not_refunded(stub: Stub, tmp_path: Path) -> None:
    await stub.listed()
    headers = await stub.upstream_headers(call_request())
    await stub.process(headers_message(headers), headers_message({":status": "200"}, response=True))
    assert not [e for e in audit(tmp_path) if e["response_event"] == "refunded"]


async def test_a_request_with_no_plan_asks_for_nothing_more(stub: Stub) -> None:
    # A client's own plan header is removed by ext_authz before ext_proc sees the request.
    headers = await stub.upstream_headers(
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        x_mcp_authz_response='{"d":"forged","r":[["c","global",[],1,60,1]]}',
    )
    assert PLAN_HEADER not in headers
    [first] = await stub.process(headers_message(headers))
    assert not first.HasField("mode_override")
    assert PLAN_HEADER in first.request_headers.response.header_mutation.remove_headers


async def test_a_plan_that_does_not_parse_is_refused(stub: Stub, tmp_path: Path) -> None:
    [first] = await stub.process(headers_message({PLAN_HEADER: "{not json", ":method": "POST"}))
    assert first.immediate_response.status.code == 502
    error = json.loads(first.immediate_response.body)["error"]
    assert error["code"] == -32010
    assert audit(tmp_path)[-1]["response_event"] == "response_refused"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (
            {"content-type": "application/json"},
            b'{"jsonrpc": "2.0", "id": 1, "result": {"tools": 3}}',
        ),
        ({"content-type": "text/event-stream"}, b"data: {not json\n\n"),
        ({"content-type": "application/json", "content-encoding": "gzip"}, b"\x1f\x8b"),
    ],
)
async def test_a_list_answer_that_cannot_be_read_is_withheld(
    stub: Stub, headers: dict[str, str], body: bytes
) -> None:
    planned = await stub.upstream_headers(list_request())
    answers = await stub.process(
        headers_message(planned),
        headers_message({":status": "200", **headers}, response=True),
        body_message(body, end=True),
    )
    assert answers[-1].immediate_response.status.code == 502


async def test_a_store_that_fails_unexpectedly_withholds_the_answer(
    stub: Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stub.listed()
    headers = await stub.upstream_headers(call_request())

    async def broken(*_: Any) -> bool:
        raise RuntimeError("not a StoreUnavailable")

    monkeypatch.setattr(stub.gateway.store, "refund", broken)
    _, status = await stub.process(
        headers_message(headers), headers_message({":status": "503"}, response=True)
    )
    assert status.immediate_response.status.code == 502
    assert audit(tmp_path)[-1]["reason"] == "internal error (RuntimeError)"


async def test_an_unreadable_status_is_refused(stub: Stub) -> None:
    await stub.listed()
    headers = await stub.upstream_headers(call_request())
    _, status = await stub.process(
        headers_message(headers), headers_message({":status": "5O3"}, response=True)
    )
    assert status.immediate_response.status.code == 502
