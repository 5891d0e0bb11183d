"""The admin side: the gRPC admin API (approvals, counters, policy status) and its CLI client."""
