"""The response side without Envoy: plans, list filtering in both body forms, refunds."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import pytest

from authz.catalogue.memory import MemoryCatalogue
from authz.core.response_plan import MAX_PLAN_CHARS, PlanError, ResponsePlan
from authz.core.response_side import ResponseRefused, ResponseSide
from authz.limits.base import CounterKey, Hit
from authz.limits.memory import MemoryStore
from authz.policy.load import parse_policy
from authz.protocol.request import HttpRequest
from authz.protocol.sse import SseReader

POLICY = parse_policy(
    json.dumps(
        {
            "version": "1",
            "default": "deny",
            "hide": ["secret"],
            "tools": {"read": {}, "pay": {"limits": [{"counter": "p", "window": 60, "max": 2}]}},
        }
    ).encode(),
    "policy.json",
)
TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("read", "pay", "secret", "x")]
REQUEST = HttpRequest("POST", "/mcp", {":authority": "mcp.example"}, b"")
HIT = Hit(CounterKey("p", "grant", ("default", "agent")), 2, 60, 1)


def side(catalogue: MemoryCatalogue | None = None) -> ResponseSide:
    return ResponseSide(lambda: POLICY, MemoryStore(), catalogue)


def listing(rid: int = 1, tools: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "result": {"tools": TOOLS if tools is None else tools, **extra},
    }


async def rewrite(chunks: Sequence[bytes], media: str, plan: ResponsePlan | None = None) -> bytes:
    rewriter = side().rewriter(plan or ResponsePlan("d", "default"), REQUEST, media, "")
    assert rewriter is not None
    out = [await rewriter.feed(c, end=False) for c in chunks]
    return b"".join(out) + await rewriter.feed(b"", end=True)


def names(message: Any) -> list[str]:
    return [t["name"] for t in message["result"]["tools"]]


def test_a_plan_reads_back_as_written() -> None:
    plan = ResponsePlan("d-1", "ops", paged=True, refund=(HIT,), counted_at=1_800_000_000.5)
    assert ResponsePlan.decode(plan.encode()) == plan
    assert ResponsePlan.decode(ResponsePlan("d-2").encode()) == ResponsePlan("d-2")


def test_a_plan_with_text_beyond_ascii_is_an_ascii_header_value_that_reads_back() -> None:
    # Identities and grant names may be any text; a header value must be ASCII.
    hit = Hit(CounterKey("p", "identity", ("agent-é\u2028😀",)), 2, 60, 1)
    plan = ResponsePlan("d-1", "grünt", refund=(hit,), counted_at=1_800_000_000.5)
    encoded = plan.encode()
    assert encoded.isascii()
    assert ResponsePlan.decode(encoded) == plan


def test_a_plan_too_large_for_a_header_leaves_its_refund_out() -> None:
    hits = tuple(Hit(CounterKey(f"c{i}", "identity", ("x" * 2000,)), 1, 60) for i in range(9))
    encoded = ResponsePlan("d", "g", refund=hits).encode()
    assert len(encoded) < MAX_PLAN_CHARS
    assert ResponsePlan.decode(encoded) == ResponsePlan("d", "g")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "[]",
        '{"g": "x"}',
        '{"d": 1}',
        '{"d": "x", "r": [["c", "s", [], -1, 60, 1]]}',
        "x" * 20000,
    ],
)
def test_a_plan_that_is_not_ours_is_refused(value: str) -> None:
    with pytest.raises(PlanError):
        ResponsePlan.decode(value)


async def test_a_json_list_keeps_what_the_caller_may_call() -> None:
    body = json.dumps(listing()).encode()
    out = json.loads(await rewrite([body[:10], body[10:]], "application/json; charset=utf-8"))
    assert names(out) == ["read", "pay"]


async def test_a_batch_answer_is_filtered_message_by_message() -> None:
    other = {"jsonrpc": "2.0", "id": 2, "result": {"content": []}}
    out = json.loads(await rewrite([json.dumps([listing(), other]).encode()], "application/json"))
    assert names(out[0]) == ["read", "pay"]
    assert out[1] == other


async def test_entries_that_are_not_tools_are_never_shown() -> None:
    tools = [
        {"name": "read"},
        {"description": "no name"},
        "read",
        {"name": "pay", "inputSchema": 3},
    ]
    out = json.loads(await rewrite([json.dumps(listing(tools=tools)).encode()], "application/json"))
    assert names(out) == ["read"]


async def test_an_event_stream_rewrites_the_list_and_passes_the_rest_unchanged() -> None:
    changed = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    stream = (
        b": hello\r\n\r\n"
        + b"data: "
        + json.dumps(changed).encode()
        + b"\r\n\r\n"
        + b"id: 9\r\nevent: message\r\ndata: "
        + json.dumps(listing()).encode()
        + b"\r\n\r\n"
    )
    out = await rewrite([stream[i : i + 7] for i in range(0, len(stream), 7)], "text/event-stream")
    first, note, rewritten = SseReader().feed(out)
    assert first.raw == b": hello\r\n\r\n"
    assert json.loads(note.data or "") == changed
    assert (rewritten.id, rewritten.event) == ("9", "message")
    assert names(json.loads(rewritten.data or "")) == ["read", "pay"]


async def test_what_the_rewriter_did_is_reported_for_the_audit_log() -> None:
    changed = json.dumps({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    rewriter = side().rewriter(ResponsePlan("d", "default"), REQUEST, "text/event-stream", "")
    assert rewriter is not None
    await rewriter.feed(f"data: {changed}\n\ndata: {json.dumps(listing())}\n\n".encode(), end=True)
    kinds = [e.kind for e in rewriter.events]
    assert kinds == ["list_changed", "tools_listed"]
    listed = rewriter.events[1].detail
    assert (listed["shown"], listed["hidden"], listed["hidden_tools"]) == (2, 2, ["secret", "x"])


@pytest.mark.parametrize(
    ("plan", "extra", "complete"),
    [
        (ResponsePlan("d", "default"), {}, True),
        (ResponsePlan("d", "default"), {"nextCursor": "2"}, False),
        (ResponsePlan("d", "default", paged=True), {}, False),
    ],
)
async def test_the_catalogue_sees_every_tool_and_whether_the_list_was_whole(
    plan: ResponsePlan, extra: dict[str, Any], complete: bool
) -> None:
    catalogue = MemoryCatalogue()
    await catalogue.observe("default", [], complete=False)  # the upstream exists
    rewriter = side(catalogue).rewriter(plan, REQUEST, "application/json", "")
    assert rewriter is not None
    await rewriter.feed(json.dumps(listing(**extra)).encode(), end=True)
    assert {e.pinned.name for e in await catalogue.entries("default")} == {
        "read",
        "pay",
        "secret",
        "x",
    }
    # The catalogue audits its changes per tool; the rewriter reports only the listing.
    [listed] = rewriter.events
    assert (listed.kind, listed.detail["complete"]) == ("tools_listed", complete)


@pytest.mark.parametrize(
    ("media", "body"),
    [
        ("application/json", b"{"),
        ("application/json", b'{"jsonrpc":"2.0","id":1,"result":{"tools":{}}}'),
        ("application/json", b"[" * 100_000),
        ("text/event-stream", b"data: [1,\n\n"),
        ("text/event-stream", b"data: 7\n\n"),
    ],
)
async def test_an_answer_that_cannot_be_judged_is_refused(media: str, body: bytes) -> None:
    with pytest.raises(ResponseRefused):
        await rewrite([body], media)


async def test_a_json_answer_over_the_bound_is_refused_before_it_is_whole() -> None:
    rewriter = side().rewriter(ResponsePlan("d", "default"), REQUEST, "application/json", "")
    assert rewriter is not None
    for _ in range(4):
        assert await rewriter.feed(b" " * (1 << 20), end=False) == b""
    with pytest.raises(ResponseRefused, match="over"):
        await rewriter.feed(b" ", end=False)


def test_a_compressed_answer_is_refused_and_other_media_pass() -> None:
    plan = ResponsePlan("d", "default")
    with pytest.raises(ResponseRefused, match="gzip"):
        side().rewriter(plan, REQUEST, "application/json", "gzip")
    assert side().rewriter(plan, REQUEST, "text/plain", "") is None


async def test_a_5xx_refunds_once_and_other_statuses_never() -> None:
    store = MemoryStore()
    responses = ResponseSide(lambda: POLICY, store)
    await store.hit([HIT, HIT])
    plan = ResponsePlan("d", refund=(HIT,), counted_at=time.time())
    assert await responses.answered(plan, 200) is None
    assert await responses.answered(plan, 404) is None
    first = await responses.answered(plan, 503)
    again = await responses.answered(plan, 500)
    assert first is not None
    assert again is not None
    assert (first.detail["repeated"], again.detail["repeated"]) == (False, True)
    assert (await store.usage(HIT)).used == 1
