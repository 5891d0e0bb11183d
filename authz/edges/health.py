"""What this replica's standard gRPC health service (grpc.health.v1) reports, and why.

Envoy's active health checks and the kubelet's readiness probe ask for the whole server ("")
or for the Authorization service; both say SERVING only while this replica can judge a Check:
start-up has reached the stores, it is not draining, and, in fail-closed mode, its stores
still answer. A replica whose Redis is gone would refuse every limited call; reporting
NOT_SERVING lets Envoy send the calls to a replica that can judge them instead.

`LIVENESS` says only that the process answers (SERVING from the first moment, NOT_SERVING once
draining): a liveness probe that followed the store would restart every replica during a Redis
outage, and a restarted replica still has no Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from grpc_health.v1 import health, health_pb2

from authz.limits.base import StoreUnavailable

log = logging.getLogger("mcp_authz.health")

AUTHORIZATION_SERVICE: Final = "envoy.service.auth.v3.Authorization"
# The services that answer "can this replica judge a Check now?".
JUDGING: Final = ("", AUTHORIZATION_SERVICE)
# The service that answers "is the process alive?" (for liveness and startup probes).
LIVENESS: Final = "liveness"
# Seconds between two looks at the stores: with Envoy's 1 s health-check interval and 2
# failures to eject (deploy/envoy), a dead store takes a replica out of rotation in ~3 s.
WATCH_INTERVAL: Final = 1.0
# Seconds one look may take. A store slower than this for a ping would time out most Checks
# anyway; without a bound a black-holed Redis would hold the look (and the status) for as
# long as the client's own connect timeout.
WATCH_TIMEOUT: Final = 1.0

_SERVING: Final = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


class ReplicaHealth:
    """The statuses of one health servicer. Once `drain` has run nothing turns SERVING again
    (grpcio-health-checking ignores every later `set`)."""

    def __init__(self, servicer: health.aio.HealthServicer) -> None:
        self._servicer = servicer
        self._judging: bool | None = None

    @classmethod
    async def start(cls, servicer: health.aio.HealthServicer, *, judging: bool) -> ReplicaHealth:
        replica = cls(servicer)
        await servicer.set(LIVENESS, _SERVING)
        await replica.set_judging(judging)
        return replica

    @property
    def judging(self) -> bool:
        return bool(self._judging)

    async def set_judging(self, judging: bool) -> None:
        if judging == self._judging:
            return
        self._judging = judging
        for service in JUDGING:
            await self._servicer.set(service, _SERVING if judging else _NOT_SERVING)

    async def drain(self) -> None:
        """NOT_SERVING everywhere, for good: the first step of a shutdown, so that health
        checks stop routing new work here while in-flight Checks finish."""
        await self._servicer.enter_graceful_shutdown()

    async def watch(self, stores_answer: Callable[[], Awaitable[None]]) -> None:
        """Until cancelled: NOT_SERVING while `stores_answer` raises StoreUnavailable or takes
        longer than WATCH_TIMEOUT, SERVING again once it returns. Each change is logged once."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            error = await _look(stores_answer)
            if error is None and not self.judging:
                log.warning("the store answers again: health is SERVING")
            elif error is not None and self.judging:
                log.warning("health is NOT_SERVING (fail mode closed): %s", error)
            await self.set_judging(error is None)


async def _look(stores_answer: Callable[[], Awaitable[None]]) -> str | None:
    """None when the stores answered in time, else why not."""
    try:
        async with asyncio.timeout(WATCH_TIMEOUT):
            await stores_answer()
    except StoreUnavailable as e:
        return str(e) or type(e).__name__
    except TimeoutError:
        return f"the store did not answer within {WATCH_TIMEOUT:.1f}s"
    return None
