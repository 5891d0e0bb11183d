"""`mcp-authz scan URL`: list a live MCP server's tools, class them, write a starter policy.

The server is asked with the official Python SDK's client over streamable HTTP, in the
protocol revision the operator picks. It is not trusted: what it sends is bounded (bytes per
response, pages, tools, bytes per tool) and the whole scan has a deadline, so a hostile or
broken server ends the scan with a message, never a hang or an unbounded read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from authz.policy.load import PolicyError, parse_policy
from authz.policy.scaffold import (
    Format,
    ScannedTool,
    classify_tools,
    expressible,
    scaffold,
    summary,
)
from authz.protocol.errors import RequestRefused
from authz.protocol.tools import ToolDefinition, ToolDefinitionError, parse_tool

# The revisions a scan can speak, as the SDK client's `mode` names them. `auto` asks
# `server/discover` (2026-07-28) and falls back to the initialize handshake (2025-11-25).
PROTOCOLS: Final = {"auto": "auto", "2025-11-25": "legacy", "2026-07-28": "2026-07-28"}
DEFAULT_PROTOCOL: Final = "auto"
DEFAULT_TIMEOUT: Final = 30.0
# Far above any real server (the seed's largest catalogue is 1240 tools), far below harm.
MAX_TOOLS: Final = 5000
MAX_PAGES: Final = 500
MAX_TOOL_BYTES: Final = 256 * 1024
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
EXIT_OK: Final = 0
EXIT_FAILED: Final = 2
_TABLE_CELL: Final = 60
_HINTS: Final = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")


_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ScanError(Exception):
    """A scan that could not list the server's tools; the message says why."""


@dataclass(frozen=True, slots=True)
class Catalogue:
    """What a scan found: the tools it could read and the entries it could not."""

    protocol: str
    tools: list[ToolDefinition]
    skipped: list[str]


def add_command(commands: Any) -> None:
    scan = commands.add_parser(
        "scan", help="list a live MCP server's tools with risk classes and write a starter policy"
    )
    scan.add_argument("url", metavar="URL", help="the server's streamable HTTP endpoint")
    scan.add_argument(
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="'NAME: VALUE'",
        help="a request header, e.g. 'Authorization: Bearer ...' (repeatable)",
    )
    scan.add_argument(
        "--header-file",
        type=Path,
        metavar="FILE",
        help="headers as 'NAME: VALUE' lines (# comments), so a token is not on the command line",
    )
    scan.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default=DEFAULT_PROTOCOL,
        help="MCP revision: auto (discover, else the 2025-11-25 handshake) or a pinned one",
    )
    scan.add_argument(
        "--trust-annotations",
        action="store_true",
        help="take the server's readOnly/destructive hints as true (otherwise they only tighten)",
    )
    scan.add_argument("--output", type=Path, metavar="FILE", help="write a starter policy here")
    scan.add_argument(
        "--format",
        choices=[f.value for f in Format],
        default=Format.NATIVE.value,
        help="the starter policy's syntax: native (the seed's JSON), yaml, or intercept",
    )
    scan.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    scan.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds for it all")
    scan.set_defaults(handler=_scan)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        # Nothing of it is echoed: a header without its name is likely a bare token.
        raise argparse.ArgumentTypeError("expected 'NAME: VALUE', e.g. 'Authorization: Bearer ...'")
    if _CONTROL.search(text):
        # httpx's own refusal would quote the value.
        raise argparse.ArgumentTypeError(f"header {name!r}: its value has a control character")
    return name, value.strip()


def read_header_file(path: Path) -> list[tuple[str, str]]:
    """The headers of a `--header-file`; a bad line names the file and line, never the value."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ScanError(f"{path}: cannot read the header file: {e}") from e
    headers = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            headers.append(_header(line))
        except argparse.ArgumentTypeError as e:
            raise ScanError(f"{path}:{number}: {e}") from None
    return headers


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
    async with http, Client(transport, mode=PROTOCOLS[protocol], cache=None) as client:
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


def table(tools: Sequence[ScannedTool]) -> str:
    """The catalogue as aligned columns: name, class, open_world, annotations, description."""
    rows = [("NAME", "CLASS", "OPEN_WORLD", "ANNOTATIONS", "DESCRIPTION")]
    for item in tools:
        # Only the hints that class a tool: the rest of `annotations` is the server's to fill.
        hints = {k: v for k, v in item.tool.annotations.items() if k in _HINTS}
        cells = (
            summary(item.tool.name),
            item.risk.label,
            str(item.tool.open_world).lower(),
            _cell(json.dumps(hints, separators=(",", ":"), sort_keys=True)),
            _cell(summary(item.tool.description)),
        )
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[4]
        for row in rows
    )


def _cell(text: str) -> str:
    return text if len(text) <= _TABLE_CELL else text[: _TABLE_CELL - 1] + "…"


def _scan(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ScanError as e:
        print(f"mcp-authz scan: {e}", file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    if args.output is not None and args.output.exists() and not args.force:
        raise ScanError(f"{args.output}: exists; pass --force to overwrite it")
    _check_suffix(args.output, Format(args.format))
    headers = list(args.header)
    if args.header_file is not None:
        headers += read_header_file(args.header_file)
    if headers and _in_clear(args.url):
        print(
            f"note: {args.url} is plain http: the headers cross the network unencrypted",
            file=sys.stderr,
        )
    try:
        catalogue = anyio.run(list_tools, args.url, headers, args.protocol, args.timeout)
    except ScanError:
        raise
    except BaseException as e:  # the SDK raises groups of transport and protocol errors
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        # The cause may quote the server: one line, no control characters, bounded.
        raise ScanError(f"cannot list the tools of {args.url}: {summary(_cause(e))}") from e
    scanned = classify_tools(catalogue.tools, trusted=args.trust_annotations)
    print(f"{args.url}: {len(scanned)} tools (protocol {catalogue.protocol})")
    print(table(scanned))
    for note in _notes(scanned, catalogue.skipped, trusted=args.trust_annotations):
        print(f"note: {note}")
    if args.output is not None:
        fmt = Format(args.format)
        text = scaffold(scanned, fmt, source=args.url, trusted=args.trust_annotations)
        _check_loads(text, args.output)
        args.output.write_text(text, encoding="utf-8")
        print(
            f"wrote {args.output} ({fmt.value}); check it with `mcp-authz validate {args.output}`"
        )
    return EXIT_OK


def _notes(tools: Sequence[ScannedTool], skipped: Sequence[str], *, trusted: bool) -> list[str]:
    notes = []
    if not trusted:
        notes.append(
            "annotations are untrusted hints: no tool is classed read from them alone, so "
            "readOnlyHint tools show as write; pass --trust-annotations if you trust this server"
        )
    notes += [f"skipped {s}" for s in skipped]
    notes += [
        f"{item.tool.name[:64]!r} is left out of the policy: `*` or `?` would make it a pattern"
        for item in tools
        if not expressible(item.tool)
    ]
    return notes


def _in_clear(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1")


def _check_suffix(output: Path | None, fmt: Format) -> None:
    # The loader reads `.yaml`/`.yml` as YAML and anything else as JSON (docs/policy.md).
    if output is not None and fmt is not Format.NATIVE and output.suffix not in (".yaml", ".yml"):
        raise ScanError(f"{output}: --format {fmt.value} writes YAML: name the file .yaml or .yml")


def _check_loads(text: str, output: Path) -> None:
    # A scaffold that does not load is our bug; refuse to write it rather than hand it over.
    try:
        parse_policy(text.encode(), str(output))
    except PolicyError as e:
        raise ScanError(f"the starter policy would not load (a bug, please report it): {e}") from e


def _cause(error: BaseException) -> str:
    """The innermost message of an exception group, as the person scanning needs it."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, TimeoutError):
        return "no answer within the timeout"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
