"""The response side of one request: the answer's status and body, as ext_proc forwards them.

ext_authz decided the request and left a `ResponsePlan`; this module carries it out on the
answer, knowing nothing of Envoy:

- `answered(plan, status)`: a 5xx answer gives back what the request counted, once;
- `ListRewriter`: the body of an answer that may list tools (`application/json`, or a
  `text/event-stream` of any length read event by event), each `tools/list` result observed
  by the catalogue and cut down to what the caller's grant may see (policy.evaluate.visible).

Whatever the rewriter cannot read with certainty (a body over its bound, an event that is not
JSON, a list that is not a list, a compressed body) raises ResponseRefused: the edge then
withholds the answer rather than pass an unfiltered list.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from authz.catalogue.base import Catalogue, CatalogueUnavailable, Observed, upstream_of
from authz.core.response_plan import ResponsePlan
from authz.core.tool_check import listing
from authz.limits.base import CounterStore, StoreUnavailable
from authz.policy.evaluate import visible
from authz.policy.model import Policy
from authz.protocol.request import HttpRequest
from authz.protocol.sse import MAX_EVENT_BYTES, Event, SseError, SseReader, encode
from authz.protocol.tools import ToolDefinition, ToolDefinitionError, parse_tool

log = logging.getLogger("mcp_authz")

LIST_CHANGED: Final = "notifications/tools/list_changed"
# Names of hidden tools kept in one audit line; the count is always exact.
MAX_NAMED: Final = 32


class ResponseRefused(Exception):  # noqa: N818 - a refusal, like RequestRefused
    """An answer the gateway cannot judge with certainty; it must not reach the agent."""


@dataclass(frozen=True, slots=True)
class ResponseEvent:
    """One thing the response side did, for the audit log."""

    kind: str  # "tools_listed", "refunded", "list_changed", "response_refused"
    decision_id: str
    detail: Mapping[str, Any] = field(default_factory=dict)


class ResponseSide:
    def __init__(
        self,
        policy: Callable[[], Policy],
        store: CounterStore,
        catalogue: Catalogue | None = None,
        upstream: str = "default",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self.catalogue = catalogue
        self._store = store
        self._upstream = upstream

    async def answered(self, plan: ResponsePlan, status: int) -> ResponseEvent | None:
        """The answer's status is known: a 5xx (Envoy's own 503 for an upstream it could not
        reach included) means no result reached the agent, so the request's units go back."""
        if status < 500 or not plan.refund:
            return None
        # Only units still in their window: one that left it is no longer counted, and the
        # store would give back a later call's instead (a call slower than its window).
        elapsed = None if plan.counted_at is None else self._clock() - plan.counted_at
        hits = tuple(h for h in plan.refund if elapsed is not None and elapsed < h.window)
        if not hits:
            return ResponseEvent("refund_expired", plan.decision_id, {"status": status})
        try:
            refunded = await self._store.refund(plan.decision_id, hits)
        except StoreUnavailable as e:
            # The strict side: the call stays counted.
            return ResponseEvent("refund_failed", plan.decision_id, {"error": str(e)})
        detail = {
            "status": status,
            "counters": sorted({h.key.counter for h in hits}),
            "units": sum(h.cost for h in hits),
            "repeated": not refunded,
        }
        return ResponseEvent("refunded", plan.decision_id, detail)

    def rewriter(
        self, plan: ResponsePlan, request: HttpRequest, content_type: str, encoding: str
    ) -> ListRewriter | None:
        """What reads this answer's body; None when the body cannot carry a list MCP clients
        read (neither JSON nor an event stream), so it passes untouched."""
        media = _media(content_type)
        if media is None:
            return None
        if encoding.strip().lower() not in ("", "identity"):
            raise ResponseRefused(f"a {encoding} encoded answer cannot be read")
        lister = _Lister(self, plan, upstream_of(request, self._upstream))
        return ListRewriter(lister, stream=media == "text/event-stream")


_READABLE: Final = ("application/json", "text/event-stream")


def _media(content_type: str) -> str | None:
    """Which of the two list-carrying media the body is; None for any other.

    The SDK clients choose their reader laxly (Python: the value starts with the media type;
    TypeScript: the value contains it), and Envoy joins a repeated header with ",". A value
    that names one of them anywhere, but is not plainly that one type, would be read as a
    list by some client and passed unread by us, so it is refused instead."""
    value = content_type.lower()
    media = value.partition(";")[0].strip()
    if media in _READABLE and "," not in value:
        return media
    if any(m in value for m in _READABLE):
        raise ResponseRefused(f"an answer whose Content-Type is ambiguous: {content_type[:80]!r}")
    return None


class _Lister:
    """Filters the list results of one answer for one plan; collects what it did."""

    def __init__(self, side: ResponseSide, plan: ResponsePlan, upstream: str) -> None:
        self._side = side
        self._plan = plan
        self._upstream = upstream
        self.events: list[ResponseEvent] = []

    async def message(self, message: Any) -> Any | None:
        """The message to send in its place, or None to keep it as it came."""
        if isinstance(message, list):
            rewritten = [await self.message(m) for m in message]
            if all(r is None for r in rewritten):
                return None
            return [m if r is None else r for m, r in zip(message, rewritten, strict=True)]
        if not isinstance(message, dict):
            raise ResponseRefused("a JSON-RPC message is an object or a batch of objects")
        if message.get("method") == LIST_CHANGED:
            self.events.append(ResponseEvent("list_changed", self._plan.decision_id))
            return None
        result = message.get("result")
        if "method" in message or not isinstance(result, dict) or "tools" not in result:
            return None
        return {**message, "result": await self._filtered(result)}

    async def _filtered(self, result: dict[str, Any]) -> dict[str, Any]:
        entries = result["tools"]
        if not isinstance(entries, list):
            raise ResponseRefused("a tools/list result whose `tools` is not an array")
        parsed = [(entry, _definition(entry)) for entry in entries]
        definitions = _distinct([d for _, d in parsed if d is not None])
        complete = not self._plan.paged and result.get("nextCursor") is None
        observed = await self._observe(definitions, complete=complete)
        policy = self._side.policy()
        grant = self._plan.grant or ""
        shown = [d is not None and self._shown(policy, grant, d, observed) for _, d in parsed]
        kept = [e for (e, _), show in zip(parsed, shown, strict=True) if show]
        hidden = [
            d.name if d else "(unreadable)"
            for (_, d), show in zip(parsed, shown, strict=True)
            if not show
        ]
        self.events.append(
            ResponseEvent(
                "tools_listed",
                self._plan.decision_id,
                {
                    "grant": grant,
                    "shown": len(kept),
                    "hidden": len(hidden),
                    "hidden_tools": hidden[:MAX_NAMED],
                    "complete": complete,
                    "policy_version": policy.version,
                },
            )
        )
        return {**result, "tools": kept}

    def _shown(
        self,
        policy: Policy,
        grant: str,
        tool: ToolDefinition,
        observed: dict[str, Observed] | None,
    ) -> bool:
        """Whether this caller sees `tool`: the catalogue's word (a tool whose calls it would
        refuse outright is left out), then the policy's for the tool's class."""
        listed, risk = listing(policy, None if observed is None else observed.get(tool.name))
        return listed and visible(policy, grant, tool.name, risk)

    async def _observe(
        self, definitions: list[ToolDefinition], *, complete: bool
    ) -> dict[str, Observed] | None:
        """What the catalogue made of the page, by tool name; None without a catalogue (or
        one that did not answer), when only the policy filters."""
        catalogue = self._side.catalogue
        if catalogue is None:
            return None
        try:
            observed = await catalogue.observe(self._upstream, definitions, complete=complete)
        except CatalogueUnavailable as e:
            # The list is still filtered by policy; the request side judges calls against the
            # catalogue with its own fail mode.
            log.warning("the catalogue did not record a tools/list answer: %s", e)
            return None
        # Each change is audited once, per tool with its fingerprints, by the catalogue
        # (AuditedCatalogue); the response side adds no line of its own for it.
        return {o.name: o for o in observed}


def _definition(entry: Any) -> ToolDefinition | None:
    """The tool, or None for an entry no one could reason about (it is never shown)."""
    try:
        return parse_tool(entry)
    except ToolDefinitionError as e:
        log.warning("a tools/list entry is left out: %s", e)
        return None


def _distinct(definitions: list[ToolDefinition]) -> list[ToolDefinition]:
    """The page's tools, each name once. A name listed twice with two definitions is refused:
    the catalogue would judge one (which, by order) while the agent reads both, so a swapped
    description could ride next to the pinned one."""
    seen: dict[str, ToolDefinition] = {}
    for tool in definitions:
        first = seen.setdefault(tool.name, tool)
        if first.fingerprint != tool.fingerprint:
            raise ResponseRefused(
                f"a tools/list answer that lists {tool.name[:64]!r} twice, with two definitions"
            )
    return list(seen.values())


class ListRewriter:
    """One answer's body, chunk by chunk: JSON bodies are held (bounded) until complete, event
    streams go out event by event, each untouched event byte for byte."""

    def __init__(self, lister: _Lister, *, stream: bool) -> None:
        self._lister = lister
        self._reader = SseReader() if stream else None
        self._held = bytearray()

    @property
    def events(self) -> list[ResponseEvent]:
        return self._lister.events

    async def feed(self, chunk: bytes, *, end: bool) -> bytes:
        """The bytes to send in place of `chunk` (maybe none yet)."""
        if self._reader is None:
            return await self._json(chunk, end=end)
        try:
            events = self._reader.feed(chunk)
            if end:
                events += self._reader.finish()
        except SseError as e:
            raise ResponseRefused(str(e)) from None
        return b"".join([await self._event(e) for e in events])

    async def _json(self, chunk: bytes, *, end: bool) -> bytes:
        self._held += chunk
        if len(self._held) > MAX_EVENT_BYTES:
            raise ResponseRefused(f"a JSON answer over {MAX_EVENT_BYTES} bytes")
        if not end:
            return b""
        body = bytes(self._held)
        if not body.strip():
            return body
        rewritten = await self._lister.message(_loads(body))
        return body if rewritten is None else _dumps(rewritten).encode()

    async def _event(self, event: Event) -> bytes:
        if event.data is None or not event.data.strip():
            return event.raw  # a comment, or the empty priming event of a resumable stream
        rewritten = await self._lister.message(_loads(event.data.encode()))
        if rewritten is None:
            return event.raw
        return encode(_dumps(rewritten), event=event.event, event_id=event.id)


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ResponseRefused(f"an answer that is not JSON: {e}") from None


def _dumps(message: Any) -> str:
    # ASCII: a lone surrogate the server sent as an escape (valid JSON, not UTF-8) goes on
    # as that escape instead of failing to encode.
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True)
