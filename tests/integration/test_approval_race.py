"""Racing identical calls of one approved call, through the whole decision core.

Nothing refused is charged and an approval is used once: the approval is spent before the
limits are counted and released when they refuse. Run on the in-process stores (one event
loop, many tasks interleaving at every store call) and on a real Redis with two gateways
(two clients each, as two replicas hold), with Redis's own clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
import yaml

from authz.approvals.base import ApprovalStore, Status
from authz.approvals.memory import MemoryApprovals
from authz.approvals.redis import RedisApprovals
from authz.core.outcome import Outcome
from authz.limits.base import CounterKey, CounterStore, Hit
from authz.limits.memory import MemoryStore
from authz.limits.redis import RedisStore
from authz.policy.load import parse_policy
from authz.protocol.errors import Refusal
from tests.conftest import RedisServer
from tests.unit.support import Gate

POLICY = parse_policy(
    yaml.safe_dump(
        {
            "version": "1",
            "tools": {
                "withdraw": {
                    "action": "approve",
                    "approval": {"approvers": ["alice"]},
                    "limits": [{"counter": "budget", "window": 3600, "max": 5}],
                },
                "ping": {"limits": [{"counter": "budget", "window": 3600, "max": 5}]},
            },
        }
    ).encode(),
    "race.yaml",
)
BUDGET = Hit(CounterKey("budget", "grant", ("default", "agent")), limit=5, window=3600)
RACERS = 24

NOW = 1_800_000_000.0

Gates = tuple[Gate, Gate]


class Yielding:
    """One of our stores with a turn of the event loop before every call, so racing tasks
    interleave between the steps of a decision as they do over a network (the in-process
    stores never suspend, so without it each decision would run to its end alone)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return await method(*args, **kwargs)

        return call


@pytest.fixture(params=["memory", "redis"])
async def gates(request: pytest.FixtureRequest) -> AsyncIterator[Gates]:
    if request.param == "memory":
        counters = cast(CounterStore, Yielding(MemoryStore(lambda: NOW)))
        approvals = cast(ApprovalStore, Yielding(MemoryApprovals(lambda: NOW)))
        one = Gate(POLICY, counters=counters, approvals=approvals)
        yield one, one
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"race-{uuid.uuid4().hex}"
    stores: list[tuple[CounterStore, ApprovalStore]] = [
        (
            RedisStore.from_url(server.url, prefix=prefix, timeout=2.0),
            RedisApprovals.from_url(server.url, prefix=prefix, timeout=2.0),
        )
        for _ in "ab"
    ]
    yield (
        Gate(POLICY, counters=stores[0][0], approvals=stores[0][1]),
        Gate(POLICY, counters=stores[1][0], approvals=stores[1][1]),
    )
    for counters, approvals in stores:
        await counters.close()
        await approvals.close()


async def approved(gates: Gates) -> str:
    asked = await gates[0]("withdraw", amount=900)
    assert asked.approval is not None
    await gates[1].approvals.decide(asked.approval.id, approve=True, by="alice")
    return asked.approval.id


async def race(gates: Gates) -> list[Outcome]:
    return await asyncio.gather(*(gates[i % 2]("withdraw", amount=900) for i in range(RACERS)))


async def test_racing_retries_use_the_approval_once_and_are_charged_once(gates: Gates) -> None:
    approval_id = await approved(gates)
    outcomes = await race(gates)
    passed = [o for o in outcomes if o.allowed]
    assert len(passed) == 1
    assert passed[0].approval is not None
    assert passed[0].approval.id == approval_id
    assert {o.refusal for o in outcomes if not o.allowed} == {Refusal.APPROVAL_REQUIRED}
    assert (await gates[0].counters.usage(BUDGET)).used == 1
    assert await gates[1].approvals.get(approval_id) is None


async def test_refused_by_a_limit_the_approval_is_released_uncharged(gates: Gates) -> None:
    for _ in range(BUDGET.limit):
        assert (await gates[0]("ping")).allowed
    approval_id = await approved(gates)
    outcomes = await race(gates)
    refusals = {o.refusal for o in outcomes}
    assert Refusal.RATE_LIMITED in refusals
    assert refusals <= {Refusal.RATE_LIMITED, Refusal.APPROVAL_REQUIRED}
    assert (await gates[1].counters.usage(BUDGET)).used == BUDGET.limit
    # Released every time: still approved, unused, and it lets the call through once budget
    # is back.
    kept = await gates[1].approvals.get(approval_id)
    assert kept is not None
    assert kept.status is Status.APPROVED
    await gates[0].counters.reset(BUDGET.key)
    outcomes = await race(gates)
    assert sum(o.allowed for o in outcomes) == 1
    assert (await gates[1].counters.usage(BUDGET)).used == 1


async def test_a_call_finding_its_approval_in_use_is_told_so() -> None:
    gate = Gate(POLICY, now=1_800_000_000.0)
    approval_id = await approved((gate, gate))
    assert await gate.approvals.spend(approval_id)
    busy = await gate("withdraw", amount=900)
    assert busy.refusal is Refusal.APPROVAL_REQUIRED
    assert busy.approval is not None
    assert (busy.approval.id, busy.approval.status) == (approval_id, Status.IN_USE)
    assert "held by a concurrent identical call" in busy.reason
    assert gate.requested[-1].id == approval_id  # no new request was made for it
    assert (await gate.counters.usage(BUDGET)).used == 0
