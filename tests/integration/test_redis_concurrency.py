"""Racing callers on one counter: exactly `limit` admitted, whoever they are.

Time comes from Redis here (no injected clock), as in production; the window is an hour so
nothing leaves it while the test runs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

from authz.limits.base import CounterKey, Hit
from authz.limits.redis import RedisStore
from tests.conftest import RedisServer

WORKER = """
import asyncio, sys
from authz.limits.base import CounterKey, Hit
from authz.limits.redis import RedisStore

async def main(url, prefix, limit, calls):
    store = RedisStore.from_url(url, prefix=prefix, timeout=2.0)
    hit = Hit(CounterKey("shared", "global", ()), limit=limit, window=3600)
    print("ready", flush=True)
    sys.stdin.readline()
    results = await asyncio.gather(*(store.hit([hit]) for _ in range(calls)))
    await store.close()
    print(sum(r.allowed for r in results), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


async def test_concurrent_clients_admit_exactly_the_limit(redis_server: RedisServer) -> None:
    prefix = f"race-{uuid.uuid4().hex}"
    stores = [RedisStore.from_url(redis_server.url, prefix=prefix, timeout=2.0) for _ in range(8)]
    grant = Hit(CounterKey("shared", "grant", ("alice",)), limit=137, window=3600)
    budget = Hit(CounterKey("budget", "global", ()), limit=10_000, window=3600, cost=3)
    try:
        results = await asyncio.gather(
            *(store.hit([grant, budget]) for store in stores for _ in range(50))
        )
    finally:
        for store in stores:
            await store.close()
    assert sum(r.allowed for r in results) == 137
    used = sorted(r.states[0].used for r in results if r.allowed)
    assert used == list(range(1, 138))
    assert max(r.states[1].used for r in results) == 3 * 137


def test_several_processes_admit_exactly_the_limit(redis_server: RedisServer) -> None:
    prefix, limit, calls = f"procs-{uuid.uuid4().hex}", 150, 100
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_server.url, prefix, str(limit), str(calls)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        # Start them together, so that their calls really race.
        for w in workers:
            assert w.stdout is not None
            assert w.stdout.readline().strip() == "ready"
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        admitted = [int(w.communicate(timeout=30)[0]) for w in workers]
    finally:
        for w in workers:
            w.kill()
            w.wait()
            for stream in (w.stdin, w.stdout):
                if stream is not None:
                    stream.close()
    assert all(w.returncode == 0 for w in workers)
    assert sum(admitted) == limit
