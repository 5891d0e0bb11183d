"""A circuit breaker, so that a dead counter store costs requests no time.

Closed: calls go through and consecutive failures are counted. After `threshold` of them it
opens: calls fail at once without touching the store. After `cooldown` seconds one call is let
through as a probe (half-open); its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from authz.limits.base import StoreUnavailable

log = logging.getLogger("mcp_authz.limits")


class CircuitOpen(StoreUnavailable):
    """Refused without trying: the store failed recently and is not due for a probe yet."""


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or cooldown <= 0:
            raise ValueError("a circuit breaker needs threshold >= 1 and cooldown > 0")
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._last_error = ""

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run one call through the breaker; StoreUnavailable from it counts as a failure."""
        probe = self._admit()
        try:
            yield
        except StoreUnavailable as e:
            self._failed(str(e))
            raise
        except BaseException:
            # Cancelled or a bug: says nothing about the store, but a probe must not stay
            # in flight forever or the breaker would never close.
            if probe:
                self._probing = False
            raise
        self._succeeded()

    def _admit(self) -> bool:
        """Let the call through (True when it is the half-open probe) or raise CircuitOpen."""
        if self._opened_at is None:
            return False
        due = self._opened_at + self._cooldown - self._clock()
        if due > 0 or self._probing:
            raise CircuitOpen(
                f"circuit open after {self._failures} consecutive failures "
                f"(last: {self._last_error}); next probe in {max(due, 0.0):.2f}s"
            )
        self._probing = True
        return True

    def _failed(self, error: str) -> None:
        self._failures += 1
        self._last_error = error
        self._probing = False
        if self._opened_at is not None or self._failures >= self._threshold:
            if self._opened_at is None:
                log.warning("counter store circuit opened: %s", error)
            self._opened_at = self._clock()

    def _succeeded(self) -> None:
        if self._opened_at is not None:
            log.warning("counter store circuit closed: the store answers again")
        self._failures = 0
        self._opened_at = None
        self._probing = False
