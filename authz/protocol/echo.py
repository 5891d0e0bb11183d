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

# Long enough for every reason the gateway itself writes around a bounded identifier.
MAX_ECHO: Final = 1024
# Any of these in JSON output is inside a string, where its \\u escape means the same.
_LINE_UNSAFE: Final = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def echo(text: str, cap: int = MAX_ECHO) -> str:
    """`text`, or its first `cap` characters, its length and a hash of the whole."""
    if len(text) <= cap:
        return text
    whole = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:cap]}...[cut: {len(text)} characters, sha256 {whole}]"


def json_line(doc: Any) -> str:
    """`doc` as compact JSON on one line for any line reader, encodable as UTF-8."""
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    return _LINE_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
