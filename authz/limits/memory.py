"""The embedded store: exact rolling windows kept in this process.

Each key holds a log of (time, cost) entries no older than its window, so a limit of
`max` units admits exactly `max` units in any window of that length. Entries have a cost of
at least one unit, so a key holds at most `max` entries. Nothing is shared with other
processes: use the Redis store when several replicas must share a budget.

Memory is bounded: idle keys are swept, an identity holds at most `max_sessions` sessions
with live session budgets, and the table at most `max_keys` live keys. A hit that would need
one key too many is refused (`Crowded`), never served by evicting a live key: dropping a
budget that still counts something would reset it for whoever flooded the table.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from authz.limits.base import (
    DEFAULT_MAX_SESSIONS,
    CounterKey,
    Crowded,
    Hit,
    HitResult,
    LimitState,
    session_of,
)

Clock = Callable[[], float]
_SWEEP_FLOOR = 4096
# The most live keys by default: about 1.3 KB each (docs/limits.md), so some 130 MB.
DEFAULT_MAX_KEYS: Final = 100_000
# Seconds between sweeps of a full table: a sweep is O(keys), so a table kept full by live
# keys must not be swept on every request.
_FULL_RECHECK: Final = 1.0
Owner = tuple[str, ...]


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

    def idle_at(self) -> float:
        """When the newest entry leaves the window (the log is idle from then on)."""
        return self.entries[-1][0] + self.window if self.entries else -math.inf


class MemoryStore:
    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if max_sessions < 1 or max_keys < 1:
            raise ValueError(
                f"the counter caps must be at least 1: got {max_sessions} "
                f"(--max-sessions-per-identity) and {max_keys} (--memory-store-max-keys)"
            )
        self._clock = clock
        self._logs: dict[CounterKey, _Log] = {}
        self._sweep_at = _SWEEP_FLOOR
        self._max_sessions = max_sessions
        self._max_keys = max_keys
        # Per identity, its sessions with live session budgets and when each goes idle.
        self._sessions: dict[Owner, dict[str, float]] = {}
        # While `now` is before this, the table is full of live keys and is not swept again.
        self._full_until = -math.inf
        # Decision ids already refunded, each until the longest window of its hits has passed.
        self._refunded: dict[str, float] = {}

    async def hit(self, hits: Sequence[Hit]) -> HitResult:
        # No await between reading and writing: on one event loop this is atomic.
        now = self._clock()
        logs = [self._existing(h, now) for h in hits]
        new_keys = {h.key for h, log in zip(hits, logs, strict=True) if log is None}
        no_room = self._no_room(len(new_keys), now) if new_keys else None
        # One key may appear twice (a batch calling one tool twice): later hits see the units
        # of earlier ones as already counted, or the request could overshoot the limit.
        ahead: dict[CounterKey, int] = {}
        states = []
        for h, log in zip(hits, logs, strict=True):
            crowded = self._crowded(h, now) or (no_room if log is None else None)
            if crowded is None:
                state = _state(h, log or _Log(window=h.window), now, ahead.get(h.key, 0))
            else:
                state = LimitState(h, 0, h.limit, crowded[1], crowded[0])
            states.append(state)
            ahead[h.key] = ahead.get(h.key, 0) + h.cost
        if any(s.retry_after != 0 for s in states):
            return HitResult(allowed=False, states=tuple(states))
        for h in hits:
            self._record(h, now)
        self._sweep(now)
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
        self._sessions.clear()

    def _existing(self, h: Hit, now: float) -> _Log | None:
        log = self._logs.get(h.key)
        if log is not None:
            log.window = h.window
            log.expire(now)
        return log

    def _record(self, h: Hit, now: float) -> None:
        log = self._logs.setdefault(h.key, _Log(window=h.window))
        log.entries.append((now, h.cost))
        log.used += h.cost
        session = session_of(h.key)
        if session is not None:
            owner, sid = session
            sessions = self._sessions.setdefault(owner, {})
            sessions[sid] = max(sessions.get(sid, -math.inf), now + h.window)

    def _crowded(self, h: Hit, now: float) -> tuple[Crowded, float] | None:
        """(SESSIONS, wait) for a new session of an identity at its cap, else None."""
        session = session_of(h.key)
        if session is None:
            return None
        owner, sid = session
        sessions = self._sessions.get(owner)
        if sessions is None or sid in sessions or len(sessions) < self._max_sessions:
            return None
        for idle in [s for s, until in sessions.items() if until <= now]:
            del sessions[idle]
        if len(sessions) < self._max_sessions:
            return None
        return Crowded.SESSIONS, min(sessions.values()) - now

    def _no_room(self, needed: int, now: float) -> tuple[Crowded, float] | None:
        """(KEYS, wait) when `needed` new keys do not fit, even once idle keys are swept."""
        if len(self._logs) + needed <= self._max_keys:
            return None
        if now >= self._full_until:
            self._sweep(now, force=True)
            if len(self._logs) + needed <= self._max_keys:
                return None
            soonest = min(log.idle_at() for log in self._logs.values())
            self._full_until = max(soonest, now + _FULL_RECHECK)
        return Crowded.KEYS, self._full_until - now

    def _sweep(self, now: float, *, force: bool = False) -> None:
        # Idle keys would otherwise grow without bound as identities and sessions come and go;
        # sweeping only when the table has doubled keeps the cost amortised O(1) per hit.
        if not force and len(self._logs) < self._sweep_at:
            return
        for key in [k for k, log in self._logs.items() if _idle(log, now)]:
            del self._logs[key]
        for owner, sessions in list(self._sessions.items()):
            for idle in [s for s, until in sessions.items() if until <= now]:
                del sessions[idle]
            if not sessions:
                del self._sessions[owner]
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
