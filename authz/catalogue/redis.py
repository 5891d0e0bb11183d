"""The catalogue kept in Redis (the counter store's Redis), shared by every replica.

Every change is one run of `lua/catalogue.lua`, so two replicas observing one listing, or an
operator accepting while a listing lands, never interleave. A lookup (on every `tools/call`)
is one HGET of the tool's small state record; definitions are content-addressed by their
fingerprint, so once parsed they are cached in process (bounded) and only fetched again on a
miss. Every Redis failure is raised as CatalogueUnavailable: the decision core then applies
the fail mode (closed by default).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property, partial
from typing import Any

from authz.catalogue.base import (
    DEFAULT_BOUNDS,
    TOO_LARGE_TO_ACCEPT,
    Bounds,
    CatalogueEntry,
    CatalogueUnavailable,
    Change,
    Observed,
    page_of,
    size_of,
)
from authz.limits.base import StoreUnavailable
from authz.limits.redis_client import (
    _US,
    REDIS_FAILURES,
    Client,
    FirstCallAlone,
    RedisBacked,
    Script,
    unavailable,
)
from authz.protocol.tools import ToolDefinition

SCRIPT = Script("authz.catalogue", "catalogue.lua")
# Parsed definitions kept per process: a fingerprint names one definition forever.
DEFINITION_CACHE = 4096


class RedisCatalogue(RedisBacked):
    """A Catalogue on Redis (standalone, Sentinel or Cluster)."""

    SCRIPTS = (SCRIPT,)

    def __init__(self, client: Client, *, bounds: Bounds = DEFAULT_BOUNDS, **options: Any) -> None:
        """`options` are RedisBacked's (prefix, timeout, breaker, clock, owned, name);
        `RedisCatalogue.from_url(url, bounds=...)` builds one from a URL."""
        super().__init__(client, **options)
        self._bounds = bounds
        self._definitions: OrderedDict[str, ToolDefinition] = OrderedDict()

    @property
    def _keys(self) -> str:
        # One hash tag for the whole catalogue (apart from counters and approvals), so each
        # operation's keys sit on one cluster slot.
        return f"{{{self._prefix}:catalogue}}:v1:"

    def _upstream_keys(self, upstream: str) -> list[str]:
        return [
            self._keys + "upstreams",
            f"{self._keys}state:{upstream}",
            f"{self._keys}defs:{upstream}",
        ]

    @cached_property
    def _first(self) -> FirstCallAlone:
        return FirstCallAlone(self._client)

    async def observe(
        self, upstream: str, tools: Sequence[ToolDefinition], *, complete: bool
    ) -> list[Observed]:
        limit = self._bounds.max_definition_bytes
        tools, rejected, complete = page_of(tools, self._bounds, complete=complete)
        args: list[int | str] = [
            upstream,
            "1" if complete else "0",
            self._bounds.max_upstreams,
            self._bounds.max_tools,
        ]
        for tool in tools:
            blob = _blob(tool) if size_of(tool) <= limit else ""
            args += [tool.name, tool.fingerprint, blob]
        reply = await self._script("observe", self._upstream_keys(upstream), args)
        given = {t.fingerprint: t for t in tools}
        for t in tools:
            self._remember(t)
        out = []
        for name, change, raw in zip(reply[::3], reply[1::3], reply[2::3], strict=True):
            kind = Change(_text(change))
            entry = None if kind is Change.REJECTED else _text(raw)
            out.append((_text(name), kind, entry))
        entries = await self._entries(upstream, [(n, r) for n, _, r in out if r], given)
        return [Observed(n, k, entries.get(n)) for n, k, _ in out] + rejected

    async def lookup(self, upstream: str, name: str) -> CatalogueEntry | None:
        _, state, _ = self._upstream_keys(upstream)
        raw = await self._call(partial(self._client.hget, state, name))
        if raw is None:
            return None
        entries = await self._entries(upstream, [(name, _text(raw))], {})
        return entries[name]

    async def accept(
        self, upstream: str, name: str, fingerprint: str, *, by: str
    ) -> CatalogueEntry:
        keys = self._upstream_keys(upstream)
        outcome, raw = await self._script("accept", keys, [name, fingerprint, by])
        result = _text(outcome)
        if result == "missing":
            raise KeyError(f"upstream {upstream!r} has listed no tool {name!r}")
        if result == "unknown":
            raise KeyError(f"tool {name!r} of {upstream!r} has no pending definition {fingerprint}")
        if result == "oversized":
            raise ValueError(TOO_LARGE_TO_ACCEPT)
        entries = await self._entries(upstream, [(name, _text(raw))], {})
        return entries[name]

    async def entries(self, upstream: str | None = None) -> list[CatalogueEntry]:
        if upstream is None:
            members = await self._call(partial(self._client.smembers, self._keys + "upstreams"))
            names = sorted(_text(m) for m in members)
        else:
            names = [upstream]
        out: list[CatalogueEntry] = []
        for u in names:
            _, state, _ = self._upstream_keys(u)
            raw = await self._call(partial(self._client.hgetall, state))
            records = sorted((_text(k), _text(v)) for k, v in raw.items())
            found = await self._entries(u, records, {})
            out += [found[n] for n, _ in records]
        return out

    async def close(self) -> None:
        await self._close_clients()

    async def _entries(
        self, upstream: str, records: list[tuple[str, str]], given: dict[str, ToolDefinition]
    ) -> dict[str, CatalogueEntry]:
        """Entries from their state records, with definitions from the cache or Redis."""
        states = {name: json.loads(raw) for name, raw in records}
        wanted = {s["p"] for s in states.values()} | {s["q"] for s in states.values() if s["q"]}
        missing = sorted(fp for fp in wanted if fp not in self._definitions and fp not in given)
        if missing:
            _, _, defs = self._upstream_keys(upstream)
            blobs = await self._call(partial(self._client.hmget, defs, missing))
            for fp, blob in zip(missing, blobs, strict=True):
                found = None if blob is None else _definition(_text(blob))
                # Content-addressed: a record filed under another fingerprint is not this one.
                if found is not None and found.fingerprint == fp:
                    self._remember(found)
        return {name: self._entry(upstream, name, s, given) for name, s in states.items()}

    def _entry(
        self, upstream: str, name: str, s: dict[str, str], given: dict[str, ToolDefinition]
    ) -> CatalogueEntry:
        pending = None
        if s["o"] == "1":
            # Over the size bound: never stored, only its fingerprint is known.
            pending = ToolDefinition(name, "", {}, None, {}, s["q"])
        elif s["q"]:
            pending = self._known(upstream, name, s["q"], given)
        pinned = self._known(upstream, name, s["p"], given)
        return CatalogueEntry(
            upstream,
            pinned,
            pending,
            int(s["f"]) / _US,
            int(s["l"]) / _US,
            s["b"] or None,
            removed=s["r"] == "1",
            oversized=s["o"] == "1",
        )

    def _known(
        self, upstream: str, name: str, fingerprint: str, given: dict[str, ToolDefinition]
    ) -> ToolDefinition:
        found = given.get(fingerprint) or self._definitions.get(fingerprint)
        if found is None:
            # Deleted by hand, or a Redis that lost a write: without the definition nothing
            # can be checked, so the fail mode decides (an empty schema would pass anything).
            raise CatalogueUnavailable(
                f"the catalogue of {upstream!r} pins tool {name!r} to {fingerprint[:12]}, "
                "whose definition is missing from Redis"
            )
        return found

    def _remember(self, tool: ToolDefinition) -> None:
        self._definitions[tool.fingerprint] = tool
        self._definitions.move_to_end(tool.fingerprint)
        while len(self._definitions) > DEFINITION_CACHE:
            self._definitions.popitem(last=False)

    async def _script(self, op: str, keys: list[str], args: list[int | str]) -> Any:
        return await self._call(partial(self._first.run, SCRIPT, keys, [op, self._now(), *args]))

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        try:
            with self._breaker.guard():
                try:
                    async with asyncio.timeout(self._timeout):
                        return await command()
                except REDIS_FAILURES as e:
                    raise unavailable(self._name, self._timeout, e) from e
        except StoreUnavailable as e:
            raise CatalogueUnavailable(str(e)) from e


def _blob(tool: ToolDefinition) -> str:
    stored = tool.fields() | {"fingerprint": tool.fingerprint}
    # ASCII: a lone surrogate (valid JSON from a server) is kept as its escape, which Redis
    # can store and json.loads reads back as the same string.
    return json.dumps(stored, separators=(",", ":"), ensure_ascii=True)


def _definition(blob: str) -> ToolDefinition:
    d = json.loads(blob)
    return ToolDefinition(
        d["name"],
        d["description"],
        d["inputSchema"],
        d["outputSchema"],
        d["annotations"],
        d["fingerprint"],
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
