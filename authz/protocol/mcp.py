"""Turn an HTTP request Envoy forwarded into the MCP calls it carries.

Anything that cannot be read with certainty is refused here: a request the gateway reads one
way and the MCP server another is a way around the policy. So duplicate keys, truncated or
compressed bodies, over-deep nesting and headers that disagree with the body are all errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from authz.protocol.bounds import (
    MAX_METHOD,
    MAX_NAME,
    MAX_PROTOCOL_VERSION,
    MAX_REQUEST_ID,
    MAX_URI,
    bounded,
)
from authz.protocol.echo import echo
from authz.protocol.errors import Refusal, RequestRefused
from authz.protocol.request import HttpRequest

MAX_DEPTH = 64
# Requests without a body to read: the SSE stream (GET), ending a session (DELETE), CORS.
BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# Protocol revisions (dates compare as strings) from which batches are gone, and from which
# every request repeats its method, and its target, in Mcp-Method / Mcp-Name headers.
BATCHLESS_SINCE = "2025-06-18"
ROUTING_HEADERS_SINCE = "2026-07-28"
# Methods whose target the 2026-07-28 revision repeats in the Mcp-Name header.
_NAMED_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_TARGET_CAP = {"name": MAX_NAME, "uri": MAX_URI}
_TARGET_LABEL = {"name": "params.name", "uri": "params.uri"}
# Mcp-Name repeats a target of at most MAX_URI characters, possibly as base64 of its UTF-8
# (up to 4 bytes a character) inside "=?base64?...?=".
_MAX_NAME_HEADER = len("=?base64??=") + 4 * -(-4 * MAX_URI // 3)

RequestId = str | int


# Not frozen: a frozen dataclass sets each field through object.__setattr__, several times
# the cost of a plain one, and every request builds one per message. Nothing changes a
# call once parsed (and its `arguments` dict never made it hashable).
@dataclass(slots=True)
class McpCall:
    """One JSON-RPC message. `method` is None for a response the client sends back."""

    method: str | None
    id: RequestId | None
    # params.name of tools/call and prompts/get, params.uri of resources/read.
    target: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)
    # A list request (tools/list...) that carried params.cursor: it asks for a later page, so
    # its answer is not the whole list.
    paged: bool = False

    @property
    def tool(self) -> str | None:
        return self.target if self.method == "tools/call" else None


def parse_request(request: HttpRequest) -> tuple[McpCall, ...]:
    """The calls a request makes; none for bodiless methods. Raises RequestRefused."""
    if request.method.upper() in BODILESS_METHODS:
        return ()
    _check_readable(request)
    calls = parse_body(request.body)
    check_headers(calls, request.headers)
    return calls


def _check_readable(request: HttpRequest) -> None:
    headers = request.headers
    if headers.get("x-envoy-auth-partial-body") == "true":
        raise RequestRefused(Refusal.BODY_UNREADABLE, "request body was truncated by the proxy")
    length = headers.get("content-length")
    if length is not None and length.strip() != str(len(request.body)):
        raise RequestRefused(
            Refusal.BODY_UNREADABLE,
            f"received {len(request.body)} body bytes of the {length} announced",
        )
    if not request.body:
        raise RequestRefused(Refusal.BODY_UNREADABLE, "request has no body")
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise RequestRefused(
            Refusal.BODY_UNREADABLE, f"content-encoding {encoding!r} is not accepted"
        )
    media_type = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise RequestRefused(
            Refusal.BODY_UNREADABLE, f"content-type must be application/json, got {media_type!r}"
        )


def parse_body(body: bytes) -> tuple[McpCall, ...]:
    doc = _load_json(body)
    if isinstance(doc, list):
        if not doc:
            raise RequestRefused(Refusal.INVALID_REQUEST, "empty batch")
        return tuple(_message(m, f"[{i}]") for i, m in enumerate(doc))
    return (_message(doc, ""),)


def _load_json(body: bytes) -> Any:
    doc = _read_plain(body)
    return _read_strictly(body) if doc is _UNREAD else doc


def _read_plain(body: bytes) -> Any:
    """The body's value by orjson when that is certain to be the strict reader's, else
    _UNREAD (and the strict reader says what is wrong, if anything is).

    orjson keeps the last of two equal keys where the strict reader refuses them, so it is
    never trusted alone. Without \\u escapes every colon in the body is either one per
    object member or a character of a string; orjson's own compact text of the value has
    one per member it kept and the same string characters. A dropped duplicate took its
    colon (and any in its key or value) with it, so the two counts are equal exactly when
    no key was repeated. The rest the strict reader judges: \\u escapes (lone surrogates),
    integers orjson would read as floats (past 64 bits), anything
    nested deep enough to need the depth walk, and whatever orjson refuses."""
    if b"\\u" in body or body.count(b"{") + body.count(b"[") >= MAX_DEPTH:
        return _UNREAD
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _UNREAD
    text = orjson.dumps(doc)
    # A float of 1e16 or more is written with "e+": so is an integer past 64 bits that
    # orjson read as a float (the strict reader keeps it an integer).
    if text.count(b":") != body.count(b":") or b"e+" in text:
        return _UNREAD
    return doc


def _read_strictly(body: bytes) -> Any:
    try:
        doc = _DECODER.decode(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestRefused(Refusal.PARSE_ERROR, f"body is not UTF-8: {e.reason}") from None
    except RecursionError:
        raise RequestRefused(Refusal.PARSE_ERROR, "JSON nesting is too deep") from None
    except ValueError as e:
        raise RequestRefused(Refusal.PARSE_ERROR, f"invalid JSON: {e}") from None
    # No value nests deeper than the brackets around it, and a lone surrogate can only come
    # from a \u escape: most bodies need no walk at all.
    if body.count(b"{") + body.count(b"[") >= MAX_DEPTH or b"\\u" in body:
        _check_depth(doc)
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; refusing them is the only reading all share.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {echo(key, MAX_NAME)!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e400 reads as infinity, which no budget can count and no comparison judges soundly.
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {echo(text, 32)} is out of range")
    return number


_UNREAD: Final = object()
# Built once: json.loads with hooks builds a decoder on every call.
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_reject_constant, parse_float=_finite
)


def _check_depth(doc: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH, and any string that is not valid Unicode."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestRefused(Refusal.PARSE_ERROR, f"JSON nesting deeper than {MAX_DEPTH}")
        if isinstance(node, str):
            _check_unicode(node)
        elif isinstance(node, dict):
            for key in node:
                _check_unicode(key)
            stack.extend((c, depth + 1) for c in node.values())
        elif isinstance(node, list):
            stack.extend((c, depth + 1) for c in node)


def _check_unicode(text: str) -> None:
    # A lone surrogate (a \ud800 escape) is valid JSON but no UTF-8 text: servers, regexes
    # and log writers each treat it differently, so the gateway cannot judge it.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestRefused(
                Refusal.INVALID_REQUEST,
                "a string is not valid Unicode: it holds a lone UTF-16 surrogate escape (\\ud800)",
            ) from None


def _message(msg: Any, where: str) -> McpCall:
    if not isinstance(msg, dict):
        raise _invalid(where, "a JSON-RPC message must be an object", None)
    request_id = msg.get("id")
    if "id" in msg and not _valid_id(request_id):
        raise _invalid(where, "id must be a string or an integer", None)
    if isinstance(request_id, str):
        # Refused without the id: echoing an over-long one is what the bound prevents.
        _bounded(request_id, MAX_REQUEST_ID, where, "id", None)
    if msg.get("jsonrpc") != "2.0":
        raise _invalid(where, 'jsonrpc must be "2.0"', request_id)
    if "method" in msg:
        return _call(msg, where, request_id)
    if ("result" in msg) == ("error" in msg) or "id" not in msg:
        raise _invalid(where, "neither a request nor a response", request_id)
    return McpCall(method=None, id=request_id)


def _call(msg: dict[str, Any], where: str, request_id: RequestId | None) -> McpCall:
    method = msg["method"]
    if not isinstance(method, str):
        raise _invalid(where, "method must be a string", request_id)
    _bounded(method, MAX_METHOD, where, "method", request_id)
    params = msg.get("params", {})
    if not isinstance(params, dict):
        raise _invalid(where, "params must be an object", request_id)
    key = _NAMED_PARAM.get(method)
    if key is None:
        return McpCall(method=method, id=request_id, paged="cursor" in params)
    target = params.get(key)
    if not isinstance(target, str):
        raise _invalid(where, f"params.{key} of {method} must be a string", request_id)
    _bounded(target, _TARGET_CAP[key], where, _TARGET_LABEL[key], request_id)
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        raise _invalid(where, "params.arguments must be an object", request_id)
    return McpCall(method=method, id=request_id, target=target, arguments=arguments)


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _bounded(value: str, cap: int, where: str, what: str, request_id: RequestId | None) -> None:
    if len(value) <= cap and value.isascii():
        return  # the usual: no label to build
    bounded(value, cap, f"message {where} {what}" if where else what, request_id)


def _invalid(where: str, problem: str, request_id: Any) -> RequestRefused:
    prefix = f"message {where}: " if where else ""
    rid = request_id if _valid_id(request_id) else None
    return RequestRefused(Refusal.INVALID_REQUEST, prefix + problem, rid)


def check_headers(calls: tuple[McpCall, ...], headers: Mapping[str, str]) -> None:
    """The transport headers must describe the body exactly, or the server may route by header
    what the gateway judged by body, or refuse after the gateway has counted the call."""
    version = headers.get("mcp-protocol-version")
    first = calls[0]
    if version is not None:
        bounded(version, MAX_PROTOCOL_VERSION, "the MCP-Protocol-Version header", first.id)
    # A POST without a version is 2025-03-26, which allowed batches; later revisions do not.
    if len(calls) != 1 and version is not None and version >= BATCHLESS_SINCE:
        raise RequestRefused(
            Refusal.INVALID_REQUEST, f"protocol version {version} does not allow batches"
        )
    method_header = headers.get("mcp-method")
    name_header = headers.get("mcp-name")
    if method_header is not None:
        bounded(method_header, MAX_METHOD, "the Mcp-Method header", first.id)
    if name_header is not None:
        bounded(name_header, _MAX_NAME_HEADER, "the Mcp-Name header", first.id)
    if version is not None and version >= ROUTING_HEADERS_SINCE:
        _require_routing_headers(first, method_header, name_header, version)
    if method_header is None and name_header is None:
        return
    if len(calls) != 1:
        raise _mismatch("Mcp-Method/Mcp-Name headers on a batch", first.id)
    if method_header is not None and method_header != first.method:
        raise _mismatch(f"Mcp-Method {method_header!r} != body method {first.method!r}", first.id)
    if name_header is not None and _decode_header(name_header) != first.target:
        raise _mismatch(f"Mcp-Name {name_header!r} != body target {first.target!r}", first.id)


def _require_routing_headers(
    call: McpCall, method_header: str | None, name_header: str | None, version: str
) -> None:
    if call.method is not None and method_header is None:
        raise _mismatch(f"protocol version {version} requires the Mcp-Method header", call.id)
    if call.method in _NAMED_PARAM and name_header is None:
        raise _mismatch(f"protocol version {version} requires the Mcp-Name header", call.id)


def _decode_header(value: str) -> str | None:
    if not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    try:
        return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _mismatch(problem: str, request_id: RequestId | None) -> RequestRefused:
    return RequestRefused(Refusal.HEADER_MISMATCH, problem, request_id)
