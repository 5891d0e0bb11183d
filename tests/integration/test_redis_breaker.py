"""The circuit breaker in front of the Redis store, on its own (no Redis needed)."""

from __future__ import annotations

import asyncio

import pytest

from authz.limits.base import StoreUnavailable
from authz.limits.breaker import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fail(breaker: CircuitBreaker, error: BaseException | None = None) -> None:
    with pytest.raises(type(error or StoreUnavailable("down"))), breaker.guard():
        raise error or StoreUnavailable("down")


def succeed(breaker: CircuitBreaker) -> None:
    with breaker.guard():
        pass


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(threshold=3, clock=Clock())
    fail(breaker)
    fail(breaker)
    succeed(breaker)  # resets the run of failures
    fail(breaker)
    fail(breaker)
    assert not breaker.is_open
    fail(breaker)
    assert breaker.is_open
    with pytest.raises(CircuitOpen, match=r"3 consecutive failures \(last: down\)"):
        succeed(breaker)


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=2.0, clock=clock)
    fail(breaker)
    clock.now = 1.9
    with pytest.raises(CircuitOpen, match=r"next probe in 0\.10s"):
        succeed(breaker)
    clock.now = 2.0
    # While the probe is in flight, everyone else still fails fast.
    with breaker.guard(), pytest.raises(CircuitOpen), breaker.guard():
        pass
    assert not breaker.is_open
    succeed(breaker)


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=2.0, clock=clock)
    fail(breaker)
    clock.now = 2.0
    fail(breaker)
    clock.now = 3.9
    with pytest.raises(CircuitOpen):
        succeed(breaker)
    clock.now = 4.0
    succeed(breaker)
    assert not breaker.is_open


def test_a_cancelled_probe_frees_the_probe_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, clock=clock)
    fail(breaker)
    clock.now = 1.0
    fail(breaker, asyncio.CancelledError())
    assert breaker.is_open
    succeed(breaker)  # the next caller probes instead of waiting for ever
    assert not breaker.is_open


def test_errors_that_are_not_the_store_do_not_count() -> None:
    breaker = CircuitBreaker(threshold=1, clock=Clock())
    fail(breaker, ValueError("bug"))
    assert not breaker.is_open


@pytest.mark.parametrize(("threshold", "cooldown"), [(0, 1.0), (1, 0.0)])
def test_nonsense_settings_are_refused(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(threshold, cooldown)
