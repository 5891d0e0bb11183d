"""A demo MCP server for the mcp-authz demo and end-to-end tests.

It speaks streamable HTTP at ``/mcp`` and serves both protocol revisions the official SDK
knows: 2025-11-25 (``initialize``, ``Mcp-Session-Id``, GET stream, DELETE) and 2026-07-28
(stateless, ``server/discover``). The SDK routes each request to one or the other by its
``MCP-Protocol-Version`` header, so one stateful app serves both.

The tools are fakes: nothing here touches an exchange or moves money.
"""

from __future__ import annotations

import argparse
import secrets

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    server.run("streamable-http", host=args.host, port=args.port, streamable_http_path="/mcp")


if __name__ == "__main__":
    main()
