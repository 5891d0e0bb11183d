"""What each upstream MCP server offers: its tools' definitions, pinned by fingerprint."""
