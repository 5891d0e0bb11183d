"""What this replica's standard gRPC health service (grpc.health.v1) reports, and why.

Envoy's active health checks and the kubelet's readiness probe ask for the whole server ("")
or for the Authorization service; both say SERVING only while this replica can judge a Check:
start-up has reached the stores, it is not draining, and, in fail-closed mode, its stores
still answer. A replica whose Redis is gone would refuse every limited call; reporting
NOT_SERVING lets Envoy send the calls to a replica that can judge them instead.

`LIVENESS` says only that the process answers (SERVING from the first moment, NOT_SERVING once
draining): a liveness probe that followed the store would restart every replica during a Redis
outage, and a restarted replica still has no Redis.

`--health-listen` serves the same two answers over plain HTTP/1.1 (`GET /ready`, `GET /live`:
200 or 503), for what cannot ask gRPC health: Envoy's http_health_check on the HTTP transport's
cluster (Envoy refuses grpc_health_check on an HTTP/1.1 cluster), load balancers, httpGet
probes. On a port of its own, never the check port: there every path is an agent's request to
judge, and a health path answered 200 would read as an allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
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

# The HTTP endpoint: a request head is one short line and a few headers; anything longer, or
# slower, is not a health checker and gets the connection closed.
HTTP_MAX_HEAD: Final = 4096
HTTP_READ_TIMEOUT: Final = 2.0

_SERVING: Final = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


def _unrecorded(judging: bool) -> None:
    """The default `on_change`: a replica with no metrics to tell."""


class ReplicaHealth:
    """The statuses of one gRPC health servicer (`servicer`, for a gRPC server to serve). Once
    `drain` has run nothing turns SERVING again (grpcio-health-checking ignores every later
    `set`, and so does `set_judging`). `on_change` hears every change of `judging` (the
    `mcp_authz_serving` gauge), the first one included."""

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        on_change: Callable[[bool], None] = _unrecorded,
    ) -> None:
        self.servicer = servicer
        self._on_change = on_change
        self._judging: bool | None = None
        self._drained = False

    @classmethod
    async def start(
        cls, *, judging: bool, on_change: Callable[[bool], None] = _unrecorded
    ) -> ReplicaHealth:
        replica = cls(health.aio.HealthServicer(), on_change)
        await replica.servicer.set(LIVENESS, _SERVING)
        await replica.set_judging(judging)
        return replica

    @property
    def judging(self) -> bool:
        return bool(self._judging) and not self._drained

    @property
    def live(self) -> bool:
        return not self._drained

    async def set_judging(self, judging: bool) -> None:
        if judging == self._judging or self._drained:
            return
        self._judging = judging
        # The gauge first: whoever reads the new status can already scrape it.
        self._on_change(judging)
        for service in JUDGING:
            await self.servicer.set(service, _SERVING if judging else _NOT_SERVING)

    async def drain(self) -> None:
        """NOT_SERVING everywhere, for good: the first step of a shutdown, so that health
        checks stop routing new work here while in-flight Checks finish."""
        if self.judging:
            self._on_change(False)
        self._drained = True
        await self.servicer.enter_graceful_shutdown()

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


async def serve_http(
    listen: str, replica: ReplicaHealth, *, reuse_port: bool = False
) -> tuple[asyncio.Server, int]:
    """The HTTP health endpoint, started on `listen` (port 0 picks a free one), and its port."""
    host, _, port = listen.rpartition(":")
    server = await asyncio.start_server(
        lambda reader, writer: _answer(reader, writer, replica),
        host.strip("[]") or None,
        int(port),
        limit=HTTP_MAX_HEAD,
        reuse_port=reuse_port or None,
        family=socket.AF_UNSPEC,
    )
    bound: int = server.sockets[0].getsockname()[1]
    return server, bound


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replica: ReplicaHealth
) -> None:
    """One request, one answer, then the connection closes (health checkers reconnect)."""
    try:
        async with asyncio.timeout(HTTP_READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()
        return
    status, body = _status(head.split(b"\r\n", 1)[0], replica)
    writer.write(
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {len(body) + 1}"
        f"\r\nconnection: close\r\n\r\n{body}\n".encode()
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


def _status(request_line: bytes, replica: ReplicaHealth) -> tuple[str, str]:
    method, _, rest = request_line.partition(b" ")
    path = rest.partition(b" ")[0]
    if method != b"GET":
        return "405 Method Not Allowed", "GET /ready or GET /live"
    if path == b"/ready":
        up = replica.judging
    elif path == b"/live":
        up = replica.live
    else:
        return "404 Not Found", "GET /ready or GET /live"
    return ("200 OK", "SERVING") if up else ("503 Service Unavailable", "NOT_SERVING")
