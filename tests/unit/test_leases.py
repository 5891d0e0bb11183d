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
    leases.take(KEY, 0.0, 10.0)
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
    assert leases.take(KEY, 0.0, 10.0)[0] is None


async def test_one_take_per_key_at_a_time_and_waiters_are_woken() -> None:
    leases = Leases()
    assert not await leases.wait(KEY)
    assert leases.take(KEY, 0.0, 10.0) == (None, False)
    waiter = asyncio.create_task(leases.wait(KEY))
    await asyncio.sleep(0)
    assert not waiter.done()
    leases.taken(KEY, lease(left=5), now=0.0)
    assert await waiter
    old, _ = leases.take(KEY, 0.0, 10.0)
    assert old is not None
    assert old.left == 5  # handed over for its rest to be given back
    leases.taken(KEY, None, now=0.0)


def test_the_table_is_swept_of_leases_whose_units_left_their_window() -> None:
    leases = Leases()

    def add(name: str, until: float, now: float) -> None:
        key = CounterKey("calls", "identity", (name,))
        leases.take(key, now, 0.0)
        leases.taken(key, lease(left=1, until=until), now)

    for i in range(4_096):  # the 4,096th sweeps, and finds every lease live
        add(f"old-{i}", until=1.0, now=0.0)
    assert len(leases) == 4_096
    # Past 1 s + the 60 s window (and its last quantum) the old leases count nothing: the
    # next sweep, when the table has doubled, drops them.
    for i in range(4_096):
        add(f"new-{i}", until=100.0, now=70.0)
    assert len(leases) == 4_096
    assert leases.take(CounterKey("calls", "identity", ("old-0",)), 70.0, 0.0)[0] is None
    assert leases.take(CounterKey("calls", "identity", ("new-0",)), 70.0, 0.0)[0] is not None


def test_a_key_leases_only_while_warm() -> None:
    leases = Leases()
    assert leases.take(KEY, 0.0, 1.0) == (None, False)  # a first call: cold
    leases.taken(KEY, None, 0.0)
    assert leases.take(KEY, 0.5, 1.0) == (None, True)  # again within a life: warm
    leases.taken(KEY, lease(left=5, until=1.5), 0.5)
    # Past the life with its lease unspent: cold again (the lease is still handed back).
    old, warm = leases.take(KEY, 2.0, 1.0)
    assert old is not None
    assert not warm
    leases.taken(KEY, None, 2.0)
    # A lease that was spent from keeps its key warm, however long ago the last call was.
    spent = lease(left=5, until=10.0)
    spent.spent = 1
    leases.take(KEY, 3.0, 1.0)
    leases.taken(KEY, spent, 3.0)
    assert leases.take(KEY, 20.0, 1.0)[1]
