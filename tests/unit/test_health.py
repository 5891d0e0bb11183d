"""ReplicaHealth: which gRPC health service says what, while starting, judging, failing, draining.

The servicer is grpcio-health-checking's own; its Check is called directly, without a network.
"""

from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health, health_pb2

from authz.edges import health as replica_health
from authz.edges.health import AUTHORIZATION_SERVICE, LIVENESS, ReplicaHealth
from authz.limits.base import StoreUnavailable

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def statuses(servicer: health.aio.HealthServicer) -> dict[str, int]:
    services = ("", AUTHORIZATION_SERVICE, LIVENESS)
    return {
        s: (await servicer.Check(health_pb2.HealthCheckRequest(service=s), None)).status
        for s in services
    }


def judging(status: int) -> dict[str, int]:
    return {"": status, AUTHORIZATION_SERVICE: status, LIVENESS: SERVING}


async def test_liveness_serves_while_start_up_waits_for_the_store() -> None:
    replica = await ReplicaHealth.start(judging=False)
    servicer = replica.servicer
    assert await statuses(servicer) == judging(NOT_SERVING)
    await replica.set_judging(True)
    assert await statuses(servicer) == judging(SERVING)


async def test_drain_is_not_serving_everywhere_for_good() -> None:
    replica = await ReplicaHealth.start(judging=True)
    servicer = replica.servicer
    await replica.drain()
    await replica.set_judging(True)
    assert set((await statuses(servicer)).values()) == {NOT_SERVING}


class Store:
    """Stores that answer each look as the test says, in lockstep with the watcher: `answer`
    returns once the watcher has acted on that answer and is waiting in its next look."""

    def __init__(self) -> None:
        self._answers = asyncio.Queue[BaseException | str | None]()
        self._waiting = asyncio.Queue[None]()

    async def __call__(self) -> None:
        self._waiting.put_nowait(None)
        answer = await self._answers.get()
        if answer == "hang":
            await asyncio.Event().wait()
        if isinstance(answer, BaseException):
            raise answer

    async def answer(self, answer: BaseException | str | None) -> None:
        await self._waiting.get()
        self._answers.put_nowait(answer)
        await self._waiting.get()
        self._waiting.put_nowait(None)


@pytest.fixture(autouse=True)
def quick_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_health, "WATCH_INTERVAL", 0.0)
    monkeypatch.setattr(replica_health, "WATCH_TIMEOUT", 0.05)


@pytest.mark.parametrize("failure", [StoreUnavailable("redis down"), "hang"], ids=str)
async def test_watch_follows_the_store(
    failure: BaseException | str, caplog: pytest.LogCaptureFixture
) -> None:
    replica = await ReplicaHealth.start(judging=True)
    servicer = replica.servicer
    store = Store()
    watching = asyncio.create_task(replica.watch(store))
    try:
        for answer, status in [(None, SERVING), (failure, NOT_SERVING), (failure, NOT_SERVING)]:
            await store.answer(answer)
            assert await statuses(servicer) == judging(status)
        await store.answer(None)
        assert await statuses(servicer) == judging(SERVING)
    finally:
        watching.cancel()
    changes = [r.getMessage() for r in caplog.records if r.name == "mcp_authz.health"]
    assert len(changes) == 2, changes  # once down, once up: not once per look
    assert "NOT_SERVING" in changes[0]
    assert ("redis down" if failure != "hang" else "did not answer within") in changes[0]


async def test_watch_after_drain_never_serves_again() -> None:
    replica = await ReplicaHealth.start(judging=False)
    servicer = replica.servicer
    await replica.drain()
    store = Store()
    watching = asyncio.create_task(replica.watch(store))
    try:
        await store.answer(None)
        assert set((await statuses(servicer)).values()) == {NOT_SERVING}
    finally:
        watching.cancel()


async def test_drain_ends_ready_and_live_for_the_http_endpoint() -> None:
    replica = await ReplicaHealth.start(judging=True)
    assert (replica.judging, replica.live) == (True, True)
    await replica.drain()
    assert (replica.judging, replica.live) == (False, False)


async def test_on_change_hears_each_change_once_and_drain_as_the_last() -> None:
    heard: list[bool] = []
    replica = await ReplicaHealth.start(judging=False, on_change=heard.append)
    for judging_now in (False, True, True, False, True):
        await replica.set_judging(judging_now)
    await replica.drain()
    await replica.set_judging(True)
    await replica.drain()
    assert heard == [False, True, False, True, False]
