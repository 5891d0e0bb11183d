"""The ApprovalStore contract, run against every store: memory, Redis and Redis Cluster.

Each test gets two handles on one store (for Redis, two clients as two replicas would
hold; the in-process store is one process's, so both handles are the same object) and a
fake clock, which the Redis store passes to its script instead of the server's time.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import pytest

from authz.approvals.base import (
    ApprovalCaps,
    ApprovalError,
    ApprovalsFull,
    ApprovalStore,
    PageTokenError,
    Request,
    Status,
)
from authz.approvals.memory import MemoryApprovals
from authz.approvals.redis import RedisApprovals
from authz.limits.base import StoreUnavailable
from tests.conftest import RedisServer, redis_url_for

LIFETIME = 600
# Small caps, so the tests can reach them; the other tests stay under them.
CAPS = ApprovalCaps(total=5, per_identity=3)


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Stores = tuple[ApprovalStore, ApprovalStore]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def stores(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Stores]:
    if request.param == "memory":
        memory = MemoryApprovals(clock, CAPS)
        yield memory, memory
        return
    url = redis_url_for(request)
    prefix = f"contract-{uuid.uuid4().hex}"
    a, b = (
        RedisApprovals.from_url(url, prefix=prefix, timeout=2.0, clock=clock, caps=CAPS)
        for _ in "ab"
    )
    yield a, b
    await a.close()
    await b.close()


def ask(amount: object = 900, *, who: str = "agent", **extra: object) -> Request:
    return Request(
        identity=who,
        grant="default",
        tool="withdraw",
        arguments={"amount": amount, **extra},
        rule="/tools/withdraw",
        reason="Withdrawals need a person",
        approvers=("alice",),
        approver_claims={"groups": ("treasury",)},
    )


async def test_a_request_is_pending_and_repeats_share_it(stores: Stores, clock: FakeClock) -> None:
    one, other = stores
    first, created = await one.request(ask(), LIFETIME)
    assert created
    assert first.status is Status.PENDING
    assert first.id.startswith("apr_")
    assert first.requested_at == clock.now
    assert first.expires_at == clock.now + LIFETIME
    again, created_again = await other.request(ask(), LIFETIME)
    assert not created_again
    assert again == first
    assert [a.id for a in (await other.pending()).approvals] == [first.id]
    assert await other.get(first.id) == first


async def test_the_request_round_trips_exactly(stores: Stores) -> None:
    one, other = stores
    odd = ask(2**60 + 1, note="ünïcødé ✓", empty=[], nested={"a": [1.5, None, True]})
    asked, _ = await one.request(odd, LIFETIME)
    got = await other.get(asked.id)
    assert got is not None
    assert got.request == odd
    assert got.request.arguments["amount"] == 2**60 + 1


async def test_approved_is_used_exactly_once_across_stores(stores: Stores) -> None:
    one, other = stores
    asked, _ = await one.request(ask(), LIFETIME)
    decided = await other.decide(asked.id, approve=True, by="alice")
    assert decided.status is Status.APPROVED
    assert decided.decided_by == "alice"
    approved, created = await one.request(ask(), LIFETIME)
    assert (approved.id, approved.status, created) == (asked.id, Status.APPROVED, False)
    assert (await other.pending()).approvals == ()
    assert await one.spend(asked.id)
    assert not await other.spend(asked.id)
    in_use = await other.get(asked.id)
    assert in_use is not None
    assert in_use.status is Status.IN_USE
    await other.commit(asked.id)
    assert await other.get(asked.id) is None
    # The next identical call is a new request.
    anew, created = await other.request(ask(), LIFETIME)
    assert created
    assert anew.id != asked.id
    assert anew.status is Status.PENDING


async def test_a_pending_request_cannot_be_used(stores: Stores) -> None:
    one, _ = stores
    asked, _ = await one.request(ask(), LIFETIME)
    assert not await one.spend(asked.id)
    assert not await one.spend("apr_unknown")


async def test_changed_arguments_or_caller_are_new_requests(stores: Stores) -> None:
    one, other = stores
    asked, _ = await one.request(ask(900), LIFETIME)
    await one.decide(asked.id, approve=True, by="alice")
    more, created = await other.request(ask(901), LIFETIME)
    assert created
    assert more.status is Status.PENDING
    someone_else, created = await other.request(ask(900, who="bot-2"), LIFETIME)
    assert created
    assert someone_else.id not in (asked.id, more.id)
    assert {a.id for a in (await one.pending()).approvals} == {more.id, someone_else.id}


async def test_denied_stays_denied_until_it_expires(stores: Stores, clock: FakeClock) -> None:
    one, other = stores
    asked, _ = await one.request(ask(), LIFETIME)
    denied = await other.decide(asked.id, approve=False, by="alice")
    assert denied.status is Status.DENIED
    again, created = await one.request(ask(), LIFETIME)
    assert (again.id, again.status, created) == (asked.id, Status.DENIED, False)
    assert not await one.spend(asked.id)
    with pytest.raises(ApprovalError, match="already denied"):
        await other.decide(asked.id, approve=True, by="alice")
    clock.now += LIFETIME
    fresh, created = await one.request(ask(), LIFETIME)
    assert created
    assert fresh.status is Status.PENDING


async def test_expiry_voids_requests_and_approvals(stores: Stores, clock: FakeClock) -> None:
    one, other = stores
    waiting, _ = await one.request(ask(1), LIFETIME)
    approved, _ = await one.request(ask(2), LIFETIME)
    await other.decide(approved.id, approve=True, by="alice")
    clock.now += LIFETIME - 1
    assert await one.get(waiting.id) is not None
    clock.now += 1
    assert await one.get(waiting.id) is None
    assert (await other.pending()).approvals == ()
    assert not await other.spend(approved.id)
    with pytest.raises(ApprovalError, match="no live approval"):
        await one.decide(waiting.id, approve=True, by="alice")
    anew, created = await other.request(ask(2), LIFETIME)
    assert created
    assert anew.id != approved.id


async def test_decisions_are_final_and_unknown_ids_refused(stores: Stores) -> None:
    one, other = stores
    asked, _ = await one.request(ask(), LIFETIME)
    await one.decide(asked.id, approve=True, by="alice")
    with pytest.raises(ApprovalError, match="already approved"):
        await other.decide(asked.id, approve=False, by="bob")
    for unknown in ("apr_unknown", "not-an-id", "apr_{x}:id:", ""):
        with pytest.raises(ApprovalError, match="no live approval"):
            await other.decide(unknown, approve=True, by="alice")
        assert await other.get(unknown) is None


async def test_a_spent_approval_is_released_or_committed(stores: Stores) -> None:
    one, other = stores
    asked, _ = await one.request(ask(), LIFETIME)
    await other.decide(asked.id, approve=True, by="alice")
    assert await one.spend(asked.id)
    # A concurrent identical call finds it in use: no new request, and it cannot spend it.
    busy, created = await other.request(ask(), LIFETIME)
    assert (busy.id, busy.status, created) == (asked.id, Status.IN_USE, False)
    assert not await other.spend(asked.id)
    with pytest.raises(ApprovalError, match="already in_use"):
        await other.decide(asked.id, approve=False, by="alice")
    # Refused for another reason: approved again, and usable once more.
    await other.release(asked.id)
    again = await one.get(asked.id)
    assert again is not None
    assert again.status is Status.APPROVED
    assert await other.spend(asked.id)
    await one.commit(asked.id)
    assert await other.get(asked.id) is None
    await other.release(asked.id)  # nothing left to release
    assert await one.get(asked.id) is None
    anew, created = await one.request(ask(), LIFETIME)
    assert created
    assert anew.status is Status.PENDING


async def test_release_and_commit_need_an_approval_in_use(stores: Stores) -> None:
    one, other = stores
    waiting, _ = await one.request(ask(1), LIFETIME)
    approved, _ = await one.request(ask(2), LIFETIME)
    await other.decide(approved.id, approve=True, by="alice")
    for approval_id in (waiting.id, approved.id, "apr_unknown", "not-an-id"):
        await other.release(approval_id)
        await other.commit(approval_id)
    assert [a.id for a in (await one.pending()).approvals] == [waiting.id]
    still = await one.get(approved.id)
    assert still is not None
    assert still.status is Status.APPROVED


async def test_pending_requests_are_capped_per_identity(stores: Stores, clock: FakeClock) -> None:
    one, other = stores
    first, _ = await one.request(ask(1), LIFETIME)
    clock.now += 10
    for amount in (2, 3):
        await (one, other)[amount % 2].request(ask(amount), LIFETIME)
    with pytest.raises(
        ApprovalsFull, match="3 approval requests are already pending for this"
    ) as e:
        await other.request(ask(4), LIFETIME)
    assert (e.value.scope, e.value.cap, e.value.retry_after) == ("identity", 3, LIFETIME - 10)
    # Nothing was created, a repeat of a pending call still answers, others still ask.
    assert len((await one.pending()).approvals) == 3
    repeat, created = await other.request(ask(1), LIFETIME)
    assert (repeat.id, created) == (first.id, False)
    _, created = await one.request(ask(4, who="bot-2"), LIFETIME)
    assert created
    # A decision frees a place.
    await other.decide(first.id, approve=False, by="alice")
    _, created = await one.request(ask(4), LIFETIME)
    assert created


async def test_pending_requests_are_capped_in_total(stores: Stores, clock: FakeClock) -> None:
    one, other = stores
    for who in ("a", "b", "c", "d", "e"):
        await one.request(ask(who=who), LIFETIME)
        clock.now += 1
    with pytest.raises(
        ApprovalsFull, match="5 approval requests are already pending in total"
    ) as e:
        await other.request(ask(who="f"), LIFETIME)
    assert (e.value.scope, e.value.cap, e.value.retry_after) == ("total", 5, LIFETIME - 5)
    # Expiry frees places too.
    clock.now += LIFETIME - 5
    _, created = await other.request(ask(who="f"), LIFETIME)
    assert created
    assert len((await one.pending()).approvals) == 5


async def test_pages_list_every_pending_request_once(stores: Stores, clock: FakeClock) -> None:
    one, other = stores
    # Two share one expiry (the store orders them by id), the rest follow.
    asked = [(await one.request(ask(who=who), LIFETIME))[0] for who in "abcde" if who != "c"]
    clock.now += 1
    asked.append((await one.request(ask(who="c"), LIFETIME))[0])
    seen: list[str] = []
    page = await other.pending(2)
    while True:
        assert len(page.approvals) <= 2
        seen += [a.id for a in page.approvals]
        if not page.next_token:
            break
        # Deciding the entry a token points after does not make the next page skip any.
        await one.decide(seen[-1], approve=True, by="alice")
        page = await (one, other)[len(seen) % 2].pending(2, page.next_token)
    assert sorted(seen) == sorted(a.id for a in asked)
    assert len(seen) == len(set(seen))
    assert seen[-1] == asked[-1].id  # soonest expiry first


async def test_a_page_is_bounded_and_tokens_are_checked(stores: Stores) -> None:
    one, other = stores
    for amount in range(3):
        await one.request(ask(amount), LIFETIME)
    everything = await other.pending(10**9)
    assert (len(everything.approvals), everything.next_token) == (3, "")
    for bad in ("garbage", "12:not-an-id", "abc:apr_x", "nan:apr_x", "1" * 40 + ":apr_x"):
        with pytest.raises(PageTokenError, match="not handed out by a listing"):
            await other.pending(2, bad)


async def test_concurrent_identical_calls_share_one_request(stores: Stores) -> None:
    one, other = stores
    results = await asyncio.gather(
        *((one, other)[i % 2].request(ask(), LIFETIME) for i in range(20))
    )
    assert sum(created for _, created in results) == 1
    assert len({a.id for a, _ in results}) == 1


async def test_concurrent_spends_exactly_one_wins(stores: Stores) -> None:
    one, other = stores
    asked, _ = await one.request(ask(), LIFETIME)
    await other.decide(asked.id, approve=True, by="alice")
    used = await asyncio.gather(*((one, other)[i % 2].spend(asked.id) for i in range(20)))
    assert used.count(True) == 1


async def test_concurrent_decisions_exactly_one_wins(stores: Stores) -> None:
    one, other = stores
    asked, _ = await one.request(ask(), LIFETIME)
    results = await asyncio.gather(
        *((one, other)[i % 2].decide(asked.id, i % 3 == 0, f"p{i}") for i in range(12)),
        return_exceptions=True,
    )
    decided = [r for r in results if not isinstance(r, BaseException)]
    assert len(decided) == 1
    assert all(isinstance(r, ApprovalError) for r in results if r not in decided)


async def test_redis_records_expire_with_the_request(redis_server: RedisServer) -> None:
    prefix = f"ttl-{uuid.uuid4().hex}"
    store = RedisApprovals.from_url(redis_server.url, prefix=prefix, timeout=2.0)
    try:
        asked, _ = await store.request(ask(), LIFETIME)
        tag = f"{{{prefix}:approvals}}:v1:"
        keys = {k.decode() for k in redis_server.client().keys(tag + "*")}
        owner = tag + "pending-of:" + hashlib.sha256(b"agent").hexdigest()
        assert keys == {
            tag + "call:" + ask().key,
            tag + "id:" + asked.id,
            tag + "pending",
            owner,
        }
        for key in keys:
            ttl = int(redis_server.command("PTTL", key))  # type: ignore[call-overload]
            assert LIFETIME * 1000 - 5000 < ttl <= LIFETIME * 1000, key
        # Server time: the request is stamped by Redis, not by this process.
        assert abs(asked.requested_at - float(redis_server.command("TIME")[0])) < 5  # type: ignore[index]
    finally:
        await store.close()


async def test_redis_down_is_store_unavailable(own_redis: RedisServer) -> None:
    store = RedisApprovals.from_url(own_redis.url, prefix="down", timeout=0.2)
    try:
        asked, _ = await store.request(ask(), LIFETIME)
        own_redis.kill()
        with pytest.raises(StoreUnavailable, match=r"Redis at redis://127\.0\.0\.1"):
            await store.request(ask(), LIFETIME)
        with pytest.raises(StoreUnavailable):
            await store.spend(asked.id)
        with pytest.raises(StoreUnavailable):
            await store.decide(asked.id, approve=True, by="alice")
    finally:
        await store.close()


async def test_redis_hung_is_store_unavailable_in_time(own_redis: RedisServer) -> None:
    store = RedisApprovals.from_url(own_redis.url, prefix="hung", timeout=0.1)
    try:
        await store.pending()
        own_redis.pause()
        with pytest.raises(StoreUnavailable, match="did not answer within 100 ms"):
            await store.pending()
    finally:
        own_redis.resume()
        await store.close()


async def test_redis_reloads_a_forgotten_script(own_redis: RedisServer) -> None:
    store = RedisApprovals.from_url(own_redis.url, prefix="flush", timeout=1.0)
    try:
        await store.pending()
        own_redis.command("SCRIPT", "FLUSH")
        asked, created = await store.request(ask(), LIFETIME)
        assert created
        assert asked.status is Status.PENDING
    finally:
        await store.close()
