"""Adversarial review of the quota refund: a refund never gives back more than its own call
still holds in the window.

The stores give a refund back from a key's newest entries. A call slower than its window
(Envoy's MCP route has no timeout) whose own entry has already left the window would then
take back a later call's unit: one more call than the limit, per slow failing call.
"""

from __future__ import annotations

import json

from authz.core.response_plan import ResponsePlan
from authz.core.response_side import ResponseSide
from authz.limits.base import CounterKey, Hit
from authz.limits.memory import MemoryStore
from authz.policy.load import parse_policy

POLICY = parse_policy(json.dumps({"version": "1", "default": "deny"}).encode(), "policy.json")
HIT = Hit(CounterKey("p", "grant", ("default", "agent")), 2, 60, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_call_slower_than_its_window_gets_nothing_back() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    side = ResponseSide(lambda: POLICY, store, clock=clock)
    assert (await store.hit([HIT])).allowed  # the slow call, counted
    slow = ResponsePlan("slow", refund=(HIT,), counted_at=clock.now)
    clock.now += HIT.window + 1  # its unit has left the window by itself
    assert (await store.hit([HIT])).allowed
    assert (await store.hit([HIT])).allowed  # the limit is reached again
    clock.now += 1
    event = await side.answered(slow, 504)
    assert (await store.usage(HIT)).used == 2
    assert not (await store.hit([HIT])).allowed
    assert event is not None
    assert event.kind == "refund_expired"


async def test_a_call_answered_5xx_within_its_window_is_given_back() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    side = ResponseSide(lambda: POLICY, store, clock=clock)
    await store.hit([HIT])
    plan = ResponsePlan("quick", refund=(HIT,), counted_at=clock.now)
    clock.now += HIT.window - 1
    event = await side.answered(plan, 503)
    assert event is not None
    assert event.kind == "refunded"
    assert (await store.usage(HIT)).used == 0


def test_the_plan_carries_when_it_counted() -> None:
    plan = ResponsePlan("d", refund=(HIT,), counted_at=1_800_000_000.123)
    assert ResponsePlan.decode(plan.encode()).counted_at == plan.counted_at
