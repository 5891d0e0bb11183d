"""How client-chosen text is repeated in replies, spans and audit lines: bounded, one line.

A reply or audit line that repeats what the client sent is a way to make the gateway write
more than it read (a 1 MB name became a 4 MB audit line). So an echo over its bound is cut,
with a marker naming the full length and a hash of the whole, which still lets an operator
match two requests that carried the same value.

JSON text written for a line reader must stay one line for every reader: `json.dumps`
escapes control characters but leaves U+0085, U+2028 and U+2029 raw, which `str.splitlines`
and many log shippers treat as line ends, and a lone surrogate (from a `\\ud800` escape)
cannot be encoded as UTF-8 at all. Both are written as JSON escapes instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final

import orjson

# Long enough for every reason the gateway itself writes around a bounded identifier.
MAX_ECHO: Final = 1024
# Any of these in JSON output is inside a string, where its \\u escape means the same.
_LINE_UNSAFE: Final = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")
# The UTF-8 of U+0085, U+2028 and U+2029: orjson writes them raw (it refuses surrogates).
_LINE_UNSAFE_UTF8: Final = re.compile("\u0085|\u2028|\u2029".encode())
# Both lead bytes of the three: a line without either needs no scan.
_UNSAFE_LEADS: Final = (b"\xc2\x85", b"\xe2\x80")


def echo(text: str, cap: int = MAX_ECHO) -> str:
    """`text`, or its first `cap` characters, its length and a hash of the whole."""
    if len(text) <= cap:
        return text
    whole = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:cap]}...[cut: {len(text)} characters, sha256 {whole}]"


def json_line(doc: Any) -> str:
    """`doc` as compact JSON on one line for any line reader, encodable as UTF-8."""
    return json_bytes(doc).decode("utf-8")


def json_bytes(doc: Any) -> bytes:
    """The UTF-8 of `json_line(doc)`: orjson's text (the standard library's compact layout
    but for float exponents, at a fifth of its cost), or the standard library's for what
    orjson refuses."""
    try:
        raw = orjson.dumps(doc)
    except TypeError:
        # A lone surrogate, an integer past 64 bits, a key that is not a string.
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        return _LINE_UNSAFE.sub(_escape, text).encode("utf-8")
    # isascii reads a word at a time; the two searches below cost ten times as much.
    if raw.isascii():
        return raw
    if _UNSAFE_LEADS[0] in raw or _UNSAFE_LEADS[1] in raw:
        return _LINE_UNSAFE_UTF8.sub(_escape_utf8, raw)
    return raw


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _escape_utf8(match: re.Match[bytes]) -> bytes:
    return f"\\u{ord(match.group().decode('utf-8')):04x}".encode()
