"""The decision core: one request in, one Outcome out, and the JSON-RPC reply it becomes.

It calls policy (pure), the approval store and the counter store; every edge calls it."""
