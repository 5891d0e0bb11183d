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

import logging
import multiprocessing
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from multiprocessing.process import BaseProcess
from typing import Any, Final

import uvloop

log = logging.getLogger("mcp_authz.workers")

# How often the parent looks at its workers.
WATCH_INTERVAL: Final = 0.2
# Beyond the drain grace, how long a worker may take to exit before it is killed.
EXIT_SLACK: Final = 5.0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Runs `main` on uvloop, both transports: the HTTP server is a plain asyncio protocol,
    and grpc.aio (which runs on any asyncio loop) costs a fifth fewer instructions per check
    on uvloop than on the standard loop (docs/performance.md)."""
    uvloop.run(main)


def run_workers(worker: Callable[[int], None], count: int, exit_timeout: float) -> int:
    """Starts `count` processes running `worker(index)` and waits for a stop signal or a death.

    `worker` must be picklable (a module-level function or a partial of one): the processes
    are spawned, never forked from a process holding gRPC state.
    """
    spawn = multiprocessing.get_context("spawn")
    workers = [
        spawn.Process(target=worker, args=(i,), name=f"mcp-authz-worker-{i}") for i in range(count)
    ]
    for process in workers:
        process.start()
    stopping = _on_stop_signals()
    failed = _watch(workers, stopping)
    _stop(workers, exit_timeout + EXIT_SLACK)
    return 1 if failed else 0


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
