"""The Redis store against a plain exact model, driven by the same generated requests.

The store keeps a window in 100 quanta and stamps a hit at the end of its quantum, so:
- when every time is a multiple of every quantum, it must agree with the exact model exactly;
- otherwise it may free units up to one quantum late, never early: it never admits what the
  exact model would refuse, it refuses only what the exact model would refuse had the window
  been one quantum longer, and its retry_after is at most one quantum past the exact one.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.limits.base import CounterKey, Hit, HitResult
from authz.limits.redis import QUANTA_PER_WINDOW, RedisStore
from tests.conftest import RedisServer

US = 1_000_000
START = 1_200 * US
ALIGNED_WINDOWS = (10, 20, 30, 60)  # quanta of 0.1, 0.2, 0.3 and 0.6 s: all divide 0.6 s
ALIGNED_STEP = 600_000


@dataclass(frozen=True)
class Counter:
    window: int
    limit: int


@dataclass(frozen=True)
class Request:
    dt: int  # microseconds since the previous request
    hits: tuple[tuple[int, int], ...]  # (counter index, cost)


@dataclass
class Exact:
    """The specification, plainly: every admitted unit with its true time, nothing rounded."""

    log: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def used(self, k: int, since: int, now: int) -> int:
        return sum(c for t, c in self.log.get(k, []) if since < t <= now)

    def wait(self, k: int, window: int, need: int, now: int) -> int:
        freed = 0
        for t, c in self.log.get(k, []):
            if t > now - window:
                freed += c
                if freed >= need:
                    return t + window - now
        raise AssertionError("asked to wait for units the log does not hold")

    def admit(self, hits: tuple[tuple[int, int], ...], now: int) -> None:
        for k, cost in hits:
            self.log.setdefault(k, []).append((now, cost))


def counters() -> st.SearchStrategy[tuple[Counter, ...]]:
    counter = st.builds(Counter, st.sampled_from(ALIGNED_WINDOWS), st.integers(1, 8))
    return st.lists(counter, min_size=1, max_size=3).map(tuple)


def requests(n_counters: int, dt: st.SearchStrategy[int]) -> st.SearchStrategy[list[Request]]:
    hit = st.tuples(st.integers(0, n_counters - 1), st.integers(1, 4))
    request = st.builds(Request, dt, st.lists(hit, min_size=1, max_size=3).map(tuple))
    return st.lists(request, min_size=1, max_size=40)


@st.composite
def scenarios(draw: st.DrawFn, aligned: bool) -> tuple[tuple[Counter, ...], list[Request]]:
    cs = draw(counters())
    dt = st.integers(0, 40).map(lambda n: n * ALIGNED_STEP) if aligned else st.integers(0, 20 * US)
    return cs, draw(requests(len(cs), dt))


def key(k: int) -> CounterKey:
    return CounterKey(f"c{k}", "global", ())


class Clock:
    def __init__(self) -> None:
        self.us = START

    def __call__(self) -> float:
        return self.us / US


async def drive(
    url: str, cs: tuple[Counter, ...], reqs: list[Request]
) -> list[tuple[int, Request, HitResult]]:
    clock = Clock()
    store = RedisStore.from_url(url, prefix=f"prop-{uuid.uuid4().hex}", timeout=1.0, clock=clock)
    seen = []
    try:
        for r in reqs:
            clock.us += r.dt
            hits = [Hit(key(k), cs[k].limit, cs[k].window, cost) for k, cost in r.hits]
            seen.append((clock.us, r, await store.hit(hits)))
    finally:
        await store.close()
    return seen


def judge(
    model: Exact, cs: tuple[Counter, ...], r: Request, now: int, *, late: bool = False
) -> list[tuple[int, int | None]]:
    """Each hit's (used, wait in us) under the exact model; wait 0 fits, None never fits.

    With `late`, every window is stretched by what the store may add: one quantum less 1 us.
    """
    ahead: dict[int, int] = {}
    out: list[tuple[int, int | None]] = []
    for k, cost in r.hits:
        window = cs[k].window * US + (quantum(cs[k].window) - 1 if late else 0)
        limit, pending = cs[k].limit, ahead.get(k, 0)
        used = model.used(k, now - window, now) + pending
        wait: int | None = 0
        if cost + pending > limit:
            wait = None
        elif used + cost > limit:
            wait = model.wait(k, window, used + cost - limit, now)
        out.append((used, wait))
        ahead[k] = pending + cost
    return out


def observed(result: HitResult) -> list[tuple[int, int | None]]:
    """(used before this request's own hit, retry in us) of each hit, like judge()."""
    return [
        (
            s.used - (s.hit.cost if result.allowed else 0),
            None if s.retry_after is None else round(s.retry_after * US),
        )
        for s in result.states
    ]


def quantum(window: int) -> int:
    return window * US // QUANTA_PER_WINDOW


SETTINGS = settings(
    max_examples=150,
    deadline=None,
    # The Redis server is shared on purpose; each example keeps to its own key prefix.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(scenario=scenarios(aligned=True))
def test_agrees_exactly_with_the_model_on_quantum_boundaries(
    redis_server: RedisServer, scenario: tuple[tuple[Counter, ...], list[Request]]
) -> None:
    cs, reqs = scenario
    model = Exact()
    for now, r, result in asyncio.run(drive(redis_server.url, cs, reqs)):
        expected = judge(model, cs, r, now)
        assert result.allowed == all(w == 0 for _, w in expected)
        assert observed(result) == expected
        if result.allowed:
            model.admit(r.hits, now)


@SETTINGS
@given(scenario=scenarios(aligned=False))
def test_never_over_admits_and_frees_at_most_one_quantum_late(
    redis_server: RedisServer, scenario: tuple[tuple[Counter, ...], list[Request]]
) -> None:
    cs, reqs = scenario
    model = Exact()
    for now, r, result in asyncio.run(drive(redis_server.url, cs, reqs)):
        exact, late = judge(model, cs, r, now), judge(model, cs, r, now, late=True)
        if result.allowed:
            assert all(w == 0 for _, w in exact), "admitted more than the limit in a window"
            model.admit(r.hits, now)
        else:
            assert any(w != 0 for _, w in late), "refused what even a late window admits"
        for (k, _), (used, got), (lo, w), (hi, _) in zip(
            r.hits, observed(result), exact, late, strict=True
        ):
            assert lo <= used <= hi
            if got is None or w is None:
                assert got == w
            else:
                assert w <= got < w + quantum(cs[k].window)
