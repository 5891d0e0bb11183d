"""MCP parsing: what the gateway reads must be what any MCP server reads, or it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.protocol.errors import Refusal, RequestRefused
from authz.protocol.mcp import (
    MAX_DEPTH,
    McpCall,
    _load_json,
    _read_strictly,
    parse_body,
    parse_request,
)
from authz.protocol.request import HttpRequest


def post(body: bytes | str, **headers: str) -> HttpRequest:
    raw = body.encode() if isinstance(body, str) else body
    base = {"content-type": "application/json", "content-length": str(len(raw))}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return HttpRequest(method="POST", path="/mcp", headers=base, body=raw)


def call(name: str = "get_balance", rid: Any = 1, **params: Any) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, **params}}
    )


def refusal_of(request: HttpRequest) -> Refusal:
    with pytest.raises(RequestRefused) as info:
        parse_request(request)
    return info.value.refusal


def test_tools_call_yields_tool_arguments_and_id() -> None:
    (parsed,) = parse_request(post(call("transfer", 9, arguments={"amount": 5})))
    assert parsed == McpCall("tools/call", 9, "transfer", {"amount": 5})
    assert parsed.tool == "transfer"


@pytest.mark.parametrize(
    ("method", "params", "target"),
    [
        ("initialize", {"protocolVersion": "2025-11-25"}, None),
        ("tools/list", {}, None),
        ("ping", {}, None),
        ("server/discover", {}, None),
        ("prompts/get", {"name": "summarise"}, "summarise"),
        ("resources/read", {"uri": "file:///etc/passwd"}, "file:///etc/passwd"),
    ],
)
def test_other_methods_parse_with_their_target(method: str, params: Any, target: Any) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": "a", "method": method, "params": params})
    (parsed,) = parse_request(post(body))
    assert (parsed.method, parsed.target, parsed.tool) == (method, target, None)


def test_notification_and_client_response_parse() -> None:
    note, answer = parse_body(
        b'[{"jsonrpc":"2.0","method":"notifications/initialized"},'
        b'{"jsonrpc":"2.0","id":3,"result":{}}]'
    )
    assert (note.method, note.id) == ("notifications/initialized", None)
    assert (answer.method, answer.id) == (None, 3)


@pytest.mark.parametrize("method", ["GET", "DELETE", "HEAD", "OPTIONS", "get"])
def test_bodiless_methods_carry_no_calls(method: str) -> None:
    assert parse_request(HttpRequest(method=method, path="/mcp", headers={}, body=b"")) == ()


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        ("{not json", Refusal.PARSE_ERROR),
        (b"\xff\xfe{}", Refusal.PARSE_ERROR),
        (
            '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":NaN}}',
            Refusal.PARSE_ERROR,
        ),
        ('{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', Refusal.PARSE_ERROR),
        (
            '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
            '"params":{"name":"read_balance","name":"transfer"}}',
            Refusal.PARSE_ERROR,
        ),
        (
            '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
            '"params":{"name":"x","arguments":{"a":{"b":1,"b":2}}}}',
            Refusal.PARSE_ERROR,
        ),
        ("[" * 65 + "]" * 65, Refusal.PARSE_ERROR),
        ("[" * 100_000, Refusal.PARSE_ERROR),
        ("[]", Refusal.INVALID_REQUEST),
        ('"tools/call"', Refusal.INVALID_REQUEST),
        ('{"id":1,"method":"tools/call","params":{"name":"x"}}', Refusal.INVALID_REQUEST),
        ('{"jsonrpc":"1.0","id":1,"method":"ping"}', Refusal.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","id":1,"method":7}', Refusal.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","id":true,"method":"ping"}', Refusal.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","id":null,"method":"ping"}', Refusal.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', Refusal.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', Refusal.INVALID_REQUEST),
        (
            '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}',
            Refusal.INVALID_REQUEST,
        ),
        (
            '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[]}}',
            Refusal.INVALID_REQUEST,
        ),
        ('{"jsonrpc":"2.0","id":1}', Refusal.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', Refusal.INVALID_REQUEST),
        ('[{"jsonrpc":"2.0","id":1,"method":"ping"}, 5]', Refusal.INVALID_REQUEST),
    ],
)
def test_hostile_bodies_are_refused(body: str | bytes, refusal: Refusal) -> None:
    assert refusal_of(post(body)) is refusal


def test_invalid_request_keeps_the_id_so_the_client_can_match_it() -> None:
    with pytest.raises(RequestRefused) as info:
        parse_request(post('{"jsonrpc":"2.0","id":"k","method":"tools/call","params":{}}'))
    assert info.value.request_id == "k"


@pytest.mark.parametrize(
    "headers",
    [
        {"x_envoy_auth_partial_body": "true"},
        {"content_length": "999"},
        {"content_encoding": "gzip"},
        {"content_encoding": "br"},
        {"content_type": "text/plain"},
        {"content_type": "application/x-www-form-urlencoded"},
    ],
)
def test_bodies_that_cannot_be_read_with_certainty_are_refused(headers: dict[str, str]) -> None:
    assert refusal_of(post(call(), **headers)) is Refusal.BODY_UNREADABLE


def test_a_post_without_a_body_is_refused() -> None:
    assert refusal_of(post(b"")) is Refusal.BODY_UNREADABLE


def test_content_type_parameters_and_case_are_accepted() -> None:
    assert parse_request(post(call(), content_type="Application/JSON; charset=utf-8"))


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"mcp_method": "tools/call", "mcp_name": "get_balance"}, True),
        ({"mcp_method": "tools/call"}, True),
        ({"mcp_method": "tools/list"}, False),
        ({"mcp_method": "tools/call", "mcp_name": "transfer"}, False),
        ({"mcp_method": "tools/call,tools/call"}, False),
        ({"mcp_name": "=?base64?Z2V0X2JhbGFuY2U=?="}, True),
        ({"mcp_name": "=?base64?dHJhbnNmZXI=?="}, False),
        ({"mcp_name": "=?base64?!!!?="}, False),
        ({"mcp_name": "Get_Balance"}, False),
    ],
)
def test_mcp_headers_must_agree_with_the_body(headers: dict[str, str], ok: bool) -> None:
    request = post(call("get_balance"), **headers)
    if ok:
        assert parse_request(request)[0].tool == "get_balance"
    else:
        assert refusal_of(request) is Refusal.HEADER_MISMATCH


def test_mcp_headers_on_a_batch_are_a_mismatch() -> None:
    body = f"[{call('a', 1)},{call('b', 2)}]"
    assert refusal_of(post(body, mcp_method="tools/call")) is Refusal.HEADER_MISMATCH


@pytest.mark.parametrize(
    "name", ["Transfer", " transfer", "transfer ", "tr\u0430nsfer", "\uff54ransfer"]
)
def test_tool_names_are_taken_exactly(name: str) -> None:
    (parsed,) = parse_body(call(name).encode())
    assert parsed.tool == name


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_no_bytes_crash_the_parser(body: bytes) -> None:
    refusal = None
    try:
        parse_body(body)
    except RequestRefused as e:
        refusal = e.refusal
    assert refusal in (None, Refusal.PARSE_ERROR, Refusal.INVALID_REQUEST)


@settings(max_examples=400)
@given(json_values)
def test_no_json_crashes_the_parser_and_tools_come_from_the_body(doc: Any) -> None:
    body = json.dumps(doc)
    try:
        calls = parse_body(body.encode())
    except RequestRefused:
        return
    messages = doc if isinstance(doc, list) else [doc]
    for parsed, message in zip(calls, messages, strict=True):
        if parsed.tool is not None:
            assert message["method"] == "tools/call"
            assert message["params"]["name"] == parsed.tool


@settings(max_examples=200)
@given(st.text(max_size=30), st.integers() | st.text(max_size=5))
def test_any_tool_name_round_trips_exactly(name: str, rid: int | str) -> None:
    (parsed,) = parse_body(call(name, rid).encode())
    assert (parsed.tool, parsed.id) == (name, rid)


@pytest.mark.parametrize(
    ("headers", "refusal"),
    [
        (
            {"mcp_protocol_version": "2026-07-28", "mcp_method": "tools/call"},
            Refusal.HEADER_MISMATCH,
        ),
        ({"mcp_protocol_version": "2026-07-28"}, Refusal.HEADER_MISMATCH),
        (
            {
                "mcp_protocol_version": "2026-07-28",
                "mcp_method": "tools/call",
                "mcp_name": "get_balance",
            },
            None,
        ),
        # 2025 revisions carry no routing headers.
        ({"mcp_protocol_version": "2025-11-25"}, None),
        ({}, None),
    ],
)
def test_2026_requests_must_carry_their_routing_headers(
    headers: dict[str, str], refusal: Refusal | None
) -> None:
    request = post(call("get_balance"), **headers)
    if refusal is None:
        assert parse_request(request)[0].tool == "get_balance"
    else:
        assert refusal_of(request) is refusal


def test_2026_requests_without_a_name_need_only_the_method() -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert parse_request(post(body, mcp_protocol_version="2026-07-28", mcp_method="tools/list"))


@pytest.mark.parametrize(
    ("version", "refusal"),
    [
        ("2025-06-18", Refusal.INVALID_REQUEST),
        ("2025-11-25", Refusal.INVALID_REQUEST),
        ("2025-03-26", None),
        (None, None),
    ],
)
def test_batches_only_where_the_protocol_version_allows_them(
    version: str | None, refusal: Refusal | None
) -> None:
    body = f"[{call('a', 1)},{call('b', 2)}]"
    request = post(body, **({"mcp_protocol_version": version} if version else {}))
    if refusal is None:
        assert len(parse_request(request)) == 2
    else:
        assert refusal_of(request) is refusal


def nested(levels: int, open_: str = "[", close: str = "]") -> Any:
    """An argument value `levels` containers deep with a number at the bottom."""
    return json.loads(open_ * levels + "1" + close * levels)


@pytest.mark.parametrize(("open_", "close"), [("[", "]"), ('{"k":', "}")])
def test_nesting_is_refused_past_64_levels_whatever_the_containers(open_: str, close: str) -> None:
    # The message, params and arguments are 3 levels; the number at the bottom is one more.
    fits = call(arguments={"v": nested(MAX_DEPTH - 4, open_, close)})
    assert parse_request(post(fits))
    too_deep = call(arguments={"v": nested(MAX_DEPTH - 3, open_, close)})
    assert refusal_of(post(too_deep)) is Refusal.PARSE_ERROR


def test_brackets_inside_strings_never_hide_a_deep_value() -> None:
    # Few brackets outside strings, many inside: the bracket count only ever over-counts.
    body = call(arguments={"s": "[" * 100, "v": nested(10)})
    (parsed,) = parse_request(post(body))
    assert parsed.arguments["s"] == "[" * 100


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ud83d"])
def test_a_lone_surrogate_escape_is_refused_in_a_shallow_body(escape: str) -> None:
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":%s}}'
    assert refusal_of(post(body % f'{{"a":"{escape}"}}')) is Refusal.INVALID_REQUEST


def test_a_surrogate_pair_escape_is_one_character_and_accepted() -> None:
    (parsed,) = parse_request(post(call(arguments={"a": "\U0001f600"})))
    assert parsed.arguments == {"a": "\U0001f600"}


# JSON text as a client may write it: any spacing, keys that may repeat (at any depth, with
# colons and braces inside strings), escapes, integers past 64 bits, floats of any size.
_json_strings = st.text(
    st.sampled_from(["a", ":", '"', "\\", "{", "}", ",", "é", "\u2028", "😀", "\n", "0", "e"]),
    max_size=4,
).map(lambda s: json.dumps(s, ensure_ascii=False))
_json_scalars = (
    _json_strings
    | st.integers().map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | st.sampled_from(["true", "false", "null", "1e400", "-0", "1E2", "18446744073709551616"])
    | st.sampled_from(['"\\u00e9"', '"\\ud800"', "-9223372036854775809", "1e16"])
)
_spacing = st.sampled_from(["", " ", "\n\t"])


def _json_text(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    keys = st.sampled_from(['"a"', '"b"', '"a:b"', '"{"', '"\\u0061"'])
    members = st.lists(st.tuples(keys, _spacing, inner), max_size=4)
    return st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]") | members.map(
        lambda ms: "{" + ",".join(f"{k}{s}:{s}{v}" for k, s, v in ms) + "}"
    )


_json_texts = st.recursive(_json_scalars, _json_text, max_leaves=10)


def _read(body: bytes, reader: Any) -> tuple[str, str]:
    try:
        return "value", repr(reader(body))
    except RequestRefused as e:
        return "refused", e.message


@given(text=_json_texts, before=_spacing, after=_spacing)
@settings(max_examples=500)
def test_the_quick_reader_reads_every_body_as_the_strict_one_or_leaves_it_to_it(
    text: str, before: str, after: str
) -> None:
    # orjson keeps the last of two equal keys: the quick path must never be the only judge.
    body = (before + text + after).encode("utf-8", "surrogatepass")
    assert _read(body, _load_json) == _read(body, _read_strictly)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":1,"a":2}',
        b'{"a":{"b":1},"a":{"b":1}}',
        b'[{"x:y":1,"x:y":"a:b"}]',
        b'{"a":"::","a":1}',
    ],
)
def test_a_repeated_key_is_refused_however_its_colons_fall(body: bytes) -> None:
    with pytest.raises(RequestRefused, match="duplicate key"):
        _load_json(body)


def test_an_integer_past_64_bits_stays_an_integer() -> None:
    assert _load_json(b"[18446744073709551616, -9223372036854775809]") == [
        18446744073709551616,
        -9223372036854775809,
    ]
    assert isinstance(_load_json(b"18446744073709551616"), int)
