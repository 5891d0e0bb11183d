"""The lease bookkeeping on its own: which hits lease, spending, the one take per key, the sweep.

What leases do to counts in Redis is tested against Redis (tests/integration/test_redis_lease.py).
"""

from __future__ import annotations

import asyncio

from authz.limits.base import CounterKey, Hit
from authz.limits.lease import Lease, LeasePolicy, Leases

KEY = CounterKey("calls", "identity", ("alice",))


def lease(left: int, until: float = 10.0, limit: int = 10_000, window: int = 60) -> Lease:
    return Lease(limit, window, left, until, stamp=1, used=1)


def test_only_limits_from_the_threshold_lease_a_capped_share() -> None:
    policy = LeasePolicy()
    assert policy.size(Hit(KEY, 30, 60)) == 0  # the seed's 30/minute
    assert policy.size(Hit(KEY, 999, 60)) == 0
    assert policy.size(Hit(KEY, 1_000, 60)) == 10
    assert policy.size(Hit(KEY, 10_000, 3600)) == 100
    assert policy.size(Hit(KEY, 1_000_000_000, 60)) == 1_000
    assert policy.life(Hit(KEY, 1_000, 60)) == 600_000  # one quantum: 1% of a minute, in us
    assert LeasePolicy(min_limit=0).size(Hit(KEY, 10**9, 60)) == 0


def test_a_lease_serves_its_own_limit_until_it_expires_or_runs_out() -> None:
    leases = Leases()
    leases.take(KEY)
    leases.taken(KEY, lease(left=3), now=0.0)
    assert leases.spend(Hit(KEY, 10_000, 60, cost=2), now=1.0) is not None
    assert leases.spend(Hit(KEY, 10_000, 60, cost=2), now=1.0) is None  # 1 left
    assert leases.spend(Hit(KEY, 5_000, 60), now=1.0) is None  # the limit changed
    assert leases.spend(Hit(KEY, 10_000, 3600), now=1.0) is None  # the window changed
    assert leases.spend(Hit(KEY, 10_000, 60), now=10.0) is None  # its life is over
    spent = leases.spend(Hit(KEY, 10_000, 60), now=9.9)
    assert spent is not None
    assert spent.spent == 3
    # Spent out: nothing left to give back, so the next take has no old lease.
    assert leases.take(KEY) is None


async def test_one_take_per_key_at_a_time_and_waiters_are_woken() -> None:
    leases = Leases()
    assert not await leases.wait(KEY)
    assert leases.take(KEY) is None
    waiter = asyncio.create_task(leases.wait(KEY))
    await asyncio.sleep(0)
    assert not waiter.done()
    leases.taken(KEY, lease(left=5), now=0.0)
    assert await waiter
    old = leases.take(KEY)
    assert old is not None
    assert old.left == 5  # handed over for its rest to be given back
    leases.taken(KEY, None, now=0.0)


def test_the_table_is_swept_of_leases_whose_units_left_their_window() -> None:
    leases = Leases()

    def add(name: str, until: float, now: float) -> None:
        key = CounterKey("calls", "identity", (name,))
        leases.take(key)
        leases.taken(key, lease(left=1, until=until), now)

    for i in range(4_096):  # the 4,096th sweeps, and finds every lease live
        add(f"old-{i}", until=1.0, now=0.0)
    assert len(leases) == 4_096
    # Past 1 s + the 60 s window (and its last quantum) the old leases count nothing: the
    # next sweep, when the table has doubled, drops them.
    for i in range(4_096):
        add(f"new-{i}", until=100.0, now=70.0)
    assert len(leases) == 4_096
    assert leases.take(CounterKey("calls", "identity", ("old-0",))) is None
    assert leases.take(CounterKey("calls", "identity", ("new-0",))) is not None
