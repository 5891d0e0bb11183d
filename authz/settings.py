"""All start-up configuration, parsed once into one frozen object and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from authz.approvals.base import DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_IDENTITY
from authz.catalogue.base import DEFAULT_BOUNDS, DEFAULT_UPSTREAM
from authz.core.decision import FailMode
from authz.limits.base import DEFAULT_MAX_SESSIONS
from authz.limits.lease import LeasePolicy
from authz.limits.memory import DEFAULT_MAX_KEYS
from authz.observe.logs import LogFormat
from authz.protocol.identity import IdentitySourceKind


class Transport(StrEnum):
    """How Envoy asks: ext_authz `grpc_service` or `http_service` (docs/performance.md)."""

    GRPC = "grpc"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class Settings:
    policy: Path
    listen: str = "127.0.0.1:9191"
    redis_url: str | None = None
    redis_prefix: str = "mcp-authz"
    # Per Redis call: ~8x the p99.9 measured on 2 loaded cores (docs/limits.md), and well
    # inside Envoy's ext_authz timeout (250 ms in deploy/envoy).
    redis_timeout: float = 0.1
    fail_mode: FailMode = FailMode.CLOSED
    # The most sessions of one identity with live session-scoped budgets, in either store; a
    # new session past it is refused (-32001), never made room for (docs/limits.md).
    max_sessions_per_identity: int = DEFAULT_MAX_SESSIONS
    # The most live counter keys of the in-process store (no --redis-url).
    memory_store_max_keys: int = DEFAULT_MAX_KEYS
    # Which Redis-counted limits a replica leases units of, and how many (docs/limits.md).
    lease: LeasePolicy = field(default_factory=LeasePolicy)
    identity_source: IdentitySourceKind = IdentitySourceKind.NONE
    identity_header: str = "x-agent-id"
    identity_claim: str = "sub"
    jwt_payload_key: str = "jwt_payload"
    audit_log: str = "-"
    # Argument paths logged in clear (PATH or NAME:PATH); all others only as a keyed hash.
    audit_args: tuple[str, ...] = ()
    # The hash key; without one a key is made per process and hashes match only within it.
    audit_hash_key_file: Path | None = None
    # host:port of the Prometheus scrape endpoint; None serves none.
    metrics_listen: str | None = None
    # host:port of the HTTP health endpoint (GET /ready, GET /live); None serves none.
    health_listen: str | None = None
    # host:port of the admin gRPC API (approvals, counters, policy status); None serves none.
    admin_listen: str | None = None
    # Lines of `TOKEN IDENTITY [claim=value,...]`: who may call the admin API, as whom.
    admin_tokens_file: Path | None = None
    # TLS for the admin API; with a client CA, clients must present a certificate (mTLS).
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    admin_tls_client_ca: Path | None = None
    # POSTed a JSON body for every new approval request; the secret signs it (HMAC-SHA256).
    approval_webhook: str | None = None
    approval_webhook_secret_file: Path | None = None
    # The most pending approval requests held, in total and per identity; a new request past
    # either is refused with -32007 (docs/approvals.md, "Caps").
    approvals_max_pending: int = DEFAULT_MAX_PENDING
    approvals_max_pending_per_identity: int = DEFAULT_MAX_PENDING_PER_IDENTITY
    # Seconds between looks at the policy file for a new version; 0 turns reloading off.
    reload_interval: float = 2.0
    grace: float = 5.0
    log_level: str = "INFO"
    # Operational logs on stderr: text, or one JSON object a line (observe/logs.py).
    log_format: LogFormat = LogFormat.TEXT
    transport: Transport = Transport.GRPC
    # The response side (ext_proc): served on the ext_authz gRPC listener with --transport
    # grpc, on this address of its own with --transport http; False serves none.
    extproc: bool = True
    extproc_listen: str = "127.0.0.1:9194"
    # Processes sharing the listen port (SO_REUSEPORT); more than one needs Redis.
    workers: int = 1
    # Identity source `token`: the key of the grant tokens' hashes, and the grants file used
    # when there is no Redis (with Redis, grants live there, shared by every replica).
    grant_key_file: Path | None = None
    grants_file: Path | None = None
    # The upstream MCP server's own credential, set on allowed requests in place of the
    # agent's: the header, and the file holding its (bearer) value.
    upstream_header: str = "authorization"
    upstream_bearer_file: Path | None = None
    # The web console (authz/console; docs/console.md): off unless console_listen is set.
    console_listen: str | None = None
    console_public_url: str | None = None
    console_roles_file: Path | None = None
    console_oidc_issuer: str | None = None
    console_oidc_client_id: str | None = None
    console_oidc_client_secret_file: Path | None = None
    # Only on a listener that the authenticating proxy alone can reach.
    console_trusted_header: str | None = None
    # A link to each decision's trace, `{trace_id}` replaced (Grafana, Tempo, Jaeger).
    console_trace_url: str | None = None
    console_session_secret_file: Path | None = None
    # Argument paths the console never shows, even to approvers (PATH or TOOL:PATH).
    console_redact_args: tuple[str, ...] = ()
    # The tool catalogue (docs/catalogue.md): pins each upstream's tool definitions, checks
    # tools/call arguments against their schema and classes tools by risk. Off until the
    # ext_proc filter feeds it tools/list answers: on, a tool never listed is refused.
    catalogue: bool = False
    # Which catalogue a request belongs to: a fixed upstream name, or ":authority".
    catalogue_upstream: str = DEFAULT_UPSTREAM
    catalogue_max_upstreams: int = DEFAULT_BOUNDS.max_upstreams
    catalogue_max_tools: int = DEFAULT_BOUNDS.max_tools
    catalogue_max_definition_bytes: int = DEFAULT_BOUNDS.max_definition_bytes
