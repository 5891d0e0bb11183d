"""`mcp-authz scan URL`: list a live MCP server's tools, class them, write a starter policy.

`command` is the subcommand (flags, the table, the policy file); `client` asks the server with
the official Python SDK, which is an optional dependency (`pip install 'mcp-authz[scan]'`), so
`client` is imported only when a scan runs and every other command starts without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz.protocol.tools import ToolDefinition


class ScanError(Exception):
    """A scan that could not list the server's tools; the message says why."""


@dataclass(frozen=True, slots=True)
class Catalogue:
    """What a scan found: the tools it could read and the entries it could not."""

    protocol: str
    tools: list[ToolDefinition]
    skipped: list[str]
