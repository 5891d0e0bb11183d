"""mcp-authz: an Envoy ext_authz policy gateway for MCP tool calls."""

__version__ = "0.1.0"
