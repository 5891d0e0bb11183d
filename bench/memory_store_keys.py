"""Bytes per live session budget in the in-process store, for --memory-store-max-keys.

    .venv/bin/python -m bench.memory_store_keys [--keys 50000]

Counts one call in each of `--keys` sessions (500 identities, 36-character session ids) and
prints what `tracemalloc` saw allocated per key: its log, its key and its session entry.
Docs: docs/limits.md, "Keys clients choose".
"""

from __future__ import annotations

import argparse
import asyncio
import tracemalloc

from authz.limits.base import CounterKey, Hit
from authz.limits.memory import MemoryStore


async def measure(keys: int) -> float:
    store = MemoryStore(max_keys=keys, max_sessions=keys)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(keys):
        subject = (f"agent-{i % 500}", f"{i:036d}")
        await store.hit([Hit(CounterKey("calls", "session", subject), limit=30, window=60)])
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / keys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=50_000)
    args = parser.parse_args()
    print(f"keys={args.keys} bytes_per_key={asyncio.run(measure(args.keys)):.0f}")


if __name__ == "__main__":
    main()
