"""The catalogue contract shared by every backend (in process, Redis).

The response side (ext_proc) observes every `tools/list` answer; the request side looks a
tool up before judging a `tools/call`. Both read the same entries, so a definition swapped
under a running gateway is seen by every replica that shares the backend.

A tool is pinned to the first fingerprint seen for it (or the one an operator accepted).
A later, different fingerprint is recorded as `pending` and leaves the pin as it was: only
an operator's `accept` (or the policy's `on_change`) moves the pin.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from authz.protocol.request import MAX_ORIGIN_CHARS, HttpRequest
from authz.protocol.tools import ToolDefinition


class Change(Enum):
    """What one `tools/list` answer changed about one tool, for the audit log."""

    ADDED = "added"  # first seen: pinned to this definition
    CHANGED = "changed"  # differs from the pinned definition: pending until accepted
    REMOVED = "removed"  # pinned, but missing from a complete listing (the pin is kept)
    UNCHANGED = "unchanged"
    # Over a bound (definition size, tools per upstream, upstreams): not catalogued, so a
    # call to it is judged as a tool never listed. A pinned tool whose new definition is too
    # large counts as CHANGED instead, so size cannot hide a swap.
    REJECTED = "rejected"


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
    # Missing from the last complete listing. The pin stays, so a tool removed and listed
    # again with another definition is a change, never a fresh "first seen".
    removed: bool = False
    # The pending definition was over the size bound: only its fingerprint is known (the
    # `pending` held is a stub with no schema), so it cannot be accepted, only refused.
    oversized: bool = False

    @property
    def drifted(self) -> bool:
        return self.pending is not None

    @property
    def current(self) -> ToolDefinition:
        """The definition the server offers now: the pending one if it drifted."""
        return self.pending or self.pinned


@dataclass(frozen=True, slots=True)
class Observed:
    """One tool's change as seen in one `tools/list` answer."""

    name: str
    change: Change
    entry: CatalogueEntry | None  # None for REMOVED tools that were never pinned


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one catalogue may hold: the servers choose their tools, so every count is capped."""

    max_upstreams: int = 64
    max_tools: int = 1024  # per upstream, removed ones included
    max_definition_bytes: int = 65536  # canonical JSON of one tool's defining fields


DEFAULT_BOUNDS = Bounds()

# The upstream name of a deployment that does not configure one (a sidecar fronting one server).
DEFAULT_UPSTREAM = "default"
# The setting value that names each upstream by the request's `:authority` instead.
AUTHORITY = ":authority"


TOO_LARGE_TO_ACCEPT = (
    "the pending definition was over the catalogue's size bound and was never stored; "
    "raise the bound (--catalogue-max-definition-bytes) and let the server list it again"
)


def page_of(
    tools: Sequence[ToolDefinition], bounds: Bounds, *, complete: bool
) -> tuple[Sequence[ToolDefinition], list[Observed], bool]:
    """The part of one listing a backend records, what it rejects unread, and whether the
    listing still counts as complete: no more tools than an upstream may hold are sent on
    (a server listing a million tools must not cost a million script arguments); the rest
    are rejected and, since they were never compared, nothing is marked removed."""
    if len(tools) <= bounds.max_tools:
        return tools, [], complete
    rest = [Observed(t.name, Change.REJECTED, None) for t in tools[bounds.max_tools :]]
    return tools[: bounds.max_tools], rest, False


def size_of(tool: ToolDefinition) -> int:
    """The bytes of a definition as the bound counts them: its fields as compact JSON."""
    text = json.dumps(tool.fields(), separators=(",", ":"), ensure_ascii=False)
    # A lone surrogate is valid JSON (`"\ud800"`) but not UTF-8: counted as its 3 bytes.
    return len(text.encode("utf-8", "surrogatepass"))


def stub(tool: ToolDefinition) -> ToolDefinition:
    """What an oversized definition is kept as: its name and fingerprint, nothing to trust."""
    return replace(tool, description="", input_schema={}, output_schema=None, annotations={})


def upstream_of(request: HttpRequest, setting: str) -> str:
    """Which upstream's catalogue a request (a `tools/list` or a `tools/call`) belongs to.

    `setting` is a fixed name (every request goes to one server) or AUTHORITY, for a front
    proxy that routes by host: then the request's `:authority`, lower-cased and bounded.
    Both edges (ext_proc observing lists, ext_authz judging calls) call this one function so
    a call is judged against the list its own upstream gave.
    """
    if setting != AUTHORITY:
        return setting
    authority = request.header(":authority") or request.header("host") or ""
    return authority[:MAX_ORIGIN_CHARS].lower() or DEFAULT_UPSTREAM


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
        Raises KeyError when no such pending definition exists, ValueError when it was over
        the definition bound (it was never stored, so there is nothing to pin)."""
        ...

    async def entries(self, upstream: str | None = None) -> list[CatalogueEntry]:
        """Every entry (of one upstream, or all), for the admin API, CLI and console."""
        ...

    async def close(self) -> None: ...
