"""The embedded store: exact rolling windows kept in this process.

Each key holds a log of (time, cost) entries no older than its window, so a limit of
`max` units admits exactly `max` units in any window of that length. Entries have a cost of
at least one unit, so a key holds at most `max` entries. Nothing is shared with other
processes: use the Redis store when several replicas must share a budget.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from authz.limits.base import CounterKey, Hit, HitResult, LimitState

Clock = Callable[[], float]
_SWEEP_FLOOR = 4096


@dataclass(slots=True)
class _Log:
    entries: deque[tuple[float, int]] = field(default_factory=deque)
    used: int = 0
    window: int = 0

    def expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - self.window:
            self.used -= self.entries.popleft()[1]

    def give_back(self, cost: int) -> None:
        """Take `cost` units off the newest entries (a refund)."""
        while cost > 0 and self.entries:
            stamp, units = self.entries.pop()
            kept = units - cost
            cost -= units
            if kept > 0:
                self.entries.append((stamp, kept))
            self.used -= units - max(kept, 0)

    def wait_for(self, room: int, now: float) -> float:
        """Seconds until `room` units are free, counting only entries already in the log."""
        freed = 0
        for stamp, cost in self.entries:
            freed += cost
            if freed >= room:
                return stamp + self.window - now
        return 0.0


class MemoryStore:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[CounterKey, _Log] = {}
        self._sweep_at = _SWEEP_FLOOR
        # Decision ids already refunded, each until the longest window of its hits has passed.
        self._refunded: dict[str, float] = {}

    async def hit(self, hits: Sequence[Hit]) -> HitResult:
        # No await between reading and writing: on one event loop this is atomic.
        now = self._clock()
        logs = [self._log(h, now) for h in hits]
        # One key may appear twice (a batch calling one tool twice): later hits see the units
        # of earlier ones as already counted, or the request could overshoot the limit.
        ahead: dict[CounterKey, int] = {}
        states = []
        for h, log in zip(hits, logs, strict=True):
            states.append(_state(h, log, now, ahead.get(h.key, 0)))
            ahead[h.key] = ahead.get(h.key, 0) + h.cost
        if any(s.retry_after != 0 for s in states):
            return HitResult(allowed=False, states=tuple(states))
        for h, log in zip(hits, logs, strict=True):
            log.entries.append((now, h.cost))
            log.used += h.cost
        return HitResult(allowed=True, states=tuple(_counted(s) for s in states))

    async def refund(self, decision_id: str, hits: Sequence[Hit]) -> bool:
        now = self._clock()
        if self._refunded.get(decision_id, now) > now:
            return False
        self._refunded[decision_id] = now + max((h.window for h in hits), default=0)
        if len(self._refunded) >= self._sweep_at:
            self._refunded = {k: t for k, t in self._refunded.items() if t > now}
        for h in hits:
            log = self._logs.get(h.key)
            if log is not None:
                log.expire(now)
                log.give_back(h.cost)
        return True

    async def usage(self, hit: Hit) -> LimitState:
        now = self._clock()
        log = self._logs.get(hit.key) or _Log()
        log.window = hit.window
        log.expire(now)
        return _state(hit, log, now, 0)

    async def reset(self, key: CounterKey) -> None:
        self._logs.pop(key, None)

    async def ready(self) -> None:
        """In-process: always ready."""

    async def close(self) -> None:
        self._logs.clear()

    def _log(self, h: Hit, now: float) -> _Log:
        log = self._logs.setdefault(h.key, _Log(window=h.window))
        log.window = h.window
        log.expire(now)
        self._sweep(now)
        return log

    def _sweep(self, now: float) -> None:
        # Idle keys would otherwise grow without bound as identities and sessions come and go;
        # sweeping only when the table has doubled keeps the cost amortised O(1) per hit.
        if len(self._logs) < self._sweep_at:
            return
        for key in [k for k, log in self._logs.items() if _idle(log, now)]:
            del self._logs[key]
        self._sweep_at = max(_SWEEP_FLOOR, 2 * len(self._logs))


def _idle(log: _Log, now: float) -> bool:
    log.expire(now)
    return not log.entries


def _state(h: Hit, log: _Log, now: float, ahead: int) -> LimitState:
    used = log.used + ahead
    remaining = max(h.limit - used, 0)
    if h.cost + ahead > h.limit:
        retry: float | None = None
    elif h.cost <= remaining:
        retry = 0.0
    else:
        retry = log.wait_for(used + h.cost - h.limit, now)
    return LimitState(hit=h, used=used, remaining=remaining, retry_after=retry)


def _counted(s: LimitState) -> LimitState:
    used = s.used + s.hit.cost
    return LimitState(hit=s.hit, used=used, remaining=s.hit.limit - used, retry_after=0.0)
