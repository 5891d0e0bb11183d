"""The embedded catalogue: tool definitions kept in this process, for one replica.

The same rules as the Redis catalogue (`lua/observe.lua`), written once more in Python; the
contract tests run both against one list of cases. On one event loop every method runs
without an await between reading and writing, so each is atomic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from authz.catalogue.base import (
    DEFAULT_BOUNDS,
    TOO_LARGE_TO_ACCEPT,
    Bounds,
    CatalogueEntry,
    Change,
    Observed,
    page_of,
    size_of,
    stub,
)
from authz.protocol.tools import ToolDefinition


class MemoryCatalogue:
    def __init__(
        self, bounds: Bounds = DEFAULT_BOUNDS, clock: Callable[[], float] = time.time
    ) -> None:
        self._bounds = bounds
        self._clock = clock
        self._upstreams: dict[str, dict[str, CatalogueEntry]] = {}

    async def observe(
        self, upstream: str, tools: Sequence[ToolDefinition], *, complete: bool
    ) -> list[Observed]:
        table = self._upstreams.get(upstream)
        if table is None:
            if len(self._upstreams) >= self._bounds.max_upstreams:
                return [Observed(t.name, Change.REJECTED, None) for t in tools]
            table = self._upstreams.setdefault(upstream, {})
        now = self._clock()
        seen: set[str] = set()
        tools, rejected, complete = page_of(tools, self._bounds, complete=complete)
        observed = [self._one(upstream, table, tool, now, seen) for tool in tools] + rejected
        if complete:
            for name in sorted(set(table) - seen):
                if not table[name].removed:
                    table[name] = replace(table[name], removed=True)
                    observed.append(Observed(name, Change.REMOVED, table[name]))
        return observed

    def _one(
        self,
        upstream: str,
        table: dict[str, CatalogueEntry],
        tool: ToolDefinition,
        now: float,
        seen: set[str],
    ) -> Observed:
        seen.add(tool.name)
        big = size_of(tool) > self._bounds.max_definition_bytes
        entry = table.get(tool.name)
        if entry is None:
            if big or len(table) >= self._bounds.max_tools:
                return Observed(tool.name, Change.REJECTED, None)
            table[tool.name] = CatalogueEntry(upstream, tool, None, now, now)
            return Observed(tool.name, Change.ADDED, table[tool.name])
        change = Change.UNCHANGED
        if tool.fingerprint == entry.pinned.fingerprint:
            entry = replace(entry, pending=None, oversized=False)
        elif entry.pending is None or tool.fingerprint != entry.pending.fingerprint:
            entry = replace(entry, pending=stub(tool) if big else tool, oversized=big)
            change = Change.CHANGED
        table[tool.name] = replace(entry, last_seen=now, removed=False)
        return Observed(tool.name, change, table[tool.name])

    async def lookup(self, upstream: str, name: str) -> CatalogueEntry | None:
        return self._upstreams.get(upstream, {}).get(name)

    async def accept(
        self, upstream: str, name: str, fingerprint: str, *, by: str
    ) -> CatalogueEntry:
        entry = self._upstreams.get(upstream, {}).get(name)
        if entry is None:
            raise KeyError(f"upstream {upstream!r} has listed no tool {name!r}")
        if fingerprint == entry.pinned.fingerprint:
            accepted = replace(entry, accepted_by=by)
        elif entry.pending is None or entry.pending.fingerprint != fingerprint:
            raise KeyError(f"tool {name!r} of {upstream!r} has no pending definition {fingerprint}")
        elif entry.oversized:
            raise ValueError(TOO_LARGE_TO_ACCEPT)
        else:
            accepted = replace(entry, pinned=entry.pending, pending=None, accepted_by=by)
        self._upstreams[upstream][name] = accepted
        return accepted

    async def entries(self, upstream: str | None = None) -> list[CatalogueEntry]:
        names = [upstream] if upstream is not None else sorted(self._upstreams)
        return [entry for u in names for _, entry in sorted(self._upstreams.get(u, {}).items())]

    async def close(self) -> None:
        return None
