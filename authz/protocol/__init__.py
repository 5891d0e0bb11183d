"""Reading a request: the plain HTTP request, MCP/JSON-RPC parsing, who is calling, error codes.

The lowest layer: it imports nothing else of the package."""
