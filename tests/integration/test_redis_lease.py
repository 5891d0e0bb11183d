"""Quota leases (docs/limits.md, "Leases") against a real Redis and an exact model.

Several RedisStore objects on one Redis and one clock play the replicas. A leased unit stays
counted up to a quantum and a lease's life late (a lease is stamped its life late, and is
spent for at most that long), so:
- nothing is ever admitted past the limit in any exact window;
- a request is refused only if the exact model, with the window that much longer and every
  other replica's lease counted as spent, would refuse it too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from authz.limits.base import CounterKey, Hit, StoreUnavailable
from authz.limits.lease import LeasePolicy
from authz.limits.redis import QUANTA_PER_WINDOW, RedisStore
from tests.conftest import RedisServer

US = 1_000_000
WINDOW = 10  # s: a quantum of 0.1 s, the life of a lease
QUANTUM = WINDOW * US // QUANTA_PER_WINDOW
BIG = CounterKey("big", "global", ())
SMALL = CounterKey("small", "global", ())
SMALL_LIMIT = 3  # below the test policy's min_limit: never leased
DOCS = (Path(__file__).resolve().parents[2] / "docs" / "limits.md").read_text(encoding="utf-8")


class Clock:
    def __init__(self) -> None:
        self.us = 1_200 * US

    def __call__(self) -> float:
        return self.us / US


def policy(most: int, quanta: int = 1) -> LeasePolicy:
    """Leases of up to `most` units, spent for `quanta` quanta."""
    return LeasePolicy(min_limit=10, fraction=0.1, most=most, share=0.01 * quanta)


@dataclass(frozen=True)
class Call:
    dt: int  # us since the previous call
    replica: int
    cost: int
    with_small: bool  # a second, unleased hit in the same request


@dataclass
class Exact:
    """Every admitted unit at its true time."""

    log: dict[CounterKey, list[tuple[int, int]]] = field(default_factory=dict)

    def used(self, key: CounterKey, since: int, now: int) -> int:
        return sum(c for t, c in self.log.get(key, []) if since < t <= now)

    def admit(self, key: CounterKey, cost: int, now: int) -> None:
        self.log.setdefault(key, []).append((now, cost))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, int, int, list[Call]]:
    replicas = draw(st.integers(1, 4))
    limit = draw(st.integers(10, 80))
    most = draw(st.integers(1, 8))
    quanta = draw(st.integers(1, 3))
    # Mostly within a lease's life, sometimes past it, and about a window on: when units
    # counted too briefly would show.
    near = st.integers(WINDOW * US - 3 * QUANTUM, WINDOW * US + QUANTUM)
    dt = st.one_of(st.integers(0, QUANTUM // 2), st.integers(0, 3 * QUANTUM), near)
    call = st.builds(Call, dt, st.integers(0, replicas - 1), st.integers(1, 8), st.booleans())
    return replicas, limit, most, quanta, draw(st.lists(call, min_size=1, max_size=80))


async def drive(
    url: str, replicas: int, lease: LeasePolicy, limit: int, calls: list[Call]
) -> list[tuple[int, Call, bool]]:
    clock, prefix = Clock(), f"lease-{uuid.uuid4().hex}"
    stores = [
        RedisStore.from_url(url, prefix=prefix, timeout=1.0, clock=clock, lease=lease)
        for _ in range(replicas)
    ]
    seen = []
    try:
        for c in calls:
            clock.us += c.dt
            hits = [Hit(BIG, limit, WINDOW, c.cost)]
            if c.with_small:
                hits.append(Hit(SMALL, SMALL_LIMIT, WINDOW, 1))
            seen.append((clock.us, c, (await stores[c.replica].hit(hits)).allowed))
    finally:
        for s in stores:
            await s.close()
    return seen


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
# A unit spent from a lease after the lease's life would leave the window too early: the
# cost-8 and cost-2 calls then fit in Redis but not in the exact window.
@example(
    scenario=(
        1,
        10,
        1,
        1,
        [
            Call(0, 0, 1, False),
            Call(0, 0, 1, False),  # the key is warm: a lease of 1
            Call(QUANTUM * 5 // 2, 0, 1, False),
            Call(WINDOW * US - QUANTUM, 0, 8, False),
            Call(0, 0, 2, False),
        ],
    )
)
def test_never_admits_past_the_limit_and_refuses_early_only_within_the_bound(
    redis_server: RedisServer, scenario: tuple[int, int, int, int, list[Call]]
) -> None:
    replicas, limit, most, quanta, calls = scenario
    leases = policy(most, quanta)
    size = leases.size(Hit(BIG, limit, WINDOW))
    # The bound docs/limits.md states: the other replicas' unspent leases, and a window
    # longer by a quantum and the lease's life.
    slack, late = (replicas - 1) * size, QUANTUM + leases.life(Hit(BIG, limit, WINDOW))
    model = Exact()
    for now, c, allowed in asyncio.run(drive(redis_server.url, replicas, leases, limit, calls)):
        hits = [(BIG, limit, c.cost, slack)]
        if c.with_small:
            hits.append((SMALL, SMALL_LIMIT, 1, 0))
        if allowed:
            for key, most_units, cost, _ in hits:
                model.admit(key, cost, now)
                assert model.used(key, now - WINDOW * US, now) <= most_units, "over the limit"
        else:
            assert any(
                model.used(key, now - WINDOW * US - late, now) + cost + extra > most_units
                for key, most_units, cost, extra in hits
            ), "refused beyond the stated bound"


# Edge cases, one replica at a time.


@pytest.fixture
async def new_store(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisStore]]:
    stores: list[RedisStore] = []
    prefix = f"t-{uuid.uuid4().hex}"

    def make(url: str = redis_server.url, **options: Any) -> RedisStore:
        store = RedisStore.from_url(url, prefix=prefix, timeout=1.0, **options)
        stores.append(store)
        return store

    yield make
    for s in stores:
        await s.close()


async def counted(store: RedisStore, limit: int) -> int:
    """What Redis counts on BIG now (admitted units plus unspent leases)."""
    return (await store.usage(Hit(BIG, limit, WINDOW))).used


async def test_small_limits_are_never_leased(new_store: Callable[..., RedisStore]) -> None:
    store = new_store(clock=Clock())  # the default policy: limits of 1,000 and more
    for used in (1, 2):
        state = (await store.hit([Hit(BIG, 999, WINDOW)])).states[0]
        assert state.used == used
        assert await counted(store, 999) == used


async def test_a_lease_is_spent_locally_then_expires_and_its_rest_is_given_back(
    new_store: Callable[..., RedisStore], redis_server: RedisServer
) -> None:
    clock = Clock()
    store = new_store(clock=clock)
    hit = Hit(BIG, 10_000, WINDOW)  # a lease of 1% of it: 100 units
    assert (await store.hit([hit])).allowed
    assert await counted(store, 10_000) == 1, "a key's first call leases nothing"
    assert (await store.hit([hit])).allowed
    assert await counted(store, 10_000) == 2 + 100, "hit again within a life: leased"
    redis_server.command("CONFIG", "RESETSTAT")
    for _ in range(50):
        clock.us += 1_000
        assert (await store.hit([hit])).allowed
    assert "cmdstat_evalsha" not in _stats(redis_server), "spent from the lease, not Redis"
    assert await counted(store, 10_000) == 2 + 100
    redis_server.command("CONFIG", "RESETSTAT")
    # Past its life the lease serves nothing: the next hit gives its 50 unspent units back
    # and takes a new lease, in one call.
    clock.us += QUANTUM
    state = (await store.hit([hit])).states[0]
    assert _stats(redis_server)["cmdstat_evalsha"]["calls"] == 1
    assert state.used == 53
    assert await counted(store, 10_000) == 53 + 100


async def test_a_lease_never_takes_more_than_the_room_left(
    new_store: Callable[..., RedisStore],
) -> None:
    clock = Clock()
    store = new_store(clock=clock)
    assert (await store.hit([Hit(BIG, 1_000, WINDOW, cost=995)])).allowed
    # A lease of 10 is wanted with the next hit; 3 units are left after it, so 3 are leased.
    assert (await store.hit([Hit(BIG, 1_000, WINDOW, cost=2)])).allowed
    assert await counted(store, 1_000) == 1_000
    for _ in range(3):
        assert (await store.hit([Hit(BIG, 1_000, WINDOW)])).allowed
    refused = await store.hit([Hit(BIG, 1_000, WINDOW)])
    assert not refused.allowed
    assert await counted(store, 1_000) == 1_000, "a refused call is charged nothing"


async def test_a_changed_limit_is_never_served_from_the_old_lease(
    new_store: Callable[..., RedisStore],
) -> None:
    clock = Clock()
    store = new_store(clock=clock)
    await store.hit([Hit(BIG, 100_000, WINDOW, cost=1_500)])
    await store.hit([Hit(BIG, 100_000, WINDOW)])  # a lease of 1,000 units
    assert await counted(store, 100_000) == 2_501
    # A policy reload lowers the limit below what was admitted: Redis judges, and the old
    # lease's units are given back in the same call.
    refused = await store.hit([Hit(BIG, 1_400, WINDOW)])
    assert not refused.allowed
    assert await counted(store, 1_400) == 1_501


async def test_refunding_a_leased_hit_gives_back_its_cost_once(
    new_store: Callable[..., RedisStore],
) -> None:
    clock = Clock()
    store = new_store(clock=clock)
    hit = Hit(BIG, 10_000, WINDOW, cost=3)
    await store.hit([hit])
    await store.hit([hit])  # with a lease of 100
    assert (await store.hit([hit])).allowed  # from the lease
    assert await counted(store, 10_000) == 6 + 100
    assert await store.refund("d-1", [hit])
    assert not await store.refund("d-1", [hit])
    assert await counted(store, 10_000) == 3 + 100
    # The lease's rest (97 units) is given back by the next call to Redis: what stays
    # counted is what was admitted and not refunded, plus the new lease.
    clock.us += QUANTUM
    await store.hit([hit])
    assert await counted(store, 10_000) == 4 * 3 - 3 + 100


async def test_a_request_with_several_hits_is_counted_in_redis_and_returns_the_lease(
    new_store: Callable[..., RedisStore],
) -> None:
    store = new_store(clock=Clock())
    big, small = Hit(BIG, 10_000, WINDOW), Hit(SMALL, 1, WINDOW)
    await store.hit([big])
    await store.hit([big])
    assert await counted(store, 10_000) == 102
    assert (await store.hit([big, small])).allowed
    assert await counted(store, 10_000) == 3
    # All or nothing: `small` refuses, so `big` is not charged either.
    assert not (await store.hit([big, small])).allowed
    assert await counted(store, 10_000) == 3


async def test_concurrent_hits_on_one_key_take_one_lease_at_a_time(
    new_store: Callable[..., RedisStore], redis_server: RedisServer
) -> None:
    store = new_store(clock=Clock())
    hit = Hit(BIG, 1_000, WINDOW)  # leases of 10
    await store.hit([Hit(BIG, 1_000, WINDOW, cost=800)])
    redis_server.command("CONFIG", "RESETSTAT")
    results = await asyncio.gather(*(store.hit([hit]) for _ in range(300)))
    # Exactly the room is admitted: no unit twice, and this replica's own lease never
    # refuses its own calls.
    assert sum(r.allowed for r in results) == 200
    assert await counted(store, 1_000) == 1_000
    calls = _stats(redis_server)["cmdstat_evalsha"]["calls"]
    # A take per 11 units admitted (a cost of 1, a lease of 10), a call per refusal, and
    # the one that finds the lease spent out.
    assert -(-200 // 11) <= calls <= -(-200 // 11) + 100 + 1


async def test_redis_down_fails_unless_a_live_lease_serves(
    new_store: Callable[..., RedisStore], own_redis: RedisServer
) -> None:
    clock = Clock()
    store = new_store(own_redis.url, clock=clock)
    hit = Hit(BIG, 10_000, WINDOW)
    await store.hit([hit])
    await store.hit([hit])  # leased
    own_redis.kill()
    # The lease's units are counted already: spending them needs no Redis.
    assert (await store.hit([hit])).allowed
    clock.us += QUANTUM
    with pytest.raises(StoreUnavailable):
        await store.hit([hit])
    with pytest.raises(StoreUnavailable):
        await store.hit([Hit(BIG, 10, WINDOW)])


async def test_closing_a_store_gives_its_unspent_leases_back(
    new_store: Callable[..., RedisStore], redis_server: RedisServer
) -> None:
    clock = Clock()
    store = new_store(clock=clock, max_sessions=1)
    session = CounterKey("per-session", "session", ("alice", "s-1"))
    leased = [Hit(BIG, 10_000, WINDOW), Hit(session, 10_000, WINDOW)]
    for hit in leased:
        for _ in range(2 + 7):  # the second call takes a lease of 100; 7 more spend from it
            clock.us += 1_000
            assert (await store.hit([hit])).allowed
    assert await counted(store, 10_000) == 2 + 100

    def entries() -> tuple[object, ...]:
        logs = tuple(redis_server.command("ZCARD", store.key(h.key)) for h in leased)
        return (*logs, redis_server.command("ZSCORE", store.sessions_key(("alice",)), "s-1"))

    before = entries()
    # Past the lease's stamp (its life late): a hit recorded now would be a new entry, and
    # would move s-1's idle time.
    clock.us += 3 * QUANTUM
    await store.close()
    assert entries() == before, "the give-back recorded no entry and noted no session"
    other = new_store(clock=clock, max_sessions=1)
    assert await counted(other, 10_000) == 9, "only the admitted units stay counted"
    assert (await other.usage(leased[1])).used == 9
    # alice's one session place is still s-1's.
    other_session = Hit(CounterKey("per-session", "session", ("alice", "s-2")), 10_000, WINDOW)
    refused = (await other.hit([other_session])).states[0]
    assert refused.crowded is not None


async def test_closing_with_redis_down_leaves_the_leases_counted_and_says_so(
    new_store: Callable[..., RedisStore], own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = new_store(own_redis.url, clock=clock)
    hit = Hit(BIG, 10_000, WINDOW)
    await store.hit([hit])
    await store.hit([hit])  # leased: 100 units, none spent
    own_redis.kill()
    await store.close()
    assert "shutdown: 100 unspent leased units stay counted" in caplog.text


def _stats(server: RedisServer) -> dict[str, Any]:
    stats = server.command("INFO", "commandstats")
    assert isinstance(stats, dict)
    return stats


async def test_the_documented_acl_suffices_for_leases_and_refunds(
    new_store: Callable[..., RedisStore], own_redis: RedisServer
) -> None:
    acl = next(line for line in DOCS.splitlines() if line.startswith("ACL SETUSER"))
    own_redis.command(*acl.replace("PASSWORD", "pw").replace("{mcp-authz}", "{t}").split())
    clock = Clock()
    url = f"redis://mcp-authz:pw@127.0.0.1:{own_redis.port}"
    store = RedisStore.from_url(url, prefix="t", timeout=1.0, clock=clock)
    try:
        hit = Hit(BIG, 10_000, WINDOW)
        await store.ready()
        await store.hit([hit])
        await store.hit([hit])  # leased: an entry of 101 units
        assert await store.refund("d-1", [hit])  # SET NX, then ZADD (or ZREM)
        clock.us += QUANTUM
        # The lease's whole entry (100 units left) is given back: ZSCORE, ZRANGE, ZREM.
        assert (await store.hit([hit])).states[0].used == 2
        assert await counted(store, 10_000) == 2
    finally:
        await store.close()
