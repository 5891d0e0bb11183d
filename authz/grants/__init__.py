"""Grants: labelled bearer tokens, one per MCP client or automation, kept only as keyed hashes."""
