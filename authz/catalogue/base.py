"""The catalogue contract shared by every backend (in process, Redis).

The response side (ext_proc) observes every `tools/list` answer; the request side looks a
tool up before judging a `tools/call`. Both read the same entries, so a definition swapped
under a running gateway is seen by every replica that shares the backend.

A tool is pinned to the first fingerprint seen for it (or the one an operator accepted).
A later, different fingerprint is recorded as `pending` and leaves the pin as it was: only
an operator's `accept` (or the policy's `on_change`) moves the pin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from authz.protocol.tools import ToolDefinition


class Change(Enum):
    """What one `tools/list` answer changed about one tool, for the audit log."""

    ADDED = "added"  # first seen: pinned to this definition
    CHANGED = "changed"  # differs from the pinned definition: pending until accepted
    REMOVED = "removed"  # pinned, but missing from a complete listing
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One tool of one upstream: the pinned definition and, if it drifted, the new one."""

    upstream: str
    pinned: ToolDefinition
    # The latest definition seen when it differs from the pin; None while they agree.
    pending: ToolDefinition | None
    first_seen: float
    last_seen: float
    accepted_by: str | None = None

    @property
    def drifted(self) -> bool:
        return self.pending is not None


@dataclass(frozen=True, slots=True)
class Observed:
    """One tool's change as seen in one `tools/list` answer."""

    name: str
    change: Change
    entry: CatalogueEntry | None  # None for REMOVED tools that were never pinned


class CatalogueUnavailable(Exception):  # noqa: N818 - a state, like StoreUnavailable
    """The backend could not answer in time; the caller applies the configured fail mode."""


class Catalogue(Protocol):
    """Tool definitions per upstream, shared by every replica using the same backend."""

    async def observe(
        self, upstream: str, tools: Sequence[ToolDefinition], *, complete: bool
    ) -> list[Observed]:
        """Record one page of a `tools/list` answer. `complete` is true when the answer
        had no `nextCursor` and no cursor was sent (the whole list), so missing tools
        count as removed."""
        ...

    async def lookup(self, upstream: str, name: str) -> CatalogueEntry | None:
        """The entry a `tools/call` is judged against; None when never listed."""
        ...

    async def accept(
        self, upstream: str, name: str, fingerprint: str, *, by: str
    ) -> CatalogueEntry:
        """Move the pin to the pending definition with `fingerprint` (an operator's word).
        Raises KeyError when no such pending definition exists."""
        ...

    async def entries(self, upstream: str | None = None) -> list[CatalogueEntry]:
        """Every entry (of one upstream, or all), for the admin API, CLI and console."""
        ...

    async def close(self) -> None: ...
