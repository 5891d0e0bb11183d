"""The counter-store contract shared by every backend.

A request may touch several limits (a per-tool cap and a shared budget, say). They are
counted in one atomic operation, all or nothing: if any limit would be exceeded, none is
incremented, so a denied call consumes no budget anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

# The most sessions of one identity with live session-scoped budgets (docs/limits.md, "Keys
# clients choose"): a session id is client-chosen, and each new one would be a new key.
DEFAULT_MAX_SESSIONS: Final = 100


class Crowded(StrEnum):
    """Why a hit was refused although its budget had room: its key would be one too many."""

    # A new session of an identity that already holds the most sessions with live budgets.
    SESSIONS = "sessions"
    # A new budget in an in-process store that holds the most live ones.
    KEYS = "keys"


@dataclass(frozen=True, slots=True)
class CounterKey:
    """Which budget a hit draws from: the policy's counter name and the subject it is kept for.

    `subject` is built from identities and session ids that may contain any character, so
    stores must encode the parts unambiguously (never by joining them with a separator).
    """

    counter: str
    scope: str
    subject: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Hit:
    """One limit to count: at most `limit` units in any rolling `window` seconds."""

    key: CounterKey
    limit: int
    window: int
    cost: int = 1


@dataclass(frozen=True, slots=True)
class LimitState:
    """What one limit looks like after the operation (or, when refused, without it)."""

    hit: Hit
    used: int
    remaining: int
    # Seconds until this hit's cost would fit again; 0 when it fits now, None when the cost
    # exceeds the limit outright and no amount of waiting helps.
    retry_after: float | None
    # Set when the hit was refused for want of room for its key, not of budget; retry_after
    # is then when room is expected.
    crowded: Crowded | None = None


@dataclass(frozen=True, slots=True)
class HitResult:
    allowed: bool
    states: tuple[LimitState, ...]

    @property
    def blocking(self) -> tuple[LimitState, ...]:
        """The limits that refused the request (empty when allowed)."""
        return tuple(s for s in self.states if s.retry_after != 0)

    @property
    def retry_after(self) -> float | None:
        """When the whole request would fit: the latest of its blocking limits."""
        waits = [s.retry_after for s in self.blocking]
        if any(w is None for w in waits):
            return None
        return max((w for w in waits if w is not None), default=0.0)


def session_of(key: CounterKey) -> tuple[tuple[str, ...], str] | None:
    """(owner, session) of a session-scoped key: the identity part of its subject, and the
    session id; None for keys of any other scope."""
    if key.scope != "session" or not key.subject:
        return None
    return key.subject[:-1], key.subject[-1]


class StoreUnavailable(Exception):  # noqa: N818 - reads as a state, like ConnectionRefused
    """The store could not answer in time; the caller applies the configured fail mode."""


def combine(hits: Sequence[Hit]) -> tuple[Hit, ...]:
    """One hit per key, costs added: a batch calling a tool 31 times against a limit of 30
    must be judged as 31 units at once, not as 31 separate hits that each fit."""
    merged: dict[CounterKey, Hit] = {}
    for h in hits:
        seen = merged.get(h.key)
        merged[h.key] = h if seen is None else Hit(h.key, h.limit, h.window, seen.cost + h.cost)
    return tuple(merged.values())


class CounterStore(Protocol):
    """A sliding-window counter backend.

    `hit` must be atomic across every caller sharing the store (threads, processes,
    replicas): either every hit fits and all are counted, or none is counted. A hit on a
    session-scoped key (subject: identity, session) for a session its identity has no live
    budget in is refused (`Crowded.SESSIONS`) while the identity holds the store's most such
    sessions: never by evicting one, which would hand a client a reset of its own budgets.
    Callers pass each key at most once (see `combine`). An empty `hits` sequence is
    allowed and counts nothing.
    """

    async def hit(self, hits: Sequence[Hit]) -> HitResult: ...

    async def refund(self, decision_id: str, hits: Sequence[Hit]) -> bool:
        """Give back the units `hits` counted for decision `decision_id`, atomically and at
        most once per decision id: True when this call gave them back, False when that
        decision was refunded before (a repeat counts nothing).

        Each hit's `cost` is taken off its key's newest units still in the window (a call is
        refunded moments after it was counted, so those are its own); units that have left
        the window are not counted anyway and are never taken back twice. The marker that
        makes a refund once-only lives as long as the longest window of `hits`, the time
        after which there is nothing left to give back."""
        ...

    async def usage(self, hit: Hit) -> LimitState:
        """What `hit` would find now, counting nothing: for operators, never for a Check."""
        ...

    async def reset(self, key: CounterKey) -> None:
        """Forget every unit counted on `key` (an operator's reset)."""
        ...

    async def ready(self) -> None:
        """Connect and check the round trip before the first call (start-up waits on it);
        raises StoreUnavailable when the backend does not answer."""
        ...

    async def close(self) -> None: ...
