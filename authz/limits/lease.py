"""Quota leases: a replica takes a large limit's units in advance and admits from them locally.

For a limit of at least `min_limit` units, the Redis store asks hit.lua for the hit's cost plus
a lease of `size(hit)` units in the same script call. hit.lua counts the lease at once and
stamps it `life(hit)` later than a hit, and this replica spends it for at most that long (its
own clock, read before the call was sent), so every unit it admits from the lease stays
counted in Redis for a whole window after it was admitted: Redis never counts less than the
replicas have admitted, in any window. A replica holds at most one lease per key; the next
script call on that key gives back the old lease's unspent units, so the only units counted
but never admitted are the other replicas' unspent leases (docs/limits.md, "Leases", states
the bound). This module is the bookkeeping; RedisStore makes the calls.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Final

from authz.limits.base import CounterKey, Hit

# Limits below this many units are never leased: a lease would be a large share of them.
DEFAULT_LEASE_MIN_LIMIT: Final = 1000
# A lease is this share of its limit, at most DEFAULT_LEASE_MAX units.
DEFAULT_LEASE_FRACTION: Final = 0.01
DEFAULT_LEASE_MAX: Final = 1000
# A lease is spent for at most this share of its window (one quantum of the Redis store):
# leased units stay counted that much longer.
DEFAULT_LEASE_LIFE: Final = 0.01
# Leases of a table this big are swept for those whose units have all left their window.
_SWEEP_FLOOR: Final = 4096


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """Which hits lease, how many units and for how long: `min_limit` 0 turns leasing off."""

    min_limit: int = DEFAULT_LEASE_MIN_LIMIT
    fraction: float = DEFAULT_LEASE_FRACTION
    most: int = DEFAULT_LEASE_MAX
    # The share of its window a lease is spent for.
    share: float = DEFAULT_LEASE_LIFE

    def __post_init__(self) -> None:
        if (
            self.min_limit < 0
            or not 0 < self.fraction <= 0.1
            or self.most < 1
            or not 0 < self.share <= 0.1
        ):
            raise ValueError(
                f"leases need --lease-min-limit >= 0 (got {self.min_limit}), "
                f"0 < --lease-fraction <= 0.1 (got {self.fraction}), --lease-max >= 1 "
                f"(got {self.most}) and 0 < --lease-life <= 0.1 (got {self.share})"
            )

    def size(self, hit: Hit) -> int:
        """The units to lease with `hit` on top of its cost: 0 when its limit is not leased."""
        if not self.min_limit or hit.limit < self.min_limit:
            return 0
        return max(1, min(self.most, int(hit.limit * self.fraction)))

    def life(self, hit: Hit) -> int:
        """How long (us) a lease taken with `hit` may be spent."""
        return max(1, int(hit.window * 1_000_000 * self.share))


@dataclass(slots=True)
class Lease:
    """Units counted in Redis for this replica and not admitted yet."""

    limit: int
    window: int
    left: int
    # This replica's clock: no unit is admitted from the lease from then on.
    until: float
    # The Redis entry (us) that counts the lease, where its unspent units are given back.
    stamp: int
    # `used` as Redis reported it when the lease was taken, and what has been admitted since.
    used: int
    spent: int = 0

    def serves(self, hit: Hit, now: float) -> bool:
        return (
            now < self.until
            and self.left >= hit.cost
            and hit.limit == self.limit
            and hit.window == self.window
        )


class Leases:
    """This replica's leases, one per key at most, and the calls taking one right now.

    Everything here runs on one event loop without an await between a look and a change, so
    no unit is admitted twice; while one call takes a key's lease, others on that key wait
    for it rather than take a second one.

    A key is leased only while it is warm: hit on this replica again within a lease's life
    of its last call to Redis, or its lease spent. A lease on a colder key would go unspent
    and cost a give-back; its calls are counted in Redis as they come, sharing script calls.
    """

    def __init__(self) -> None:
        self._held: dict[CounterKey, Lease] = {}
        # The keys a call to Redis is under way for, with an event once some call waits.
        self._taking: dict[CounterKey, asyncio.Event | None] = {}
        # Per key, until when a call makes it warm: its last call to Redis plus a life.
        self._warm: dict[CounterKey, float] = {}
        self._sweep_at = _SWEEP_FLOOR

    def spend(self, hit: Hit, now: float) -> Lease | None:
        """The lease `hit` was admitted from, its cost taken off; None when none serves it."""
        lease = self._held.get(hit.key)
        if lease is None or not lease.serves(hit, now):
            return None
        lease.left -= hit.cost
        lease.spent += hit.cost
        if not lease.left:
            del self._held[hit.key]  # nothing left to spend or to give back
        return lease

    async def wait(self, key: CounterKey) -> bool:
        """Wait for the call taking `key`'s lease, if any (True when there was one)."""
        if key not in self._taking:
            return False
        taking = self._taking[key]
        if taking is None:
            taking = self._taking[key] = asyncio.Event()
        await taking.wait()
        return True

    def take(self, key: CounterKey, now: float, life: float) -> tuple[Lease | None, bool]:
        """Start a call to Redis for `key`: (its old lease, whose unspent units the call gives
        back, dropped now: a failed call may have given them back, never give them twice;
        whether the key is warm, so the call takes a new lease)."""
        self._taking[key] = None
        old = self._held.pop(key, None)
        warm = self._warm.get(key, -math.inf) > now or (old is not None and old.spent > 0)
        self._warm[key] = now + life
        return old, warm

    def drop(self, key: CounterKey) -> Lease | None:
        """Drop `key`'s lease for a call that gives its unspent units back without a new one."""
        return self._held.pop(key, None)

    def taken(self, key: CounterKey, lease: Lease | None, now: float) -> None:
        """End the take of `key`'s lease (`lease` None: none was granted, or the call failed)."""
        if lease is not None:
            self._held[key] = lease
        if len(self._held) + len(self._warm) >= self._sweep_at:
            self._sweep(now)
        taking = self._taking.pop(key)
        if taking is not None:
            taking.set()

    def _sweep(self, now: float) -> None:
        # Keys come and go with identities and sessions; a lease whose units have all left
        # their window has nothing to give back. Sweeping when the table has doubled keeps
        # the cost amortised O(1) per lease, and the table the size of a window's keys.
        # Units are stamped up to a quantum (1% of the window) after the lease's life ends.
        self._held = {k: v for k, v in self._held.items() if v.until + v.window * 1.02 > now}
        self._warm = {k: until for k, until in self._warm.items() if until > now}
        self._sweep_at = max(_SWEEP_FLOOR, 2 * (len(self._held) + len(self._warm)))

    def give_back_all(self) -> list[tuple[CounterKey, Lease]]:
        """Every lease, dropped (each has units left: a spent-out one is dropped at once), for
        a replica that stops to give back."""
        held = list(self._held.items())
        self._held.clear()
        self._warm.clear()
        return held

    def __len__(self) -> int:
        return len(self._held)
