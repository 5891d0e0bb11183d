"""What a flood of pending approval requests costs in Redis: memory, and one listing page.

    .venv/bin/python -m bench.approvals_flood [--pending 2000] [--pages 100 200]

Starts its own redis-server (never the system one), asks `--pending` approval requests of
small calls (caps raised out of the way), and prints the Redis memory each one takes, then
the Redis time of one `ListApprovals` page of each size in `--pages` (INFO commandstats, the
mean of 20 calls). Docs: docs/approvals.md, "Caps and paging".
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

import redis

from authz.approvals.base import ApprovalCaps, Request
from authz.approvals.redis import RedisApprovals
from bench.bench_store import start_redis

CALLS_PER_PAGE = 20


async def flood(url: str, pending: int, pages: list[int]) -> None:
    client = redis.Redis.from_url(url)
    store = RedisApprovals.from_url(
        url, timeout=5.0, caps=ApprovalCaps(total=pending, per_identity=pending)
    )
    before = int(client.info("memory")["used_memory"])
    for i in range(pending):
        call = Request(f"agent-{i % 50}", "default", "withdraw", {"amount": i}, "/r", "reason")
        await store.request(call, 900)
    after = int(client.info("memory")["used_memory"])
    print(f"pending={pending} bytes_per_request={(after - before) / pending:.0f}")
    for size in pages:
        client.config_resetstat()
        for _ in range(CALLS_PER_PAGE):
            await store.pending(size)
        script = client.info("commandstats")["cmdstat_evalsha"]
        print(f"page={size} redis_ms_per_call={script['usec_per_call'] / 1000:.2f}")
    await store.close()
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pending", type=int, default=2000)
    parser.add_argument("--pages", type=int, nargs="+", default=[100, 200])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        server, port = start_redis(workdir)
        try:
            asyncio.run(flood(f"redis://127.0.0.1:{port}", args.pending, args.pages))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
