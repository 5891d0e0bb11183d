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
