"""The decision core end to end, without Envoy: parse, identify, evaluate, count, reply."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from authz.core.decision import Decider, FailMode
from authz.core.outcome import Outcome
from authz.core.reply import reply_for
from authz.limits.base import Hit, HitResult, StoreUnavailable
from authz.limits.memory import MemoryStore
from authz.policy.load import load_policy, parse_policy
from authz.policy.model import Policy
from authz.protocol.errors import Refusal
from authz.protocol.identity import (
    Anonymous,
    FromHeader,
    FromJwtClaim,
    FromPeerPrincipal,
    IdentitySource,
)
from authz.protocol.request import HttpRequest

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"
TOOL = "binance_us_create_listen_key"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class DownStore:
    """A store that has lost Redis: every hit raises, as the real one does."""

    def __init__(self) -> None:
        self.calls = 0

    async def hit(self, hits: Sequence[Hit]) -> HitResult:
        self.calls += 1
        raise StoreUnavailable("redis: connection refused")

    async def close(self) -> None:
        return None


def request(body: Any, **headers: str) -> HttpRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"content-type": "application/json"} | {k.replace("_", "-"): v for k, v in headers.items()}
    return HttpRequest("POST", "/mcp", h, raw)


def tool_call(name: str = TOOL, rid: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name}}


def decider(
    policy: Policy | None = None,
    store: Any = None,
    identity: IdentitySource | None = None,
    fail_mode: FailMode = FailMode.CLOSED,
    clock: Clock | None = None,
) -> Decider:
    chosen = policy or load_policy(SEED)
    return Decider(
        lambda: chosen,
        identity or Anonymous(),
        store or MemoryStore(clock or Clock()),
        fail_mode,
    )


def reply_json(outcome: Outcome) -> Any:
    return json.loads(reply_for(outcome).body)


async def test_seed_allows_thirty_a_minute_then_refuses_with_retry() -> None:
    clock = Clock()
    gate = decider(clock=clock)
    for i in range(30):
        outcome = await gate.decide(request(tool_call(rid=i)))
        assert outcome.allowed, i
        clock.now += 1
    refused = await gate.decide(request(tool_call(rid="31st")))
    assert refused.refusal is Refusal.RATE_LIMITED
    body = reply_json(refused)
    assert body["id"] == "31st"
    assert body["error"]["code"] == -32001
    assert body["error"]["data"]["tool"] == TOOL
    assert body["error"]["data"]["counter"] == "binance_us_create_listen_key_rate"
    # The first call, at t=1000, leaves the window at t=1060; it is now t=1030.
    assert body["error"]["data"]["retry_after"] == 30
    assert ("retry-after", "30") in reply_for(refused).headers
    clock.now += 30
    assert (await gate.decide(request(tool_call()))).allowed


async def test_allowed_replies_carry_the_remaining_budget() -> None:
    gate = decider()
    outcome = await gate.decide(request(tool_call()))
    headers = dict(reply_for(outcome).headers)
    assert headers["x-ratelimit-remaining"] == "29"
    assert headers["x-ratelimit-limit"] == "30"


async def test_unlisted_tool_is_denied_with_reason_and_id() -> None:
    outcome = await decider().decide(request(tool_call("transfer_funds", rid="abc")))
    reply = reply_for(outcome)
    body = json.loads(reply.body)
    assert reply.status == 200
    assert body["id"] == "abc"
    assert body["error"]["code"] == -32000
    assert "transfer_funds" in body["error"]["message"]
    assert body["error"]["data"]["rule"] == "(default deny)"


async def test_denied_calls_consume_nothing() -> None:
    policy = parse_policy(
        json.dumps(
            {
                "version": "1",
                "tools": {
                    "a": {"limits": [{"counter": "shared", "window": 60, "max": 2}]},
                    "b": {
                        "limits": [
                            {"counter": "shared", "window": 60, "max": 2},
                            {"counter": "b_only", "window": 60, "max": 1},
                        ]
                    },
                },
            }
        ).encode(),
        "p.json",
    )
    gate = decider(policy)
    assert (await gate.decide(request(tool_call("b")))).allowed
    # b's own limit is spent, so b is refused, and must not have taken from "shared".
    assert (await gate.decide(request(tool_call("b")))).refusal is Refusal.RATE_LIMITED
    assert (await gate.decide(request(tool_call("a")))).allowed
    assert (await gate.decide(request(tool_call("a")))).refusal is Refusal.RATE_LIMITED


async def test_a_batch_with_one_denied_call_is_refused_whole() -> None:
    gate = decider()
    batch = [
        tool_call(TOOL, 1),
        tool_call("transfer_funds", 2),
        {"jsonrpc": "2.0", "method": "notifications/x"},
    ]
    outcome = await gate.decide(request(batch))
    assert outcome.refusal is Refusal.DENIED
    body = reply_json(outcome)
    assert [m["id"] for m in body] == [1, 2]
    assert all(m["error"]["data"]["tool"] == "transfer_funds" for m in body)
    # The allowed call in the refused batch was not counted either.
    allowed = await gate.decide(request(tool_call()))
    assert dict(reply_for(allowed).headers)["x-ratelimit-remaining"] == "29"


async def test_a_batch_counts_every_call() -> None:
    gate = decider()
    outcome = await gate.decide(request([tool_call(TOOL, i) for i in range(3)]))
    assert outcome.allowed
    assert dict(reply_for(outcome).headers)["x-ratelimit-remaining"] == "27"


async def test_a_batch_that_would_overrun_the_limit_is_refused_and_counts_nothing() -> None:
    gate = decider()
    assert (await gate.decide(request([tool_call(TOOL, i) for i in range(31)]))).refusal is (
        Refusal.RATE_LIMITED
    )
    assert (await gate.decide(request([tool_call(TOOL, i) for i in range(30)]))).allowed


@pytest.mark.parametrize(
    ("body", "refusal", "status"),
    [
        (b"{oops", Refusal.PARSE_ERROR, 400),
        (
            b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{}}',
            Refusal.INVALID_REQUEST,
            400,
        ),
        (b"", Refusal.BODY_UNREADABLE, 400),
    ],
)
async def test_malformed_requests_get_a_json_rpc_error(
    body: bytes, refusal: Refusal, status: int
) -> None:
    outcome = await decider().decide(request(body))
    reply = reply_for(outcome)
    assert (outcome.refusal, reply.status) == (refusal, status)
    assert json.loads(reply.body)["error"]["code"] == refusal.code


async def test_header_mismatch_uses_the_specification_error() -> None:
    outcome = await decider().decide(request(tool_call(), mcp_method="tools/call", mcp_name="echo"))
    reply = reply_for(outcome)
    assert (reply.status, json.loads(reply.body)["error"]["code"]) == (400, -32020)


async def test_a_denied_notification_gets_an_http_error_not_a_json_rpc_answer() -> None:
    policy = parse_policy(
        b'{"version":"1","methods":{"notifications/*":{"action":"deny"}}}', "p.json"
    )
    outcome = await decider(policy).decide(
        request({"jsonrpc": "2.0", "method": "notifications/initialized"})
    )
    reply = reply_for(outcome)
    assert reply.status == 403
    assert json.loads(reply.body)["id"] is None


async def test_bodiless_requests_pass() -> None:
    outcome = await decider().decide(HttpRequest("GET", "/mcp", {}, b""))
    assert outcome.allowed


@pytest.mark.parametrize("fail_mode", [FailMode.CLOSED, FailMode.OPEN])
async def test_store_failure_follows_the_fail_mode(fail_mode: FailMode) -> None:
    store = DownStore()
    outcome = await decider(store=store, fail_mode=fail_mode).decide(request(tool_call()))
    assert store.calls == 1
    if fail_mode is FailMode.OPEN:
        assert outcome.allowed
        assert outcome.fail_open
    else:
        assert outcome.refusal is Refusal.LIMITS_UNAVAILABLE
        assert reply_json(outcome)["error"]["code"] == -32002
        assert "connection refused" in reply_json(outcome)["error"]["message"]


async def test_uncounted_calls_never_touch_the_store() -> None:
    store = DownStore()
    gate = decider(store=store)
    assert (await gate.decide(request({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))).allowed
    assert (await gate.decide(request(tool_call("transfer_funds")))).refusal is Refusal.DENIED
    assert store.calls == 0


JWT = "envoy.filters.http.jwt_authn"


@pytest.mark.parametrize(
    ("source", "req_kw", "identity"),
    [
        (FromHeader("x-agent-id"), {"headers": {"x-agent-id": "bot-7"}}, "bot-7"),
        (FromHeader("x-agent-id"), {"headers": {}}, None),
        (FromJwtClaim("sub"), {"metadata": {JWT: {"jwt_payload": {"sub": "alice"}}}}, "alice"),
        (FromJwtClaim("sub"), {"metadata": {JWT: {"jwt_payload": {"sub": 7}}}}, None),
        (FromJwtClaim("sub"), {"metadata": {}}, None),
        (
            FromPeerPrincipal(),
            {"peer_principal": "spiffe://cluster/ns/a/sa/agent"},
            "spiffe://cluster/ns/a/sa/agent",
        ),
        (FromPeerPrincipal(), {}, None),
    ],
)
async def test_identity_sources(
    source: IdentitySource, req_kw: dict[str, Any], identity: str | None
) -> None:
    headers = {"content-type": "application/json", **req_kw.pop("headers", {})}
    req = HttpRequest("POST", "/mcp", headers, json.dumps(tool_call()).encode(), **req_kw)
    outcome = await decider(identity=source).decide(req)
    if identity is None:
        assert outcome.refusal is Refusal.UNAUTHENTICATED
    else:
        assert outcome.caller is not None
        assert outcome.caller.identity == identity


async def test_grant_scope_counts_per_identity() -> None:
    gate = decider(identity=FromHeader("x-agent-id"))
    for _ in range(30):
        assert (await gate.decide(request(tool_call(), x_agent_id="a"))).allowed
    assert not (await gate.decide(request(tool_call(), x_agent_id="a"))).allowed
    assert (await gate.decide(request(tool_call(), x_agent_id="b"))).allowed


async def test_new_sessions_past_the_cap_are_refused_with_a_reason() -> None:
    policy = parse_policy(
        b'{"version": "1", "tools": {"t": {"limits": '
        b'[{"counter": "c", "window": 60, "max": 5, "scope": "session"}]}}}',
        "p.json",
    )
    clock = Clock()
    store = MemoryStore(clock, max_sessions=2)
    gate = decider(policy, store, FromHeader("x-agent-id"), clock=clock)
    for sid in ("s1", "s2"):
        call = request(tool_call("t"), x_agent_id="a", mcp_session_id=sid)
        assert (await gate.decide(call)).allowed
        clock.now += 10
    flood = await gate.decide(request(tool_call("t"), x_agent_id="a", mcp_session_id="s3"))
    assert flood.refusal is Refusal.RATE_LIMITED
    body = reply_json(flood)
    assert (
        "as many sessions with live session budgets as the gateway keeps"
        in (body["error"]["message"])
    )
    assert body["error"]["data"]["retry_after"] == 40  # s1 (t=1000) is idle at t=1060
    assert (await gate.decide(request(tool_call("t"), x_agent_id="a", mcp_session_id="s1"))).allowed
    assert (await gate.decide(request(tool_call("t"), x_agent_id="b", mcp_session_id="s3"))).allowed
