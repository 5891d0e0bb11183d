"""Observability beside the request path: the audit log, traces and metrics."""
