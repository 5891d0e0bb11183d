"""The Redis store's batcher: which requests share a script call (a fake client, so the
order of events is ours to choose; tests/integration/test_redis_store.py runs real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from authz.limits.redis import MAX_BATCH, MAX_BATCH_HOLD, RedisStore, _Batcher


class Redis:
    """Answers each EVALSHA when the test releases it, and notes each call's batch size."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.pending: list[asyncio.Future[None]] = []
        self.called = asyncio.Event()

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> list[list[int]]:
        size = int(keys_and_args[numkeys])
        self.batches.append(size)
        self.called.set()
        release = asyncio.get_running_loop().create_future()
        self.pending.append(release)
        await release
        return [[1, 1, -1]] * size

    def release(self) -> None:
        self.pending.pop(0).set_result(None)

    async def next_call(self) -> None:
        self.called.clear()
        await self.called.wait()


def submit(batcher: _Batcher) -> asyncio.Future[list[int]]:
    return batcher.submit(["k"], [1])


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_with_a_call_in_flight_requests_of_later_turns_wait_the_hold_and_share_one() -> None:
    redis = Redis()
    batcher = _Batcher(redis, timeout=10, hold=60)  # type: ignore[arg-type]
    first = submit(batcher)
    await redis.next_call()
    held = [submit(batcher)]
    await turns()
    held.append(submit(batcher))  # one per loop turn, as grpc.aio hands them over
    await turns()
    assert redis.batches == [1]  # nothing sent while the first call is on its way
    redis.release()
    await first
    await turns()
    # Nor when it returns: more requests may still come within the hold, and grpc.aio's
    # next ones are usually further apart than a Redis round trip.
    held.append(submit(batcher))
    await turns()
    assert redis.batches == [1]
    assert not any(f.done() for f in held)
    drained = asyncio.ensure_future(batcher.drain())
    await redis.next_call()  # closing sends the held queue without waiting its 60 s
    assert redis.batches == [1, 3]
    redis.release()
    await drained
    assert [await f for f in held] == [[1, 1, -1]] * 3


async def test_a_full_batch_goes_at_once_whatever_the_hold() -> None:
    redis = Redis()
    batcher = _Batcher(redis, timeout=10, hold=60)  # type: ignore[arg-type]
    submit(batcher)
    await redis.next_call()
    held = [submit(batcher) for _ in range(MAX_BATCH)]
    await redis.next_call()
    assert redis.batches == [1, MAX_BATCH]
    redis.release()
    redis.release()
    assert [await f for f in held] == [[1, 1, -1]] * MAX_BATCH


async def test_with_nothing_in_flight_a_request_waits_for_no_hold() -> None:
    redis = Redis()
    batcher = _Batcher(redis, timeout=10, hold=60)  # type: ignore[arg-type]
    answer = submit(batcher)
    await redis.next_call()  # sent at the end of the turn, not 60 s later
    redis.release()
    assert await answer == [1, 1, -1]


async def test_the_hold_bounds_the_wait_when_the_call_in_flight_never_returns() -> None:
    redis = Redis()
    batcher = _Batcher(redis, timeout=10, hold=0.001)  # type: ignore[arg-type]
    submit(batcher)
    await redis.next_call()
    held = submit(batcher)
    await redis.next_call()  # the first call is still out: the hold sent this one
    assert redis.batches == [1, 1]
    redis.release()
    redis.release()
    assert await held == [1, 1, -1]


async def test_without_a_hold_each_turn_sends_its_own_call() -> None:
    redis = Redis()
    batcher = _Batcher(redis, timeout=10)  # type: ignore[arg-type]
    submit(batcher)
    await redis.next_call()
    submit(batcher)
    await redis.next_call()
    assert redis.batches == [1, 1]
    redis.release()
    redis.release()


@pytest.mark.parametrize("hold", [-0.001, MAX_BATCH_HOLD * 2])
def test_a_hold_out_of_bounds_is_refused_at_construction(hold: float) -> None:
    with pytest.raises(ValueError, match="batch hold must be 0 to 5 ms"):
        RedisStore.from_url("redis://127.0.0.1:1/0", batch_hold=hold)
