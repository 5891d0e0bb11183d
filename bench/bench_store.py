"""RedisStore.hit against the `limits` library's Redis strategies, on one redis-server, one run.

    .venv/bin/python bench/bench_store.py [--seconds 5] [--concurrency 64]

Starts its own redis-server on a free port (never the system one), then for each contender:
1. throughput: `--concurrency` asyncio tasks call hit() for `--seconds` on 1000 keys
   (100 calls a minute each, the shape of per-grant limits); checks/s, p50 and p99;
2. correctness: bursts of 3x the limit on one key at random moments (seeded), timing every
   call; a window [a, a+W) holding more than the limit of calls that both started and ended
   inside it is a certain over-admission, whatever the timing noise.
Prints a table and writes bench/results/store.json. Needs `pip install limits`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from authz.limits.base import CounterKey, Hit
from authz.limits.redis import RedisStore

RESULTS = Path(__file__).parent / "results" / "store.json"
KEYS = 1000
LIMIT_PER_MINUTE = 100
BURST_LIMIT = 20  # per 1 s window in the correctness phase
BURSTS = 12

# Calls one key (by index) under a limit of `limit` per `window` seconds; True if admitted.
HitFn = Callable[[int], Awaitable[bool]]


@dataclass
class Contender:
    name: str
    # (limit, window) -> (hit function, close)
    make: Callable[[int, int], tuple[HitFn, Callable[[], Awaitable[None]]]]


@dataclass
class Row:
    name: str
    checks: int
    checks_per_s: float
    p50_ms: float
    p99_ms: float
    burst_calls: int
    admitted: int
    max_in_window: int
    limit: int
    over_admits: bool


def ours(url: str) -> Contender:
    def make(limit: int, window: int) -> tuple[HitFn, Callable[[], Awaitable[None]]]:
        store = RedisStore.from_url(url, prefix=f"bench-{uuid.uuid4().hex}", timeout=1.0)
        hits = [
            [Hit(CounterKey("bench", "grant", (f"user{i}",)), limit, window)] for i in range(KEYS)
        ]

        async def hit(i: int) -> bool:
            return (await store.hit(hits[i])).allowed

        return hit, store.close

    return Contender("mcp-authz RedisStore", make)


def limits_lib(url: str, name: str, strategy: type[RateLimiter]) -> Contender:
    def make(limit: int, window: int) -> tuple[HitFn, Callable[[], Awaitable[None]]]:
        storage = RedisStorage(
            f"async+{url}", implementation="redispy", key_prefix=f"bench-{uuid.uuid4().hex}"
        )
        limiter = strategy(storage)
        item = (
            RateLimitItemPerMinute(limit) if window == 60 else RateLimitItemPerSecond(limit, window)
        )
        users = [f"user{i}" for i in range(KEYS)]

        async def hit(i: int) -> bool:
            return await limiter.hit(item, users[i])

        async def close() -> None:
            await storage.reset()

        return hit, close

    return Contender(name, make)


async def throughput(hit: HitFn, seconds: float, concurrency: int) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    rng = random.Random(1)  # noqa: S311 - a reproducible workload, not a secret

    async def worker() -> None:
        while (start := time.perf_counter()) < deadline:
            await hit(rng.randrange(KEYS))
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def bursts(hit: HitFn) -> list[tuple[float, float, bool]]:
    """(start, end, admitted) of every call, wall-clock like Redis TIME and `limits`."""
    rng = random.Random(7)  # noqa: S311 - a reproducible workload, not a secret
    calls: list[tuple[float, float, bool]] = []

    async def one() -> None:
        start = time.time()
        admitted = await hit(0)
        calls.append((start, time.time(), admitted))

    for _ in range(BURSTS):
        await asyncio.sleep(rng.uniform(0.2, 0.9))
        await asyncio.gather(*(one() for _ in range(3 * BURST_LIMIT)))
    return calls


def max_in_window(calls: list[tuple[float, float, bool]], window: float) -> int:
    """Most admitted calls that certainly happened inside one window [a, a + window)."""
    admitted = sorted((s, e) for s, e, ok in calls if ok)
    return max(
        (sum(1 for s, e in admitted if a <= s and e < a + window) for a, _ in admitted),
        default=0,
    )


async def measure(c: Contender, seconds: float, concurrency: int) -> Row:
    hit, close = c.make(LIMIT_PER_MINUTE, 60)
    await throughput(hit, 0.5, concurrency)  # warm up: connections, scripts
    latencies = await throughput(hit, seconds, concurrency)
    await close()
    hit, close = c.make(BURST_LIMIT, 1)
    calls = await bursts(hit)
    await close()
    worst = max_in_window(calls, 1.0)
    q = statistics.quantiles(latencies, n=100)
    return Row(
        name=c.name,
        checks=len(latencies),
        checks_per_s=len(latencies) / seconds,
        p50_ms=q[49] * 1000,
        p99_ms=q[98] * 1000,
        burst_calls=len(calls),
        admitted=sum(ok for _, _, ok in calls),
        max_in_window=worst,
        limit=BURST_LIMIT,
        over_admits=worst > BURST_LIMIT,
    )


def print_table(rows: list[Row]) -> None:
    print(
        f"{'store':34} {'checks/s':>9} {'p50 ms':>7} {'p99 ms':>7}  "
        f"{'max admitted in 1 s (limit)':>28}  over-admits"
    )
    for r in rows:
        print(
            f"{r.name:34} {r.checks_per_s:9.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f}  "
            f"{f'{r.max_in_window} ({r.limit})':>28}  {'YES' if r.over_admits else 'no'}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", workdir]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return process, port
        except OSError:
            time.sleep(0.01)
    process.kill()
    raise SystemExit("redis-server did not start")


async def run(url: str, seconds: float, concurrency: int) -> list[Row]:
    contenders = [
        ours(url),
        limits_lib(url, "limits moving-window", MovingWindowRateLimiter),
        limits_lib(url, "limits sliding-window-counter", SlidingWindowCounterRateLimiter),
    ]
    return [await measure(c, seconds, concurrency) for c in contenders]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        process, port = start_redis(workdir)
        try:
            rows = asyncio.run(run(f"redis://127.0.0.1:{port}", args.seconds, args.concurrency))
        finally:
            process.terminate()
            process.wait()
    print_table(rows)
    fastest_limits = max(r.checks_per_s for r in rows[1:])
    ratio = rows[0].checks_per_s / fastest_limits
    print(f"\nRedisStore vs the faster limits strategy: {ratio:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join([".venv/bin/python", "bench/bench_store.py", *sys.argv[1:]]),
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "keys": KEYS,
        "python": platform.python_version(),
        "redis": subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip(),
        "speedup_vs_faster_limits": ratio,
        "rows": [asdict(r) for r in rows],
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
