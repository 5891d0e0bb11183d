"""All wiring in one place: settings in, a running gateway out."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass

from authz.audit import ArgumentAudit, AuditLog
from authz.decision import Decider
from authz.identity import Anonymous, FromHeader, FromJwtClaim, FromPeerPrincipal, IdentitySource
from authz.limits.base import CounterStore
from authz.limits.memory import MemoryStore
from authz.metrics import PolicyTools
from authz.policy.load import load_policy
from authz.policy.reload import PolicyHolder, PolicyWatcher
from authz.server import create_server
from authz.settings import IdentitySourceKind, Settings
from authz.telemetry import OtelSettings, Telemetry

log = logging.getLogger("mcp_authz")


def build_identity(settings: Settings) -> IdentitySource:
    kind = settings.identity_source
    if kind is IdentitySourceKind.HEADER:
        return FromHeader(settings.identity_header)
    if kind is IdentitySourceKind.JWT:
        return FromJwtClaim(settings.identity_claim, payload_key=settings.jwt_payload_key)
    if kind is IdentitySourceKind.MTLS:
        return FromPeerPrincipal()
    return Anonymous()


def build_store(settings: Settings) -> CounterStore:
    if settings.redis_url is None:
        log.warning(
            "no --redis-url: using the in-process counter store; limits are kept per replica "
            "and reset when this process restarts"
        )
        return MemoryStore()
    from authz.limits.redis import RedisStore  # noqa: PLC0415 - only when Redis is configured

    return RedisStore.from_url(
        settings.redis_url, prefix=settings.redis_prefix, timeout=settings.redis_timeout
    )


@dataclass
class Gateway:
    settings: Settings
    policy: PolicyHolder
    store: CounterStore
    audit: AuditLog
    telemetry: Telemetry

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        # Load first: a bad policy must stop start-up before anything else is opened.
        policy = PolicyHolder(load_policy(settings.policy))
        arguments = ArgumentAudit.configure(settings.audit_args, settings.audit_hash_key_file)
        # The only read of the OTEL_* variables (the SDK reads the rest inside start()).
        otel = OtelSettings.from_env(os.environ)
        telemetry = Telemetry.start(otel, PolicyTools(policy), settings.metrics_listen)
        backend = "memory" if settings.redis_url is None else "redis"
        store = telemetry.observe(build_store(settings), backend)
        return cls(settings, policy, store, AuditLog.open(settings.audit_log, arguments), telemetry)

    def decider(self) -> Decider:
        return Decider(
            self.policy,
            build_identity(self.settings),
            self.store,
            self.settings.fail_mode,
            jwt_payload_key=self.settings.jwt_payload_key,
        )

    async def serve(self) -> None:
        server, port, health = await create_server(
            self.settings.listen, self.decider(), self.audit, self.telemetry
        )
        log.info(
            "serving ext_authz on port %d; policy %s (%s); fail mode %s; identity from %s",
            port,
            self.settings.policy,
            self.policy.current.version,
            self.settings.fail_mode.value,
            self.settings.identity_source.value,
        )
        watcher = PolicyWatcher(
            self.settings.policy, self.policy, self.telemetry.metrics.record_reload
        )
        reloading = (
            asyncio.create_task(watcher.run(self.settings.reload_interval))
            if self.settings.reload_interval > 0
            else None
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: draining for up to %.1fs", self.settings.grace)
        if reloading is not None:
            reloading.cancel()
        # Health goes NOT_SERVING first so probes stop routing new work here while we drain.
        await health.enter_graceful_shutdown()
        await server.stop(self.settings.grace)
        await self.store.close()
        self.audit.close()
        self.telemetry.shutdown()
