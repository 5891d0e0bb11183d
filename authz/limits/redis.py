"""The shared store: rolling windows kept in Redis, so every replica draws on one budget.

Each request is counted by one run of `lua/hit.lua` (called by EVALSHA), which reads the
server's clock, checks every hit and counts them all or nothing; requests made at the same
moment share one call. docs/limits.md describes the key layout, the bounds and the failure
behaviour; this module turns hits into script arguments, script replies into results, and
every Redis failure into StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Sequence
from functools import cached_property
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ReadOnlyError

from authz.limits.base import (
    DEFAULT_MAX_SESSIONS,
    CounterKey,
    Crowded,
    Hit,
    HitResult,
    LimitState,
    StoreUnavailable,
    session_of,
)
from authz.limits.lease import Lease, LeasePolicy, Leases
from authz.limits.redis_client import (
    _US,
    REDIS_FAILURES,
    WARM_CONNECTIONS,
    Client,
    FirstCallAlone,
    RedisBacked,
    Script,
    unavailable,
)

Call = tuple[list[str], list[int | str]]

log = logging.getLogger("mcp_authz.limits")

HIT = Script("authz.limits", "hit.lua")
USAGE = Script("authz.limits", "usage.lua")
REFUND = Script("authz.limits", "refund.lua")

# A window is kept in this many quanta: a unit leaves the window at most window/100 late,
# and a key holds at most about 100 entries whatever the limit (see docs/limits.md).
QUANTA_PER_WINDOW = 100
# Requests (or, from a closing store, lease give-backs) per script call: bounds how long one
# call holds Redis (about 10 us each).
MAX_BATCH = 128
# The longest a request may wait for others to share its script call (RedisStore batch_hold).
MAX_BATCH_HOLD = 0.005
# Longer encoded key names are hashed (see `_name`).
MAX_NAME = 200


class RedisStore(RedisBacked):
    """A CounterStore on Redis (standalone, Sentinel or Cluster) that fails fast when it is down."""

    SCRIPTS = (HIT, USAGE, REFUND)

    def __init__(
        self,
        client: Client,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        batch_hold: float = 0.0,
        lease: LeasePolicy | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0 <= batch_hold <= MAX_BATCH_HOLD:
            raise ValueError(
                f"the batch hold must be 0 to {MAX_BATCH_HOLD * 1000:g} ms: got {batch_hold}"
            )
        self._batch_hold = batch_hold
        if max_sessions < 1:
            raise ValueError(
                f"the sessions cap must be at least 1: got {max_sessions} "
                "(--max-sessions-per-identity)"
            )
        super().__init__(client, **kwargs)
        self._max_sessions = max_sessions
        self._lease = LeasePolicy() if lease is None else lease
        self._leases = Leases()
        # Leases expire on this replica's clock (the test clock in tests, like the scripts').
        self._local_clock = self._clock or time.monotonic

    @cached_property
    def _batcher(self) -> _Batcher:
        return _Batcher(self._client, self._timeout, self._batch_hold)

    def key(self, key: CounterKey) -> str:
        """The Redis key of a counter; every key shares the `{prefix}` hash tag."""
        return f"{{{self._prefix}}}:v1:{_name([key.counter, key.scope, *key.subject])}"

    def sessions_key(self, owner: Sequence[str]) -> str:
        """The session index of one identity (apart from every counter key: those names
        start with `[` or `sha256:`)."""
        return f"{{{self._prefix}}}:v1:sessions:{_name(list(owner))}"

    async def hit(self, hits: Sequence[Hit]) -> HitResult:
        if not hits:
            return HitResult(allowed=True, states=())
        if len(hits) == 1 and self._lease.size(hits[0]):
            return await self._leased(hits[0])
        # Several hits are counted in Redis, all or nothing, never from a lease: a lease of
        # one of them could not be spent if another refused. Their keys' leases are given
        # back in the same call, once no call of ours is taking one of them.
        for h in hits:
            while await self._leases.wait(h.key):
                pass
        backs = [self._leases.drop(h.key) for h in hits]
        result, _ = await self._count(hits, [(0, 0)] * len(hits), backs)
        return result

    async def _leased(self, h: Hit) -> HitResult:
        """A hit on a leased limit: admitted from this replica's lease when it has room, else
        counted in Redis, with a new lease taken in the same call when the key is warm (one
        call per key at a time: the others wait for its lease)."""
        while True:
            now = self._local_clock()
            lease = self._leases.spend(h, now)
            if lease is not None:
                used = lease.used + lease.spent
                state = LimitState(h, used, max(h.limit - used, 0), 0.0)
                return HitResult(allowed=True, states=(state,))
            if not await self._leases.wait(h.key):
                break
        life = self._lease.life(h)
        old, warm = self._leases.take(h.key, now, life / _US)
        new: Lease | None = None
        try:
            wanted = (self._lease.size(h), life) if warm else (0, 0)
            result, granted = await self._count([h], [wanted], [old])
            units, stamp = granted[0]
            if units:
                used = result.states[0].used
                new = Lease(h.limit, h.window, units, now + life / _US, stamp, used)
        finally:
            self._leases.taken(h.key, new, now)
        return result

    async def _count(
        self,
        hits: Sequence[Hit],
        leases: Sequence[tuple[int, int]],
        backs: Sequence[Lease | None],
    ) -> tuple[HitResult, list[tuple[int, int]]]:
        """One request through hit.lua, each hit wanting a lease of (units, life in us): its
        result and, per hit, the (units, stamp) leased."""
        keys = [name for h in hits for name in self._keys_of(h)]
        with self._breaker.guard():
            reply = await self._run(keys, self._args(hits, leases, backs))
        return _result(hits, reply), list(zip(reply[4::5], reply[5::5], strict=True))

    async def refund(self, decision_id: str, hits: Sequence[Hit]) -> bool:
        marker = json.dumps(["refunded", decision_id], separators=(",", ":"))
        if len(marker) > MAX_NAME:
            marker = "sha256:" + hashlib.sha256(marker.encode()).hexdigest()
        keys = [f"{{{self._prefix}}}:v1:{marker}", *(self.key(h.key) for h in hits)]
        lifetime = max((h.window for h in hits), default=1) * 1000
        args: list[int | str] = [lifetime, *(h.cost for h in hits)]
        return bool(await self._direct(REFUND.run(self._client, keys, args)))

    async def usage(self, hit: Hit) -> LimitState:
        args = [self._now(), hit.limit, hit.window * _US, hit.cost]
        used, retry = await self._direct(self._usage([self.key(hit.key)], args))
        return _state(hit, int(used), int(retry))

    async def reset(self, key: CounterKey) -> None:
        self._leases.drop(key)
        await self._direct(self._client.delete(self.key(key)))

    async def _usage(self, keys: list[str], args: list[int | str]) -> list[int]:
        return cast(list[int], await USAGE.run(self._client, keys, args))

    async def _direct(self, call: Awaitable[Any]) -> Any:
        """An operator's command, outside the breaker and the batches, with their errors."""
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except REDIS_FAILURES as e:
            raise unavailable(self._name, self._timeout, e) from e

    async def close(self) -> None:
        await self._give_leases_back()
        await self._batcher.drain()
        await self._close_clients()

    async def _give_leases_back(self) -> None:
        """Give this replica's unspent leased units back, within one store timeout: what
        does not make it stays counted until it leaves its window (docs/limits.md)."""
        held = self._leases.give_back_all()
        if not held:
            return
        units = sum(lease.left for _, lease in held)
        try:
            async with asyncio.timeout(self._timeout):
                for start in range(0, len(held), MAX_BATCH):
                    part = held[start : start + MAX_BATCH]
                    # A hit of cost 0 counts nothing; its call gives the lease back first.
                    hits = [Hit(key, lease.limit, lease.window, 0) for key, lease in part]
                    await self._count(hits, [(0, 0)] * len(part), [lease for _, lease in part])
        except (StoreUnavailable, TimeoutError) as e:
            log.warning("shutdown: %d unspent leased units stay counted: %s", units, e)
            return
        log.info("shutdown: gave back %d unspent leased units of %d keys", units, len(held))

    def _keys_of(self, h: Hit) -> tuple[str, str]:
        """The hit's counter key and its identity's session index (the counter key again for
        a hit that is not session-scoped)."""
        key = self.key(h.key)
        session = session_of(h.key)
        return key, key if session is None else self.sessions_key(session[0])

    def _args(
        self,
        hits: Sequence[Hit],
        leases: Sequence[tuple[int, int]],
        backs: Sequence[Lease | None],
    ) -> list[int | str]:
        args: list[int | str] = [self._now(), len(hits)]
        for h, (units, life), back in zip(hits, leases, backs, strict=True):
            session = session_of(h.key)
            most, sid = (0, "") if session is None else (self._max_sessions, session[1])
            left, stamp = (0, 0) if back is None else (back.left, back.stamp)
            window = h.window * _US
            quantum = max(1, window // QUANTA_PER_WINDOW)
            args += [h.limit, window, h.cost, quantum, most, sid, units, life, left, stamp]
        return args

    async def _run(self, keys: list[str], args: list[int | str]) -> list[int]:
        # The batch that carries this request gives up after the timeout, so no timer here.
        try:
            return await self._batcher.submit(keys, args)
        except REDIS_FAILURES as e:
            if isinstance(e, ReadOnlyError):
                await self._drop_connections()
            raise unavailable(self._name, self._timeout, e) from e

    async def _drop_connections(self) -> None:
        # A primary demoted behind a stable address (DNS failover) keeps our connections;
        # reconnecting lets the next call reach the new primary. Cluster and Sentinel
        # clients rediscover the primary on their own.
        if isinstance(self._client, Redis):
            await self._client.connection_pool.disconnect()


class _Batcher:
    """Sends the requests made in one event-loop turn to Redis as one script call, and with a
    `hold`, those made within `hold` of a request that found a call already on its way.

    The script counts them one after the other, each all or nothing, exactly as if each had
    been sent alone; they only share the round trip. That matters because the client-side
    work per command (packing, a pooled connection, a write, a read, a wake-up) is what
    bounds a Python gateway's throughput, far more than Redis's few microseconds per request.
    All keys share one hash tag, so a batch is as valid on a cluster as a single request.
    """

    def __init__(self, client: Client, timeout: float, hold: float = 0.0) -> None:
        self._client = client
        self._timeout = timeout
        self._hold = hold
        self._first = FirstCallAlone(client)
        self._queue: list[tuple[Call, asyncio.Future[list[int]]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, keys: list[str], args: list[int | str]) -> asyncio.Future[list[int]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._queue.append(((keys, args), future))
        if len(self._queue) == 1:
            if self._hold and self._sending:
                # A call is on its way, so others are checking too: this request waits
                # `hold` for the requests behind it, which grpc.aio hands over one per loop
                # turn, each a Redis round trip or more apart, and they share one call.
                # With none in flight (one connection, a quiet gateway) nothing waits.
                self._timer = loop.call_later(self._hold, self._flush)
            else:
                loop.call_soon(self._flush)
        elif len(self._queue) == MAX_BATCH:
            loop.call_soon(self._flush)
        return future

    async def drain(self) -> None:
        while self._sending or self._queue:
            self._flush()  # a held queue goes now, not at its timer
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _flush(self) -> None:
        # At most WARM_CONNECTIONS script calls at once, so each has a connection that start-up
        # opened (RedisBacked.ready): opening one more under load would spend the call's own
        # timeout on a TCP handshake. Requests arriving meanwhile go in the next, bigger batch.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue and len(self._sending) < WARM_CONNECTIONS:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            task = asyncio.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._timer is None:  # else the queue is held: its timer sends it
            self._flush()

    async def _send(self, batch: list[tuple[Call, asyncio.Future[list[int]]]]) -> None:
        keys = [key for (ks, _), _ in batch for key in ks]
        args = [len(batch), *(arg for (_, a), _ in batch for arg in a)]
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._call(keys, args)
        except Exception as e:  # every caller gets it; RedisStore._run maps it
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():  # its caller was cancelled
                future.set_result([int(v) for v in reply])

    async def _call(self, keys: list[str], args: list[int | str]) -> list[list[int]]:
        return cast(list[list[int]], await self._first.run(HIT, keys, args))


def _name(parts: list[str]) -> str:
    # Longer names are hashed, so an agent-chosen subject cannot make key names huge.
    name = json.dumps(parts, separators=(",", ":"))
    if len(name) > MAX_NAME:
        name = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return name


def _result(hits: Sequence[Hit], reply: list[int]) -> HitResult:
    states = tuple(
        _state(h, used, retry, crowded == 1)
        for h, used, retry, crowded in zip(hits, reply[1::5], reply[2::5], reply[3::5], strict=True)
    )
    return HitResult(allowed=reply[0] == 1, states=states)


def _state(h: Hit, used: int, retry: int, crowded: bool = False) -> LimitState:
    wait = None if retry < 0 else retry / _US
    return LimitState(
        hit=h,
        used=used,
        remaining=max(h.limit - used, 0),
        retry_after=wait,
        crowded=Crowded.SESSIONS if crowded else None,
    )
