"""The tail latency of one RedisStore.hit (the Redis script call), to choose --redis-timeout.

    .venv/bin/python bench/redis_latency.py [--seconds 20] [--concurrency 16] [--load 2]

Starts its own redis-server (never the system one) and `--load` busy processes that keep the
cores loaded, as a busy node does; then `--concurrency` tasks call hit() for `--seconds` and
it prints p50, p99, p99.9 and the maximum in milliseconds. Docs: docs/limits.md.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time

from authz.limits.base import CounterKey, Hit
from authz.limits.redis import RedisStore
from bench.bench_store import start_redis

_BUSY = "while True: pass"


async def sample(url: str, seconds: float, concurrency: int) -> list[float]:
    store = RedisStore.from_url(url, prefix="latency", timeout=5.0)
    took: list[float] = []
    end = time.monotonic() + seconds

    async def worker(n: int) -> None:
        hit = [Hit(CounterKey("bench", "grant", (f"user{n}",)), 10**9, 60)]
        while time.monotonic() < end:
            start = time.perf_counter()
            await store.hit(hit)
            took.append(time.perf_counter() - start)

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    await store.close()
    return sorted(took)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--load", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        redis, port = start_redis(workdir)
        load = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(args.load)]
        try:
            took = asyncio.run(sample(f"redis://127.0.0.1:{port}", args.seconds, args.concurrency))
        finally:
            for process in (*load, redis):
                process.kill()
                process.wait()
    ms = [t * 1000 for t in took]
    at = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    print(f"calls={len(ms)} p50={at(0.5):.2f} p99={at(0.99):.2f} "
          f"p99.9={at(0.999):.2f} max={ms[-1]:.2f} (ms)")  # fmt: skip


if __name__ == "__main__":
    main()
