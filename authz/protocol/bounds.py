"""The longest identifier a client may choose, for each kind the gateway reads.

Every value here is matched against policy keys, kept as a counter subject, or repeated in
audit lines and replies, so an unbounded one is a way to make each request cost the gateway
more than it cost the client. An identifier over its bound is refused as an invalid request
(-32600) before anything judges it; so is one that is not valid Unicode (a lone surrogate from
a JSON escape), which no MCP server could have registered either.
"""

from __future__ import annotations

from authz.protocol.errors import Refusal, RequestRefused

# The MCP specification (2025-11-25, "Tool names"): tool names SHOULD be 1 to 128 characters.
# Prompt names are the same kind of name and get the same bound.
MAX_NAME = 128
# JSON-RPC method names: MCP's own are under 40 characters; this leaves room for extensions.
MAX_METHOD = 128
# resources/read URIs: the practical URL limit most HTTP stacks share.
MAX_URI = 2048
# A string JSON-RPC id: the SDKs use integers or UUIDs.
MAX_REQUEST_ID = 256
# Mcp-Session-Id: servers issue UUIDs or JWT-sized tokens.
MAX_SESSION_ID = 256
# MCP-Protocol-Version: a date such as 2025-06-18.
MAX_PROTOCOL_VERSION = 32
# The caller's identity, from a header, a JWT claim or the mTLS peer: SPIFFE IDs may be 2048
# bytes, which is also the URI bound.
MAX_IDENTITY = 2048


def bounded(value: str, cap: int, what: str, request_id: str | int | None = None) -> str:
    """`value`, if it is at most `cap` characters of valid Unicode; else RequestRefused."""
    if len(value) > cap:
        raise RequestRefused(
            Refusal.INVALID_REQUEST,
            f"{what} is {len(value)} characters long; at most {cap} are accepted",
            request_id,
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestRefused(
                Refusal.INVALID_REQUEST, f"{what} is not valid Unicode", request_id
            ) from None
    return value
