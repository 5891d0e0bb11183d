"""The SDK side of a scan: every tool a streamable HTTP MCP server lists, within bounds.

The server is not trusted: what it sends is bounded (bytes per response, pages, tools, bytes
per tool) and the whole scan has a deadline, so a hostile or broken server ends the scan with
a message, never a hang or an unbounded read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from authz.protocol.errors import RequestRefused
from authz.protocol.tools import ToolDefinition, ToolDefinitionError, parse_tool
from authz.scan import Catalogue, ScanError

# The revisions a scan can speak, as the SDK client's `mode` names them. `auto` asks
# `server/discover` (2026-07-28) and falls back to the initialize handshake (2025-11-25).
MODES: Final = {"auto": "auto", "2025-11-25": "legacy", "2026-07-28": "2026-07-28"}
# Far above any real server (the seed's largest catalogue is 1240 tools), far below harm.
MAX_TOOLS: Final = 5000
MAX_PAGES: Final = 500
MAX_TOOL_BYTES: Final = 256 * 1024
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024


def scan(url: str, headers: Sequence[tuple[str, str]], protocol: str, seconds: float) -> Catalogue:
    """Every tool the server lists, page by page, within the bounds above and `seconds`."""
    return anyio.run(list_tools, url, headers, protocol, seconds)


async def list_tools(
    url: str, headers: Sequence[tuple[str, str]], protocol: str, seconds: float
) -> Catalogue:
    """Every tool the server lists, page by page, within the bounds above and `seconds`."""
    with anyio.fail_after(seconds):
        return await _list_tools(url, headers, protocol, httpx2.Timeout(seconds))


async def _list_tools(
    url: str, headers: Sequence[tuple[str, str]], protocol: str, limits: httpx2.Timeout
) -> Catalogue:
    bounded = _Bounded(httpx2.AsyncHTTPTransport())
    http = httpx2.AsyncClient(headers=dict(headers), timeout=limits, transport=bounded)
    transport = streamable_http_client(url, http_client=http, max_sse_event_size=MAX_RESPONSE_BYTES)
    tools: list[ToolDefinition] = []
    skipped: list[str] = []
    async with http, Client(transport, mode=MODES[protocol], cache=None) as client:
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                entry = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
                _read(entry, tools, skipped)
            if len(tools) + len(skipped) > MAX_TOOLS:
                raise ScanError(f"the server lists more than {MAX_TOOLS} tools")
            cursor = page.next_cursor
            if cursor is None:
                return Catalogue(client.protocol_version, tools, skipped)
    raise ScanError(f"the server's tools/list has more than {MAX_PAGES} pages")


def _read(entry: dict[str, Any], tools: list[ToolDefinition], skipped: list[str]) -> None:
    name = str(entry.get("name"))[:64]
    if len(json.dumps(entry)) > MAX_TOOL_BYTES:
        skipped.append(f"{name!r}: its definition is over {MAX_TOOL_BYTES} bytes")
        return
    try:
        tools.append(parse_tool(entry))
    except (ToolDefinitionError, RequestRefused) as e:
        skipped.append(f"{name!r}: {e}")


class _Bounded(httpx2.AsyncBaseTransport):
    """Ends any response body longer than MAX_RESPONSE_BYTES (JSON answers have no SDK cap)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        response.stream = _Capped(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Capped(httpx2.AsyncByteStream):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._inner:
            read += len(chunk)
            if read > MAX_RESPONSE_BYTES:
                raise ScanError(f"a response from the server is over {MAX_RESPONSE_BYTES} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
