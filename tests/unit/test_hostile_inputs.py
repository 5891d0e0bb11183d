"""Every hostile body gets a JSON-RPC answer and one bounded audit line, never a crash.

The property runs the whole path a transport runs (decide, reply, audit, span attributes)
over arbitrary JSON values in every place a client chooses one.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.trace import INVALID_SPAN_CONTEXT

from authz.core.decision import Decider
from authz.core.outcome import Outcome
from authz.core.reply import Reply, reply_for
from authz.limits.memory import MemoryStore
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.observe.spans import check_attributes
from authz.policy.load import parse_policy
from authz.protocol.echo import MAX_ECHO, echo, json_line
from authz.protocol.errors import Refusal
from authz.protocol.identity import FromHeader
from authz.protocol.request import HttpRequest

POLICY = parse_policy(
    json.dumps(
        {
            "version": 1,
            "default": "deny",
            "tools": {
                "pay": {
                    "conditions": [{"path": "args.memo", "op": "regex", "value": "^ok"}],
                    "limits": [
                        {
                            "counter": "spend",
                            "window": 3600,
                            "max": 10**9,
                            "scope": "session",
                            "increment_from": "args.amount",
                        }
                    ],
                },
                "x\u2028y": {},
            },
        }
    ).encode(),
    "hostile.yaml",
)
# Room for the gateway's own words around bounded identifiers, far below any echoed megabyte.
MAX_REPLY = 16 * 1024
MAX_LINE = 32 * 1024

# Any JSON value, including lone surrogates in text and numbers that overflow a float.
text = st.text(st.characters(codec=None), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def run(body: bytes, session: str = "s1") -> tuple[Outcome, Reply, list[str]]:
    decider = Decider(lambda: POLICY, FromHeader("x-agent-id"), MemoryStore(lambda: 0.0))
    headers = {"content-type": "application/json", "x-agent-id": "agent"}
    headers["mcp-session-id"] = session
    outcome = asyncio.run(decider.decide(HttpRequest("POST", "/mcp", headers, body)))
    reply = reply_for(outcome)
    stream = io.StringIO()
    AuditLog(stream, ArgumentAudit(b"k" * 32)).record(outcome, 0.001, INVALID_SPAN_CONTEXT)
    return outcome, reply, stream.getvalue().splitlines()


def assert_answered(outcome: Outcome, reply: Reply, lines: list[str]) -> None:
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["decision"] == outcome.label
    assert len(lines[0]) <= MAX_LINE
    assert len(reply.body) <= MAX_REPLY
    if outcome.refusal is not None and reply.status == 200:
        answer = json.loads(reply.body)
        assert (answer[0] if isinstance(answer, list) else answer)["error"]["code"] < 0
    for value in check_attributes(outcome).values():
        assert not isinstance(value, str) or len(value) <= MAX_ECHO + 64


def call(name: Any, arguments: Any, request_id: Any = 1) -> bytes:
    params = {"name": name, "arguments": arguments}
    doc = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    # ensure_ascii writes lone surrogates as \\ud800 escapes, as a hostile client would.
    return json.dumps(doc).encode()


@settings(max_examples=300)
@given(name=st.sampled_from(["pay", "x\u2028y", "other"]) | json_values, arguments=json_values)
def test_any_json_in_a_tool_call_gets_an_answer_and_one_audit_line(
    name: Any, arguments: Any
) -> None:
    assert_answered(*run(call(name, arguments)))


@settings(max_examples=200)
@given(amount=json_values, memo=json_values, request_id=json_values)
def test_any_json_in_a_counted_argument_or_id_gets_an_answer(
    amount: Any, memo: Any, request_id: Any
) -> None:
    assert_answered(*run(call("pay", {"amount": amount, "memo": memo}, request_id)))


@given(batch=st.lists(json_values, max_size=4))
def test_any_batch_gets_an_answer(batch: list[Any]) -> None:
    assert_answered(*run(json.dumps(batch).encode()))


def test_a_lone_surrogate_anywhere_is_refused_as_invalid() -> None:
    for body in (
        call("pay", {"amount": 1, "memo": "ok\ud800"}),
        call("pay", {"amount": 1, "memo": "ok", "\udfff": 1}),
        call("p\ud800", {}),
    ):
        outcome, reply, lines = run(body)
        assert outcome.refusal is Refusal.INVALID_REQUEST, body
        assert "surrogate" in outcome.reason
        assert_answered(outcome, reply, lines)


def test_an_overflowing_number_is_refused_not_counted_as_infinity() -> None:
    outcome, reply, lines = run(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"pay","arguments":{"amount":1e400,"memo":"ok"}}}'
    )
    assert outcome.refusal is Refusal.PARSE_ERROR
    assert "out of range" in outcome.reason
    assert_answered(outcome, reply, lines)


def test_line_separators_in_a_tool_name_stay_on_one_audit_line() -> None:
    for name in ("x\u2028y", "a\u2029b", "a\x85b"):
        outcome, reply, lines = run(call(name, {}))
        assert len(lines) == 1
        assert json.loads(lines[0])["tool"] == name
        assert_answered(outcome, reply, lines)


def test_a_megabyte_tool_name_gives_a_bounded_reply_line_and_span() -> None:
    outcome, reply, lines = run(call("n" * 1_000_000, {}))
    assert outcome.refusal is Refusal.INVALID_REQUEST
    assert_answered(outcome, reply, lines)


def test_a_megabyte_duplicate_key_is_echoed_cut_with_its_length_and_hash() -> None:
    key = "k" * 1_000_000
    body = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay",'
        f'"arguments":{{"{key}":1,"{key}":2}}}}}}'
    ).encode()
    outcome, reply, lines = run(body)
    assert outcome.refusal is Refusal.PARSE_ERROR
    assert echo(key).split("...")[1] in outcome.reason
    assert_answered(outcome, reply, lines)


def test_echo_keeps_short_text_and_cuts_long_text_with_a_distinguishing_hash() -> None:
    assert echo("short") == "short"
    one, other = echo("a" * 2000), echo("a" * 1999 + "b")
    assert one.startswith("a" * MAX_ECHO)
    assert "2000 characters" in one
    assert len(one) < MAX_ECHO + 64
    assert one != other


# What reaches a reply or audit line: parsing refuses NaN and infinities, nothing else.
line_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@given(doc=line_values)
def test_json_line_reads_back_as_the_standard_librarys_text_on_one_encodable_line(
    doc: Any,
) -> None:
    # orjson writes it, the standard library where orjson refuses (surrogates, big integers);
    # a reader gets the same values either way (only exponents may be written differently).
    plain = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    line = json_line(doc)
    assert json.loads(line) == json.loads(plain)
    assert len(line.splitlines()) == 1
    line.encode("utf-8")  # no lone surrogate left raw
