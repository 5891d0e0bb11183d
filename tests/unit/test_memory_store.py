"""What the in-process store does beyond the shared contract (tests/integration)."""

from __future__ import annotations

from authz.limits.base import CounterKey, Hit
from authz.limits.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hit(subject: str, window: int = 10, limit: int = 1) -> Hit:
    return Hit(CounterKey("calls", "session", (subject,)), limit=limit, window=window)


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
