"""A demo MCP server for the mcp-authz demo and end-to-end tests.

It speaks streamable HTTP at ``/mcp`` and serves both protocol revisions the official SDK
knows: 2025-11-25 (``initialize``, ``Mcp-Session-Id``, GET stream, DELETE) and 2026-07-28
(stateless, ``server/discover``). The SDK routes each request to one or the other by its
``MCP-Protocol-Version`` header, so one stateful app serves both.

With ``--header-log FILE`` it appends one JSON line per HTTP request it receives (method, path,
headers), so a test can see what the gateway let through upstream (credential separation).

The tools are fakes: nothing here touches an exchange or moves money.
"""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server import MCPServer

server = MCPServer(
    "mcp-authz-demo",
    instructions="Demo tools behind the mcp-authz gateway; every result is fake.",
)


@server.tool()
def binance_us_create_listen_key() -> str:
    """Create a (fake) Binance.US user-data-stream listen key."""
    return secrets.token_hex(30)


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def transfer_funds(amount: float, to: str) -> str:
    """Pretend to transfer funds; the seed policy never lets this through."""
    return f"transferred {amount:.2f} to {to} (not really)"


class HeaderLog:
    """ASGI middleware writing each HTTP request's method, path and headers to `path`."""

    def __init__(self, app: Any, path: Path) -> None:
        self._app = app
        self._path = path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
            line = {"method": scope["method"], "path": scope["path"], "headers": headers}
            # One write per line, flushed at once: the test reads the file while we serve.
            with self._path.open("a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")
        await self._app(scope, receive, send)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--header-log", type=Path, help="append each request's headers here")
    args = parser.parse_args(argv)
    if args.header_log is None:
        server.run("streamable-http", host=args.host, port=args.port, streamable_http_path="/mcp")
        return
    app = HeaderLog(
        server.streamable_http_app(streamable_http_path="/mcp", host=args.host), args.header_log
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
