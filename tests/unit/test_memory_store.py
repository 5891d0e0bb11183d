"""What the in-process store does beyond the shared contract (tests/integration)."""

from __future__ import annotations

import pytest

from authz.limits.base import CounterKey, Crowded, Hit
from authz.limits.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hit(subject: str, window: int = 10, limit: int = 1) -> Hit:
    return Hit(CounterKey("calls", "identity", (subject,)), limit=limit, window=window)


async def test_idle_keys_are_swept_so_memory_stays_bounded() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    for i in range(10_000):
        await store.hit([hit(f"session-{i}")])
    clock.now = 10
    for i in range(10_000):
        await store.hit([hit(f"later-{i}")])
    # Sweeps run whenever the table doubles; the idle first generation is gone.
    assert not (await store.hit([hit("later-0")])).allowed
    assert (await store.hit([hit("session-0")])).allowed
    # Without the sweep the table would hold all 20 001 keys.
    assert len(store._logs) <= 10_001


async def test_a_reloaded_window_applies_to_the_existing_log() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    assert (await store.hit([hit("a", window=60)])).allowed
    clock.now = 20
    assert not (await store.hit([hit("a", window=60)])).allowed
    # The policy now says 10 s: the entry from t=0 is already out of that window.
    assert (await store.hit([hit("a", window=10)])).allowed


async def test_close_forgets_everything() -> None:
    store = MemoryStore(Clock())
    await store.hit([hit("a")])
    await store.close()
    assert (await store.hit([hit("a")])).allowed


async def test_a_full_table_refuses_new_keys_and_keeps_every_live_one() -> None:
    clock = Clock()
    store = MemoryStore(clock, max_keys=4)
    for i in range(4):
        assert (await store.hit([hit(f"agent-{i}")])).allowed
        clock.now += 1
    refused = await store.hit([hit("newcomer"), hit("agent-0", limit=5)])
    assert not refused.allowed
    assert refused.states[0].crowded is Crowded.KEYS
    assert refused.states[0].retry_after == pytest.approx(6)  # agent-0 idle at t=10
    assert refused.states[1].retry_after == 0
    # Nothing was evicted to make room: every budget still counts what it counted.
    assert len(store._logs) == 4
    assert not (await store.hit([hit("agent-0")])).allowed
    assert (await store.hit([hit("agent-0", limit=5)])).allowed  # an existing key still counts
    # Refused again at once without a sweep, then admitted once a key has gone idle.
    assert (await store.hit([hit("newcomer")])).states[0].crowded is Crowded.KEYS
    clock.now = 13
    assert (await store.hit([hit("newcomer")])).allowed
    # Only idle keys went: agent-0 counted at t=4 and is live until t=14.
    assert set(store._logs) == {hit("agent-0").key, hit("newcomer").key}


def test_caps_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match=r"0 \(--memory-store-max-keys\)"):
        MemoryStore(max_keys=0)
