"""A sick Redis makes the store raise StoreUnavailable quickly, never answer wrongly, and the
same store object counts again once Redis is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.crc import key_slot

from authz.limits.base import CounterKey, Hit, StoreUnavailable
from authz.limits.breaker import CircuitBreaker, CircuitOpen
from authz.limits.redis import RedisStore
from tests.conftest import RedisServer, start_cluster

TIMEOUT = 0.05
# What a loaded machine may add to a bounded wait. The property under test is that a silent
# Redis costs the timeout and not the OS's TCP timeouts (minutes): any slack far below those
# keeps the test able to fail, without timing the machine's scheduler.
SLACK = 1.0
HIT = Hit(CounterKey("calls", "grant", ("alice",)), limit=10, window=3600)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def breaker_clock() -> Clock:
    return Clock()


@pytest.fixture
async def store_on(breaker_clock: Clock) -> AsyncIterator[Callable[[str], RedisStore]]:
    stores: list[RedisStore] = []

    def make(url: str) -> RedisStore:
        breaker = CircuitBreaker(threshold=3, cooldown=1.0, clock=breaker_clock)
        store = RedisStore.from_url(url, prefix="faults", timeout=TIMEOUT, breaker=breaker)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def timed_failure(store: RedisStore) -> tuple[StoreUnavailable, float]:
    start = time.perf_counter()
    with pytest.raises(StoreUnavailable) as e:
        await store.hit([HIT])
    return e.value, time.perf_counter() - start


async def test_a_hung_redis_times_out_then_the_breaker_fails_fast(
    own_redis: RedisServer, store_on: Callable[[str], RedisStore], breaker_clock: Clock
) -> None:
    store = store_on(own_redis.url)
    await store.ready()
    assert (await store.hit([HIT])).allowed
    own_redis.pause()
    try:
        for _ in range(3):
            error, took = await timed_failure(store)
            assert "did not answer within 50 ms" in str(error)
            assert took < TIMEOUT + SLACK
        # Open now: refused at once, no packet sent, whatever the number of callers.
        results = await asyncio.gather(*(timed_failure(store) for _ in range(50)))
        assert all(isinstance(e, CircuitOpen) and took < SLACK for e, took in results)
    finally:
        own_redis.resume()
    breaker_clock.now += 1.0
    # The half-open probe reaches Redis, which kept its count through the pause. The three
    # calls that timed out sat in Redis's socket buffer and ran on resume: a timeout may
    # over-count by the calls in flight, never under-count.
    probe = await store.hit([HIT])
    assert probe.allowed
    assert 2 <= probe.states[0].used <= 5


async def test_many_callers_on_a_hung_redis_all_answer_within_the_timeout(
    own_redis: RedisServer, store_on: Callable[[str], RedisStore]
) -> None:
    store = store_on(own_redis.url)
    await store.hit([HIT])
    own_redis.pause()
    try:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(store.hit([HIT]) for _ in range(100)), return_exceptions=True
        )
        assert time.perf_counter() - start < TIMEOUT + SLACK
    finally:
        own_redis.resume()
    assert all(isinstance(r, StoreUnavailable) for r in results)


async def test_a_restarted_redis_counts_again_without_a_new_store(
    own_redis: RedisServer, store_on: Callable[[str], RedisStore], breaker_clock: Clock
) -> None:
    store = store_on(own_redis.url)
    await store.ready()
    assert (await store.hit([HIT])).allowed
    own_redis.kill()
    for _ in range(3):
        error, took = await timed_failure(store)
        assert took < TIMEOUT + SLACK
        assert f"Redis at {own_redis.url} failed: ConnectionError" in str(error)
    assert isinstance((await timed_failure(store))[0], CircuitOpen)
    own_redis.start()  # same port, empty: no data and no scripts
    breaker_clock.now += 1.0
    assert [(await store.hit([HIT])).states[0].used for _ in range(2)] == [1, 2]


async def test_a_probe_that_fails_reopens_the_breaker(
    own_redis: RedisServer, store_on: Callable[[str], RedisStore], breaker_clock: Clock
) -> None:
    store = store_on(own_redis.url)
    own_redis.kill()
    for _ in range(3):
        await timed_failure(store)
    breaker_clock.now += 1.0
    error, _ = await timed_failure(store)
    assert not isinstance(error, CircuitOpen)  # the probe went to Redis
    assert isinstance((await timed_failure(store))[0], CircuitOpen)


async def test_a_flushed_script_cache_is_reloaded(
    redis_server: RedisServer, store_on: Callable[[str], RedisStore]
) -> None:
    store = store_on(redis_server.url)
    hit = Hit(CounterKey("flush", "global", ()), limit=3, window=3600)
    assert (await store.hit([hit])).allowed
    redis_server.command("SCRIPT", "FLUSH")
    assert (await store.hit([hit])).allowed
    assert (await store.hit([hit])).states[0].used == 3


async def test_a_read_only_replica_is_unavailable_never_wrong(
    own_redis: RedisServer, tmp_path: Path, store_on: Callable[[str], RedisStore]
) -> None:
    replica = RedisServer(tmp_path, "--replicaof", "127.0.0.1", str(own_redis.port)).start()
    try:
        store = store_on(replica.url)
        error, _ = await timed_failure(store)
        assert "read-only replica" in str(error)
        # Promoted (a failover): the same store counts on it again.
        replica.command("REPLICAOF", "NO", "ONE")
        assert (await store.hit([HIT])).allowed
    finally:
        replica.stop()


async def test_out_of_memory_is_unavailable_and_counts_nothing(
    own_redis: RedisServer, store_on: Callable[[str], RedisStore]
) -> None:
    store = store_on(own_redis.url)
    await store.ready()
    assert (await store.hit([HIT])).allowed
    own_redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    own_redis.command("CONFIG", "SET", "maxmemory", "1")
    error, _ = await timed_failure(store)
    assert "OutOfMemoryError" in str(error)
    own_redis.command("CONFIG", "SET", "maxmemory", "0")
    # The refused call was not counted.
    assert (await store.hit([HIT])).states[0].used == 2


async def test_a_dead_cluster_node_is_unavailable_then_recovers(
    tmp_path: Path, store_on: Callable[[str], RedisStore], breaker_clock: Clock
) -> None:
    # A short node timeout: a restarted primary waits about that long before serving again.
    nodes, url = start_cluster(tmp_path, node_timeout_ms=500)
    try:
        store = store_on(url)
        # As serve does before it listens: discovering the cluster is not paid out of the
        # first call's 50 ms, which a loaded machine can exceed.
        await store.ready()
        assert (await store.hit([HIT])).allowed
        owner = next(n for n in nodes if n.command("CLUSTER", "COUNTKEYSINSLOT", _slot()) == 1)
        owner.kill()
        error, took = await timed_failure(store)
        assert took < TIMEOUT + SLACK
        assert not isinstance(error, CircuitOpen)
        owner.start()  # back on its port with its nodes.conf, empty
        breaker_clock.now += 1.0
        await _eventually_allowed(store, breaker_clock)
    finally:
        for node in nodes:
            node.stop()


def _slot() -> int:
    return key_slot(b"faults")


async def _eventually_allowed(store: RedisStore, clock: Clock) -> None:
    # The cluster needs a moment to see the node again; probe each breaker cool-down.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            assert (await store.hit([HIT])).allowed
        except StoreUnavailable:
            clock.now += 1.0
            await asyncio.sleep(0.05)
        else:
            return
    raise AssertionError("the store did not count again after the node came back")
