"""All wiring in one place: settings in, a running gateway out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import grpc

from authz import __version__
from authz.admin.actions import AdminActions
from authz.admin.server import (
    AdminServicer,
    AdminTls,
    AdminTokens,
    create_admin_server,
    is_loopback,
)
from authz.approvals.base import Approval, ApprovalCaps, ApprovalStore
from authz.approvals.memory import MemoryApprovals
from authz.approvals.webhook import ApprovalWebhook, read_secret
from authz.catalogue.base import Bounds, Catalogue
from authz.catalogue.memory import MemoryCatalogue
from authz.console.config import ConsoleConfig, build_console
from authz.core.decision import Decider, FailMode
from authz.core.grant_identity import GrantIdentity
from authz.core.reply import UpstreamCredential
from authz.core.response_side import ResponseSide
from authz.core.tool_check import ToolCheck
from authz.edges.authz_grpc import create_extproc_server, create_server
from authz.edges.authz_http import HttpCheck, HttpServer, create_http_server, require_http_identity
from authz.edges.health import ReplicaHealth, serve_http
from authz.edges.workers import run_loop, run_workers
from authz.grants.base import GrantKey, Grants
from authz.grants.file import FileGrants
from authz.limits.base import CounterStore, StoreUnavailable
from authz.limits.memory import MemoryStore
from authz.limits.redis_client import RedisBacked
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.observe.catalogue_audit import AuditedCatalogue
from authz.observe.logs import configure as configure_logs
from authz.observe.metrics import PolicyTools
from authz.observe.recent import RecentRecords
from authz.observe.telemetry import OtelSettings, Telemetry
from authz.policy.load import load_policy
from authz.policy.model import Policy
from authz.policy.reload import PolicyHolder, PolicyWatcher
from authz.protocol.identity import (
    Anonymous,
    FromHeader,
    FromJwtClaim,
    FromPeerPrincipal,
    IdentitySource,
    IdentitySourceKind,
)
from authz.settings import Settings, Transport

if TYPE_CHECKING:
    from authz.console.server import ConsoleServer

log = logging.getLogger("mcp_authz")
# Seconds between start-up's attempts to reach a store that did not answer.
READY_RETRY = 1.0
# Seconds the exporters get to flush at shutdown even when draining took all of --grace.
EXPORT_FLOOR = 0.5


def build_identity(settings: Settings) -> IdentitySource:
    kind = settings.identity_source
    if kind is IdentitySourceKind.HEADER:
        return FromHeader(settings.identity_header)
    if kind is IdentitySourceKind.JWT:
        return FromJwtClaim(settings.identity_claim, payload_key=settings.jwt_payload_key)
    if kind is IdentitySourceKind.MTLS:
        return FromPeerPrincipal()
    return Anonymous()


# The most a check over gRPC waits for others to share its Redis call (docs/performance.md),
# and only while another call is already on its way.
GRPC_BATCH_HOLD = 0.001


def build_store(settings: Settings) -> CounterStore:
    if settings.redis_url is None:
        log.warning(
            "no --redis-url: using the in-process counter store; limits are kept per replica "
            "and reset when this process restarts"
        )
        return MemoryStore(
            max_sessions=settings.max_sessions_per_identity,
            max_keys=settings.memory_store_max_keys,
        )
    from authz.limits.redis import RedisStore  # noqa: PLC0415 - only when Redis is configured

    return RedisStore.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        timeout=settings.redis_timeout,
        max_sessions=settings.max_sessions_per_identity,
        lease=settings.lease,
        # grpc.aio hands over one request per loop turn, so batching by turn alone sends
        # nearly one call each; the HTTP transport's requests already share turns.
        batch_hold=GRPC_BATCH_HOLD if settings.transport is Transport.GRPC else 0.0,
    )


def build_catalogue(settings: Settings) -> Catalogue | None:
    """The tool catalogue, when on: kept with the counters (Redis, shared by every replica,
    or this process), bounded by the settings."""
    if not settings.catalogue:
        return None
    if not settings.extproc:
        raise ValueError(
            "--catalogue on needs --extproc on: only ext_proc sees tools/list answers, so "
            "every tool would stay unlisted and every tool call be refused"
        )
    bounds = Bounds(
        settings.catalogue_max_upstreams,
        settings.catalogue_max_tools,
        settings.catalogue_max_definition_bytes,
    )
    if min(bounds.max_upstreams, bounds.max_tools, bounds.max_definition_bytes) < 1:
        raise ValueError("the --catalogue-max-* bounds must be at least 1")
    if settings.redis_url is None:
        return MemoryCatalogue(bounds)
    from authz.catalogue.redis import RedisCatalogue  # noqa: PLC0415 - only with Redis

    return RedisCatalogue.from_url(
        settings.redis_url,
        bounds=bounds,
        prefix=settings.redis_prefix,
        timeout=settings.redis_timeout,
    )


def build_approvals(settings: Settings) -> ApprovalStore:
    """Approvals live with the counters: in Redis when there is one, else in this process."""
    caps = ApprovalCaps(
        total=settings.approvals_max_pending,
        per_identity=settings.approvals_max_pending_per_identity,
    )
    if settings.redis_url is None:
        return MemoryApprovals(caps=caps)
    from authz.approvals.redis import RedisApprovals  # noqa: PLC0415 - only with Redis

    return RedisApprovals.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        timeout=settings.redis_timeout,
        caps=caps,
    )


def build_webhook(settings: Settings) -> ApprovalWebhook | None:
    if settings.approval_webhook is None:
        return None
    secret_file = settings.approval_webhook_secret_file
    secret = read_secret(secret_file) if secret_file else None
    return ApprovalWebhook(
        settings.approval_webhook, secret, console_url=settings.console_public_url
    )


def console_config(settings: Settings) -> ConsoleConfig | None:
    """The console's settings, checked now; None when --console-listen is not given."""
    if settings.console_listen is None:
        return None
    if settings.console_session_secret_file is None:
        log.warning(
            "no --console-session-secret-file: console sessions are signed with a key made "
            "for this process, so sign-ins end at a restart and work on this replica only "
            "(behind a Service with several replicas, give every replica the same key)"
        )
    return build_console(
        settings.console_listen,
        public_url=settings.console_public_url,
        roles_file=settings.console_roles_file,
        oidc_issuer=settings.console_oidc_issuer,
        oidc_client_id=settings.console_oidc_client_id,
        oidc_client_secret_file=settings.console_oidc_client_secret_file,
        trusted_header=settings.console_trusted_header,
        trace_url=settings.console_trace_url,
        session_secret_file=settings.console_session_secret_file,
        redact=settings.console_redact_args,
    )


def build_grants(settings: Settings) -> Grants | None:
    """The grant store of `--identity-source token`: Redis when there is one, else the
    grants file; either way the tokens' hashes are keyed by the grant key file."""
    if settings.identity_source is not IdentitySourceKind.TOKEN:
        return None
    if settings.grant_key_file is None:
        raise ValueError(
            "--identity-source token needs --grant-key-file: grant tokens are stored only as "
            "hashes keyed by it (make one with: openssl rand -hex 32 > grant.key)"
        )
    key = GrantKey.load(settings.grant_key_file)
    if settings.redis_url is not None:
        from authz.grants.redis import RedisGrants  # noqa: PLC0415 - only with Redis

        store = RedisGrants.from_url(
            settings.redis_url, prefix=settings.redis_prefix, timeout=settings.redis_timeout
        )
        return Grants(store, key)
    if settings.grants_file is None:
        raise ValueError(
            "--identity-source token without --redis-url needs --grants-file: where the "
            "grants (token hashes, labels, policies) are kept"
        )
    return Grants(FileGrants(settings.grants_file), key)


def build_upstream(settings: Settings) -> UpstreamCredential | None:
    """The upstream's own credential, read once; never logged (its repr hides the value)."""
    path = settings.upstream_bearer_file
    if path is None:
        return None
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ValueError(f"cannot read the upstream credential file {path}: {e.strerror}") from None
    if not secret or "\n" in secret:
        raise ValueError(f"the upstream credential file {path} must hold one line")
    header = settings.upstream_header.lower()
    return UpstreamCredential(header, f"Bearer {secret}" if header == "authorization" else secret)


def new_decision_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class AdminConfig:
    listen: str
    tokens: AdminTokens
    tls: AdminTls | None


def build_admin(settings: Settings) -> AdminConfig | None:
    """The admin API's settings, checked now: it needs a tokens file, and TLS needs both a
    certificate and its key."""
    listen = settings.admin_listen
    if listen is None:
        return None
    if settings.admin_tokens_file is None:
        raise ValueError(
            f"--admin-listen {listen} needs --admin-tokens-file: the admin API approves "
            "calls and resets budgets, and never serves anyone it cannot identify"
        )
    tokens = AdminTokens.load(settings.admin_tokens_file)
    cert, key, ca = settings.admin_tls_cert, settings.admin_tls_key, settings.admin_tls_client_ca
    if (cert is None) != (key is None) or (ca is not None and cert is None):
        raise ValueError("admin TLS needs --admin-tls-cert and --admin-tls-key together")
    tls = AdminTls(cert, key, ca) if cert is not None and key is not None else None
    if tls is None and not is_loopback(listen):
        log.warning(
            "the admin API on %s is not loopback and has no TLS: tokens cross the network in "
            "clear (use --admin-tls-cert/--admin-tls-key, or a mesh that encrypts)",
            listen,
        )
    return AdminConfig(listen, tokens, tls)


@dataclass
class Gateway:
    settings: Settings
    policy: PolicyHolder
    store: CounterStore
    audit: AuditLog
    telemetry: Telemetry
    approvals: ApprovalStore = field(default_factory=MemoryApprovals)
    webhook: ApprovalWebhook | None = None
    admin: AdminConfig | None = None
    grants: Grants | None = None
    upstream: UpstreamCredential | None = None
    console: ConsoleConfig | None = None
    # The decisions and admin actions the console shows (fed by the audit log).
    recent: RecentRecords | None = None
    # The tool catalogue every edge uses (None when off); its changes reach the audit log.
    catalogue: Catalogue | None = None
    # The same backend unwrapped, to connect it at start-up.
    catalogue_backend: Catalogue | None = None

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        # Load first: a bad policy must stop start-up before anything else is opened.
        policy = PolicyHolder(load_policy(settings.policy))
        if settings.transport is Transport.HTTP:
            require_http_identity(settings.identity_source)
        admin, webhook = build_admin(settings), build_webhook(settings)
        # Before anything starts: bad caps stop start-up with the flags' names.
        approvals, counters = build_approvals(settings), build_store(settings)
        console = console_config(settings)
        recent = RecentRecords() if console is not None else None
        arguments = ArgumentAudit.configure(settings.audit_args, settings.audit_hash_key_file)
        # The only read of the OTEL_* variables (the SDK reads the rest inside start()).
        otel = OtelSettings.from_env(os.environ)
        telemetry = Telemetry.start(otel, PolicyTools(policy), settings.metrics_listen)
        backend = "memory" if settings.redis_url is None else "redis"
        store = telemetry.observe(counters, backend)
        audit = AuditLog.open(settings.audit_log, arguments, recent)
        grants, upstream = build_grants(settings), build_upstream(settings)
        catalogue = build_catalogue(settings)
        _warn_unclassed(policy.current, catalogue is not None)
        return cls(
            settings,
            policy,
            store,
            audit,
            telemetry,
            approvals=approvals,
            webhook=webhook,
            admin=admin,
            grants=grants,
            upstream=upstream,
            console=console,
            recent=recent,
            catalogue=AuditedCatalogue(catalogue, audit) if catalogue is not None else None,
            catalogue_backend=catalogue,
        )

    def decider(self) -> Decider:
        return Decider(
            self.policy,
            build_identity(self.settings),
            self.store,
            self.settings.fail_mode,
            # 128 random bits as 32 hex digits, like uuid4().hex at a tenth of its cost.
            new_id=new_decision_id,
            jwt_payload_key=self.settings.jwt_payload_key,
            approvals=self.approvals,
            on_approval_requested=self._announce,
            grants=(
                GrantIdentity(self.grants, self.settings.jwt_payload_key)
                if self.grants is not None
                else None
            ),
            tools=(
                ToolCheck(
                    self.catalogue,
                    self.settings.catalogue_upstream,
                    fail_open=self.settings.fail_mode is FailMode.OPEN,
                )
                if self.catalogue is not None
                else None
            ),
        )

    def response_side(self) -> ResponseSide | None:
        """What ext_proc runs on answers; None when --extproc off."""
        if not self.settings.extproc:
            return None
        return ResponseSide(
            self.policy, self.store, self.catalogue, self.settings.catalogue_upstream
        )

    async def serve_extproc(self, health: ReplicaHealth) -> grpc.aio.Server | None:
        """ext_proc on its own port, for --transport http (with gRPC it shares the listener);
        it serves the replica's gRPC health too."""
        side = self.response_side()
        if side is None or self.settings.transport is not Transport.HTTP:
            return None
        server, port = await create_extproc_server(
            self.settings.extproc_listen, side, self.audit, health
        )
        log.info("serving ext_proc on port %d", port)
        return server

    def _announce(self, approval: Approval) -> None:
        log.info(
            "approval %s requested: %s by %s (rule %s)",
            approval.id,
            approval.request.tool,
            approval.request.identity,
            approval.request.rule,
        )
        if self.webhook is not None:
            self.webhook.notify(approval)

    async def serve_admin(self) -> tuple[grpc.aio.Server, int] | None:
        """The admin API, when configured: on its own port, started."""
        if self.admin is None:
            return None
        servicer = AdminServicer(
            self.admin.tokens,
            self.approvals,
            self.store,
            self.policy,
            self.audit,
            telemetry=self.telemetry,
            grants=self.grants,
            catalogue=self.catalogue,
        )
        server, port = await create_admin_server(self.admin.listen, servicer, self.admin.tls)
        log.info(
            "serving the admin API on port %d (%s)", port, "TLS" if self.admin.tls else "plaintext"
        )
        return server, port

    async def serve_console(self) -> ConsoleServer | None:
        """The web console, when configured: on its own port, in this event loop, started."""
        if self.console is None or self.recent is None:
            return None
        from authz.console.app import create_app  # noqa: PLC0415 - only with a console
        from authz.console.server import ConsoleServer, bind  # noqa: PLC0415

        actions = AdminActions(
            self.approvals,
            self.store,
            self.policy,
            self.audit,
            self.telemetry,
            catalogue=self.catalogue,
        )
        server = ConsoleServer(
            create_app(self.console, actions, self.recent), bind(self.console.listen)
        )
        await server.start()
        log.info("serving the console on port %d (%s)", server.port, self.console.public_url)
        return server

    async def until_ready(self, stop: asyncio.Event) -> None:
        """Returns once the stores have connected, loaded their scripts and answered, so no
        Check pays that out of its per-call timeout; retries, saying why, until SIGTERM."""
        while not stop.is_set():
            try:
                await self.stores_answer()
            except StoreUnavailable as e:
                log.warning(
                    "waiting for the store before serving (retrying in %.0fs): %s", READY_RETRY, e
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), READY_RETRY)
            else:
                return

    async def stores_answer(self) -> None:
        """Raises StoreUnavailable unless every store a Check may need answers."""
        await self.store.ready()
        await self.approvals.ready()
        if isinstance(self.catalogue_backend, RedisBacked):
            await self.catalogue_backend.ready()

    async def _serve_checks(
        self, stop: asyncio.Event, health: ReplicaHealth
    ) -> tuple[grpc.aio.Server | HttpServer, int]:
        """The ext_authz server of the configured transport, started once the stores are
        ready: gRPC's binds at once with health NOT_SERVING until then, HTTP's binds after."""
        if self.settings.transport is Transport.HTTP:
            await self.until_ready(stop)
            check = HttpCheck(
                self.decider(),
                self.audit,
                self.telemetry,
                self.settings.identity_source,
                self.upstream,
            )
            server: grpc.aio.Server | HttpServer
            server, port = await create_http_server(
                self.settings.listen, check, reuse_port=self.settings.workers > 1
            )
        else:
            server, port, _ = await create_server(
                self.settings.listen,
                self.decider(),
                self.audit,
                self.telemetry,
                self.upstream,
                health=health,
                response_side=self.response_side(),
            )
            await self.until_ready(stop)
        if not stop.is_set():
            await health.set_judging(True)
        return server, port

    async def serve_health(self, health: ReplicaHealth) -> asyncio.Server | None:
        """The HTTP health endpoint, when configured: up before the checks, so that a probe
        reads NOT_SERVING while start-up waits for the stores, not a refused connection."""
        if self.settings.health_listen is None:
            return None
        server, port = await serve_http(
            self.settings.health_listen, health, reuse_port=self.settings.workers > 1
        )
        log.info("serving HTTP health (GET /ready, GET /live) on port %d", port)
        return server

    async def serve(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        health = await ReplicaHealth.start(
            judging=False, on_change=self.telemetry.metrics.record_serving
        )
        health_http = await self.serve_health(health)
        # The admin API first: once the ext_authz port reports SERVING, both are up.
        admin = await self.serve_admin()
        console = await self.serve_console()
        extproc = await self.serve_extproc(health)
        server, port = await self._serve_checks(stop, health)
        log.info(
            "mcp-authz %s serving ext_authz on port %d; transport %s; policy %s (%s); "
            "fail mode %s; identity from %s",
            __version__,
            port,
            self.settings.transport.value,
            self.settings.policy,
            self.policy.current.version,
            self.settings.fail_mode.value,
            self.settings.identity_source.value,
        )
        if self.webhook is not None:
            self.webhook.start()
        watcher = PolicyWatcher(
            self.settings.policy, self.policy, self.telemetry.metrics.record_reload
        )
        reloading = (
            asyncio.create_task(watcher.run(self.settings.reload_interval))
            if self.settings.reload_interval > 0
            else None
        )
        watching = self._watch_stores(health)
        await stop.wait()
        log.info("shutting down: draining for up to %.1fs", self.settings.grace)
        for task in (reloading, watching):
            if task is not None:
                task.cancel()
        await self._stop(server, health, admin[0] if admin is not None else None, console, extproc)
        if health_http is not None:
            health_http.close()
            await health_http.wait_closed()

    def _watch_stores(self, health: ReplicaHealth) -> asyncio.Task[None] | None:
        """In fail-closed mode, health follows the stores: a replica that would refuse every
        limited call says so, and Envoy's health checks send the calls elsewhere. In
        fail-open mode it keeps serving, as the operator chose answers over judgement."""
        if self.settings.fail_mode is not FailMode.CLOSED:
            return None
        return asyncio.create_task(health.watch(self.stores_answer))

    async def _stop(
        self,
        server: grpc.aio.Server | HttpServer,
        health: ReplicaHealth,
        admin: grpc.aio.Server | None,
        console: ConsoleServer | None = None,
        extproc: grpc.aio.Server | None = None,
    ) -> None:
        """Everything down within --grace, and the exporters within EXPORT_FLOOR after it at
        worst: each step gets what the earlier ones left of one deadline, never a grace of its
        own, so the process exits before Kubernetes' SIGKILL whatever the collector does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.grace

        def left() -> float:
            return max(deadline - loop.time(), 0.0)

        # Health goes NOT_SERVING first so probes stop routing new work here while we drain.
        await health.drain()
        # ext_proc's own server (with --transport http) drains beside the checks, in the same
        # deadline: the responses it still processes belong to requests the checks let in.
        await asyncio.gather(
            server.stop(left()), *(() if extproc is None else (extproc.stop(left()),))
        )
        if admin is not None:
            await admin.stop(left())
        if console is not None:
            await console.stop(left())
        if self.webhook is not None:
            await self.webhook.close(grace=left())
        await self.store.close()
        await self.approvals.close()
        if self.grants is not None:
            await self.grants.close()
        if self.catalogue is not None:
            await self.catalogue.close()
        self.audit.close()
        self.telemetry.shutdown(max(left(), EXPORT_FLOOR))


def _warn_unclassed(policy: Policy, catalogue: bool) -> None:
    """Risk rules without a catalogue only ever see the class `unknown`: say so at start-up."""
    if catalogue or not any(g.risk for g in (policy.everyone, *policy.grants)):
        return
    log.warning(
        "the policy keys rules on risk classes but --catalogue is off: every tool is classed "
        "unknown, so only risk.unknown rules apply"
    )


def run(settings: Settings) -> int:
    """Serves until SIGTERM: in this process, or in `settings.workers` processes sharing the
    listen port. Raises PolicyError or ValueError before anything starts serving."""
    if settings.workers == 1:
        gateway = Gateway.build(settings)
        run_loop(gateway.serve())
        return 0
    require_shared_state(settings)
    # Checked once here, so a bad policy stops start-up before any worker is spawned.
    load_policy(settings.policy)
    if settings.transport is Transport.HTTP:
        require_http_identity(settings.identity_source)
    log.info(
        "starting %d workers on %s (%s)", settings.workers, settings.listen, settings.transport
    )
    return run_workers(partial(_worker, settings), settings.workers, settings.grace)


def require_shared_state(settings: Settings) -> None:
    """Raises ValueError for settings that several workers cannot share."""
    if settings.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {settings.workers}")
    if settings.workers == 1:
        return
    if settings.redis_url is None:
        raise ValueError(
            f"--workers {settings.workers} needs --redis-url: with the in-process store "
            "every worker would keep its own counters, and a limit of N would admit up to "
            f"{settings.workers}xN calls"
        )
    if settings.metrics_listen is not None:
        raise ValueError(
            f"--metrics-listen serves one process's metrics and --workers {settings.workers} "
            "starts several: export metrics over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT) instead"
        )
    if settings.console_listen is not None:
        raise ValueError(
            f"--console-listen serves from one process and --workers {settings.workers} "
            "starts several: run the console in a gateway of its own with --workers 1"
        )
    if settings.listen.rpartition(":")[2] == "0":
        raise ValueError("--workers needs a fixed port in --listen: port 0 differs per worker")


def _worker(settings: Settings, index: int) -> None:
    """One worker process: a whole gateway on the shared port."""
    configure_logs(settings.log_level, settings.log_format)
    gateway = Gateway.build(settings)
    log.info("worker %d serving", index)
    run_loop(gateway.serve())
