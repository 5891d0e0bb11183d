"""Human approval of risky tool calls: the store contract and its backends."""
