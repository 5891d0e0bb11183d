"""Running the gateway: one process, or `--workers N` processes sharing the listen port.

Python runs one check at a time per process, so more cores need more processes. Each worker
is a whole gateway (its own policy holder watching the same file, its own connections to
the same Redis) bound to the same address with SO_REUSEPORT, and the kernel spreads Envoy's
connections over them. Counters must then live in Redis: with the in-process store each
worker would keep its own, and a limit of N would admit up to N per worker.

The parent only starts, watches and stops the workers: SIGTERM or SIGINT is passed on (each
worker drains as a single process does), and a worker that dies stops the rest, so the
orchestrator sees the failure and restarts the pod rather than run on with fewer workers.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from multiprocessing.process import BaseProcess
from typing import Any, Final

from authz.http_transport import require_http_identity
from authz.policy.load import load_policy
from authz.settings import Settings, Transport

log = logging.getLogger("mcp_authz.workers")

# How often the parent looks at its workers.
WATCH_INTERVAL: Final = 0.2
# Beyond the drain grace, how long a worker may take to exit before it is killed.
EXIT_SLACK: Final = 5.0
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_loop(main: Coroutine[Any, Any, None], transport: Transport) -> None:
    """Runs `main`: on uvloop for the HTTP transport (its server is a plain asyncio
    protocol), on the standard loop for grpc.aio, which is what grpcio supports."""
    if transport is Transport.HTTP:
        import uvloop  # noqa: PLC0415 - only the HTTP transport needs it

        uvloop.run(main)
    else:
        asyncio.run(main)


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
    if settings.listen.rpartition(":")[2] == "0":
        raise ValueError("--workers needs a fixed port in --listen: port 0 differs per worker")


def run_workers(settings: Settings) -> int:
    """Checks the settings and the policy, starts the workers and waits for them.

    Raises PolicyError or ValueError before any worker starts, as a single process would.
    """
    require_shared_state(settings)
    load_policy(settings.policy)
    if settings.transport is Transport.HTTP:
        require_http_identity(settings.identity_source)
    spawn = multiprocessing.get_context("spawn")  # never fork a process holding gRPC state
    workers = [
        spawn.Process(target=_worker, args=(settings, i), name=f"mcp-authz-worker-{i}")
        for i in range(settings.workers)
    ]
    for worker in workers:
        worker.start()
    log.info("started %d workers on %s (%s)", len(workers), settings.listen, settings.transport)
    stopping = _on_stop_signals()
    failed = _watch(workers, stopping)
    _stop(workers, settings.grace + EXIT_SLACK)
    return 1 if failed else 0


def _worker(settings: Settings, index: int) -> None:
    from authz.runner import Gateway  # noqa: PLC0415 - imported in the spawned process

    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr, format=LOG_FORMAT)
    gateway = Gateway.build(settings)
    log.info("worker %d serving", index)
    run_loop(gateway.serve(), settings.transport)


def _on_stop_signals() -> list[int]:
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    return received


def _watch(workers: Sequence[BaseProcess], stopping: list[int]) -> bool:
    """Waits for a stop signal (False) or a worker's death (True)."""
    while not stopping:
        dead = [w for w in workers if not w.is_alive()]
        if dead:
            log.error(
                "worker %s exited with status %s: stopping the others",
                dead[0].name,
                dead[0].exitcode,
            )
            return True
        time.sleep(WATCH_INTERVAL)
    return False


def _stop(workers: Sequence[BaseProcess], timeout: float) -> None:
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            worker.terminate()  # SIGTERM: the worker drains, as a single process would
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join()
