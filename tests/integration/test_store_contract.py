"""The CounterStore contract, run against every store: memory, Redis and Redis Cluster.

Time is a fake clock in whole or tenth seconds, which the Redis store's quanta (window/100)
hit exactly, so every store must give exactly the same answers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from authz.limits.base import DEFAULT_MAX_SESSIONS, CounterKey, CounterStore, Crowded, Hit
from authz.limits.memory import MemoryStore
from authz.limits.redis import RedisStore
from tests.conftest import RedisServer


class FakeClock:
    # A multiple of every quantum used below (0.1 s for 10 s windows, 0.6 s for 60 s ones).
    def __init__(self, now: float = 1_200.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MakeStore = Callable[..., CounterStore]


@pytest.fixture(params=["memory", "redis", "cluster"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    stores: list[CounterStore] = []
    prefix = f"contract-{uuid.uuid4().hex}"

    def redis_url() -> str:
        if request.param == "cluster":
            return str(request.getfixturevalue("redis_cluster"))
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url

    url = None if request.param == "memory" else redis_url()

    def make(clock: FakeClock, max_sessions: int = DEFAULT_MAX_SESSIONS) -> CounterStore:
        store: CounterStore = (
            MemoryStore(clock, max_sessions=max_sessions)
            if url is None
            else RedisStore.from_url(
                url, prefix=prefix, timeout=1.0, clock=clock, max_sessions=max_sessions
            )
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(make_store: MakeStore, clock: FakeClock) -> CounterStore:
    return make_store(clock)


def hit(name: str = "calls", limit: int = 5, window: int = 10, cost: int = 1, *subject: str) -> Hit:
    return Hit(CounterKey(name, "grant", subject or ("alice",)), limit, window, cost)


async def test_admits_exactly_the_limit(store: CounterStore) -> None:
    results = [await store.hit([hit()]) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.states[0].used for r in results] == [1, 2, 3, 4, 5, 5]
    assert [r.states[0].remaining for r in results] == [4, 3, 2, 1, 0, 0]


async def test_empty_request_counts_nothing(store: CounterStore) -> None:
    result = await store.hit([])
    assert result.allowed
    assert result.states == ()


async def test_denied_request_counts_nothing_anywhere(store: CounterStore) -> None:
    wide, narrow = hit("wide", limit=5), hit("narrow", limit=2)
    for _ in range(2):
        assert (await store.hit([wide, narrow])).allowed
    refused = await store.hit([wide, narrow])
    assert not refused.allowed
    assert [s.used for s in refused.states] == [2, 2]
    assert [s.hit.key.counter for s in refused.blocking] == ["narrow"]
    # The wide limit was not charged for the refused request: three more fit, not two.
    assert [(await store.hit([wide])).allowed for _ in range(4)] == [True, True, True, False]


async def test_the_window_rolls(store: CounterStore, clock: FakeClock) -> None:
    start = clock.now
    for offset in (0, 4, 8):
        clock.now = start + offset
        assert (await store.hit([hit(limit=3)])).allowed
    clock.now = start + 9.9
    assert not (await store.hit([hit(limit=3)])).allowed
    # At t+10 the first call leaves the window and exactly one slot frees up.
    clock.now = start + 10
    assert (await store.hit([hit(limit=3)])).allowed
    refused = await store.hit([hit(limit=3)])
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(4)


async def test_retry_after_comes_from_the_window(store: CounterStore, clock: FakeClock) -> None:
    await store.hit([hit(limit=2)])
    clock.now += 3
    await store.hit([hit(limit=2)])
    clock.now += 2
    refused = await store.hit([hit(limit=2)])
    assert not refused.allowed
    assert refused.states[0].retry_after == pytest.approx(5)
    clock.now += 5
    assert (await store.hit([hit(limit=2)])).allowed


async def test_retry_after_is_the_latest_blocking_limit(
    store: CounterStore, clock: FakeClock
) -> None:
    short, long = hit("short", limit=1, window=10), hit("long", limit=1, window=60)
    await store.hit([short, long])
    clock.now += 1
    refused = await store.hit([short, long])
    assert [s.retry_after for s in refused.states] == [pytest.approx(9), pytest.approx(59)]
    assert refused.retry_after == pytest.approx(59)


async def test_subjects_counters_and_scopes_are_independent(store: CounterStore) -> None:
    keys = [
        CounterKey("calls", "grant", ("a:b", "c")),
        CounterKey("calls", "grant", ("a", "b:c")),
        CounterKey("calls", "grant", ("a", "b", "c")),
        CounterKey("calls", "grant", ("a\x00b", "c")),
        CounterKey("calls", "identity", ("a:b", "c")),
        CounterKey("calls:grant", "", ("a:b", "c")),
        CounterKey("calls", "grant", ()),
        CounterKey("calls", "grant", ("",)),
        CounterKey("calls", "grant", ("{x}", "\ud800")),
    ]
    for key in keys:
        assert (await store.hit([Hit(key, limit=1, window=10)])).allowed, key
    for key in keys:
        assert not (await store.hit([Hit(key, limit=1, window=10)])).allowed, key


async def test_costs_are_weighted(store: CounterStore, clock: FakeClock) -> None:
    assert (await store.hit([hit(limit=10, cost=4)])).allowed
    clock.now += 1
    assert (await store.hit([hit(limit=10, cost=4)])).allowed
    refused = await store.hit([hit(limit=10, cost=4)])
    assert not refused.allowed
    assert refused.states[0].used == 8
    assert refused.states[0].remaining == 2
    # Four units must leave: the first entry (4 units, at t=0) frees them at t=10.
    assert refused.retry_after == pytest.approx(9)
    fits = await store.hit([hit(limit=10, cost=2)])
    assert fits.allowed
    assert fits.states[0].used == 10


async def test_retry_after_waits_for_enough_units(store: CounterStore, clock: FakeClock) -> None:
    for _ in range(3):
        await store.hit([hit(limit=3)])
        clock.now += 1
    refused = await store.hit([hit(limit=3, cost=2)])
    # Two units must leave: the second call's (t=1), so at t=11, which is 8 s from t=3.
    assert refused.retry_after == pytest.approx(8)


async def test_cost_above_the_limit_never_fits(store: CounterStore) -> None:
    refused = await store.hit([hit(limit=3, cost=4), hit("other")])
    assert not refused.allowed
    assert refused.states[0].retry_after is None
    assert refused.states[1].retry_after == 0
    assert refused.retry_after is None
    assert (await store.hit([hit(limit=3, cost=3)])).allowed


async def test_one_key_twice_in_a_request_counts_both(store: CounterStore) -> None:
    twice = [hit(limit=3), hit(limit=3)]
    allowed = await store.hit(twice)
    assert allowed.allowed
    assert [s.used for s in allowed.states] == [1, 2]
    refused = await store.hit(twice)
    assert not refused.allowed
    assert (await store.hit([hit(limit=3)])).allowed
    assert not (await store.hit([hit(limit=3)])).allowed


async def test_a_request_that_alone_exceeds_a_limit_never_fits(store: CounterStore) -> None:
    refused = await store.hit([hit(limit=3, cost=2), hit(limit=3, cost=2)])
    assert not refused.allowed
    assert refused.retry_after is None


async def test_usage_reads_a_budget_without_counting(store: CounterStore, clock: FakeClock) -> None:
    fresh = await store.usage(hit(limit=3))
    assert (fresh.used, fresh.remaining, fresh.retry_after) == (0, 3, 0)
    for _ in range(3):
        await store.hit([hit(limit=3)])
        clock.now += 1
    spent = await store.usage(hit(limit=3))
    assert (spent.used, spent.remaining) == (3, 0)
    # The first unit (t=0) leaves at t=10, 7 s after t=3.
    assert spent.retry_after == pytest.approx(7)
    assert (await store.usage(hit(limit=3))).used == 3
    assert (await store.usage(hit(limit=3, cost=4))).retry_after is None
    clock.now += 7
    assert (await store.usage(hit(limit=3))).used == 2
    assert (await store.usage(hit("other", limit=3))).used == 0


async def test_reset_forgets_one_budget(store: CounterStore) -> None:
    for _ in range(3):
        await store.hit([hit(limit=3), hit("other", limit=3)])
    await store.reset(hit().key)
    await store.reset(hit("never-used").key)
    assert (await store.usage(hit(limit=3))).used == 0
    assert (await store.usage(hit("other", limit=3))).used == 3
    assert (await store.hit([hit(limit=3)])).allowed


def session(sid: str, who: str = "alice", limit: int = 2) -> Hit:
    return Hit(CounterKey("per-session", "session", (who, sid)), limit, 10)


async def test_new_sessions_past_the_cap_are_refused_and_nothing_is_evicted(
    make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store(clock, max_sessions=3)
    start = clock.now
    for sid in ("s1", "s2", "s3"):
        assert (await store.hit([session(sid), hit()])).allowed
        clock.now += 1
    refused = await store.hit([session("s4"), hit()])
    assert not refused.allowed
    crowded, other = refused.states
    assert crowded.crowded is Crowded.SESSIONS
    # s1 goes idle first: its one entry (t=0) leaves the window at t=10; now is t=3.
    assert crowded.retry_after == pytest.approx(7)
    assert (other.retry_after, other.crowded) == (0, None)
    assert (await store.usage(hit())).used == 3  # the refused request counted nothing
    # The live sessions keep their budgets: flooding new ones resets nothing.
    assert (await store.hit([session("s1")])).allowed
    assert not (await store.hit([session("s1")])).allowed
    assert (await store.hit([session("s4", who="bob")])).allowed  # each identity its own cap
    clock.now = start + 11  # s2 is idle now (s1 has a newer entry)
    assert (await store.hit([session("s4")])).allowed
    assert not (await store.hit([session("s5")])).allowed


async def test_a_refund_gives_the_units_back(store: CounterStore) -> None:
    for _ in range(5):
        assert (await store.hit([hit(cost=1)])).allowed
    assert not (await store.hit([hit()])).allowed
    assert await store.refund("d-1", [hit(cost=2)])
    assert (await store.usage(hit())).used == 3
    assert (await store.hit([hit(cost=2)])).allowed


async def test_a_refund_happens_once_per_decision(store: CounterStore) -> None:
    for _ in range(4):
        await store.hit([hit()])
    assert await store.refund("d-1", [hit()])
    assert not await store.refund("d-1", [hit()])
    assert (await store.usage(hit())).used == 3
    # Another decision is another refund.
    assert await store.refund("d-2", [hit()])
    assert (await store.usage(hit())).used == 2


async def test_a_refund_never_takes_back_more_than_the_window_holds(
    store: CounterStore, clock: FakeClock
) -> None:
    await store.hit([hit(cost=2)])
    clock.now += 5
    await store.hit([hit(cost=1)])
    assert await store.refund("d-1", [hit(cost=4)])
    assert (await store.usage(hit())).used == 0
    # What is counted next is counted from nothing, not from a negative balance.
    await store.hit([hit(cost=5)])
    assert not (await store.hit([hit()])).allowed


async def test_a_refund_splits_an_entry_and_the_log_keeps_counting(
    store: CounterStore, clock: FakeClock
) -> None:
    await store.hit([hit(cost=3)])
    assert await store.refund("d-1", [hit(cost=1)])
    assert (await store.usage(hit())).used == 2
    clock.now += 1
    assert (await store.hit([hit(cost=3)])).allowed
    assert not (await store.hit([hit()])).allowed
    # The first entry (2 units left) leaves the window on time, the second stays.
    clock.now += 9
    assert (await store.usage(hit())).used == 3


async def test_a_refund_covers_every_key_of_the_decision(store: CounterStore) -> None:
    pair = [hit("a", limit=2), hit("b", limit=2)]
    await store.hit(pair)
    await store.hit(pair)
    assert await store.refund("d-1", pair)
    for h in pair:
        assert (await store.usage(h)).used == 1


async def test_refunding_what_was_never_counted_is_harmless(store: CounterStore) -> None:
    assert await store.refund("d-1", [hit("never")])
    assert (await store.usage(hit("never"))).used == 0
    assert (await store.hit([hit("never", limit=1)])).allowed
