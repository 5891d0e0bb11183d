"""The audit log: one JSON line per decision, for Loki or any other log pipeline.

A line answers who called what, when, and why it was refused, and names the trace it
belongs to. Arguments never appear in clear unless allow-listed: each call's arguments are
reduced to a keyed hash (HMAC-SHA256 of their canonical JSON), which shows that two calls
carried the same arguments without saying what they were. The key comes from a file, so
hashes match across replicas and restarts, or is made per process.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import json
import logging
import math
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import orjson
from opentelemetry.trace import SpanContext, format_span_id, format_trace_id

from authz import __version__
from authz.approvals.base import Approval
from authz.catalogue.base import Change, Observed
from authz.core.outcome import Outcome, ToolFacts
from authz.core.response_side import ResponseEvent
from authz.observe.recent import RecentRecords
from authz.protocol.echo import json_line
from authz.protocol.mcp import McpCall

log = logging.getLogger("mcp_authz.audit")

# Below this a key could be guessed, and with it every hashed argument.
MIN_KEY_BYTES: Final = 16
# `argument_keys` keeps at most this many top-level names, each cut to this many characters:
# the agent chooses them.
MAX_ARGUMENT_KEYS: Final = 64
MAX_KEY_CHARS: Final = 64
# Names the layout of every audit line; the number grows when a field changes meaning or goes.
AUDIT_SCHEMA: Final = "mcp-authz.audit/1"
_ABSENT: Final = object()
# The file's buffer: decision lines are written when it fills, and at the end of the event
# loop's turn that wrote them, so a burst of decisions costs one write, not one per line.
BUFFER_BYTES: Final = 64 * 1024
# The canonical JSON that argument hashes are taken of (built once: json.dumps with options
# builds an encoder on every call). Its layout is part of the hash: never change it.
_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False
).encode
# orjson with sorted keys writes the same bytes for strings (the same escapes, keys in code
# point order), integers, booleans and null, at a fraction of the cost; not for every float
# (0.00001 where the standard library writes 1e-05). A float's text always has a digit
# followed by "." or an exponent: output with none of those holds no float (a string
# with one only takes the standard library's way).
_MAYBE_FLOAT: Final = re.compile(rb"[0-9][.eE]")


@dataclass(frozen=True, slots=True)
class ArgumentPath:
    """An argument logged in clear: `path.to.key` for any tool or prompt, `NAME:path.to.key`
    for the one so named."""

    tool: str | None
    keys: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> ArgumentPath:
        tool, sep, path = spec.strip().partition(":")
        if not sep:
            tool, path = "", tool
        keys = tuple(path.split("."))
        if (sep and not tool) or not all(keys):
            raise ValueError(f"audit argument path {spec!r} is not PATH or TOOL:PATH (a.b.c)")
        return cls(tool or None, keys)

    def applies_to(self, target: str | None) -> bool:
        return self.tool is None or self.tool == target

    def value_in(self, arguments: Mapping[str, Any]) -> Any:
        node: Any = arguments
        for key in self.keys:
            if not isinstance(node, Mapping) or key not in node:
                return _ABSENT
            node = node[key]
        return node

    def __str__(self) -> str:
        return ".".join(self.keys)


class ArgumentAudit:
    """What of a call's arguments reaches the log: a keyed hash, and allow-listed values."""

    def __init__(self, key: bytes, allowed: Sequence[ArgumentPath] = ()) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the audit hash key must be at least {MIN_KEY_BYTES} bytes")
        # Keyed once: each hash copies this state (OpenSSL sets up an HMAC key per
        # hmac.digest call, twice the cost of the hash itself).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._allowed = tuple(allowed)
        # Names the key without revealing it, so a reader knows which hashes can match.
        self.key_id = hashlib.sha256(key).hexdigest()[:12]

    @classmethod
    def configure(cls, allowed: Sequence[str], key_file: Path | None) -> ArgumentAudit:
        paths = [ArgumentPath.parse(spec) for spec in allowed]
        if key_file is None:
            log.info(
                "no --audit-hash-key-file: argument hashes use a key made for this process "
                "and match only within it"
            )
            return cls(secrets.token_bytes(32), paths)
        return cls(_read_key(key_file), paths)

    def describe(self, call: McpCall) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": call.id, "target": call.target, "hmac": self.digest(call)}
        clear = self.clear(call)
        if clear:
            entry["clear"] = clear
        return entry

    def digest(self, call: McpCall) -> str:
        mac = self._keyed.copy()
        mac.update(canonical_json(call.arguments))
        return mac.hexdigest()

    def clear(self, call: McpCall) -> dict[str, Any]:
        if not self._allowed:
            return {}
        paths = (p for p in self._allowed if p.applies_to(call.target))
        found = ((str(p), p.value_in(call.arguments)) for p in paths)
        return {path: value for path, value in found if value is not _ABSENT}


def canonical_json(arguments: Mapping[str, Any]) -> bytes:
    """The UTF-8 of the sorted compact JSON an argument hash is taken of."""
    try:
        raw = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # An integer past 64 bits, or a mapping orjson does not take.
        raw = None
    if raw is not None and _MAYBE_FLOAT.search(raw) is None:
        return raw
    return _CANONICAL(arguments).encode("utf-8")


def argument_keys(call: McpCall) -> list[str]:
    """The call's top-level argument names, sorted, at most MAX_ARGUMENT_KEYS of them, each
    cut to MAX_KEY_CHARS with unprintable characters escaped: a name with U+0085 or U+2028
    in it must not split the line for a line-based log reader."""
    names = call.arguments
    if len(names) <= MAX_ARGUMENT_KEYS:
        # The usual few, short and printable: nothing to cut or escape, and no heap.
        if max(map(len, names), default=0) <= MAX_KEY_CHARS and "".join(names).isprintable():
            return sorted(names)
        return sorted(_printable(k[:MAX_KEY_CHARS]) for k in names)
    return heapq.nsmallest(MAX_ARGUMENT_KEYS, (_printable(k[:MAX_KEY_CHARS]) for k in names))


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _approval(approval: Approval) -> dict[str, Any]:
    # Its id, state and approver only: the approval's own record holds the call's arguments.
    return {"id": approval.id, "status": approval.status.value, "decided_by": approval.decided_by}


def _catalogue(tool: ToolFacts) -> dict[str, Any]:
    return {
        "upstream": tool.upstream,
        "fingerprint": tool.fingerprint,
        "offered": tool.offered,
        "open_world": tool.open_world,
        "argument_path": tool.argument_path,
    }


def _read_key(path: Path) -> bytes:
    try:
        # Trailing whitespace is the newline `openssl rand -hex 32 > key` leaves, not key.
        return path.read_bytes().rstrip()
    except OSError as e:
        raise ValueError(f"cannot read the audit hash key {path}: {e.strerror}") from None


_MILLIS: Final = tuple(f".{ms:03d}+00:00" for ms in range(1000))


class _Stamps:
    """Each line's time as ISO 8601 UTC to the millisecond, from epoch seconds: the date and
    time of day are formatted once a second (datetime's isoformat costs more than the rest of
    a line's fields together)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        # Rounded to the microsecond as datetime.fromtimestamp rounds (the fraction alone,
        # half to even), then cut to the millisecond as isoformat(timespec="milliseconds").
        fraction, whole = math.modf(self._clock())
        second, micros = int(whole), round(fraction * 1_000_000)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).isoformat()[:19]
        return self._prefix + _MILLIS[micros // 1000]


class AuditLog:
    def __init__(
        self,
        stream: TextIO | None,
        arguments: ArgumentAudit,
        *,
        owned: bool = False,
        clock: Callable[[], float] = time.time,
        recent: RecentRecords | None = None,
    ) -> None:
        self._stream = stream
        self._arguments = arguments
        self._owned = owned
        # Epoch seconds: the clock is a parameter so that tests can fix it.
        self._stamp = _Stamps(clock)
        self._flush_due = False
        # The console's pages read the same lines (authz/observe/recent.py).
        self.recent = recent

    @classmethod
    def open(
        cls, target: str, arguments: ArgumentAudit, recent: RecentRecords | None = None
    ) -> AuditLog:
        """`-` for stdout, `off` for none, anything else is a file appended to."""
        if target == "off":
            return cls(None, arguments, recent=recent)
        if target == "-":
            return cls(sys.stdout, arguments, recent=recent)
        file = open(target, "a", encoding="utf-8", buffering=BUFFER_BYTES)  # noqa: SIM115 - closed in close()
        return cls(file, arguments, owned=True, recent=recent)

    def record(self, outcome: Outcome, latency: float, span: SpanContext) -> None:
        if self._stream is None and self.recent is None:
            return
        line = self.line(outcome, latency, span)
        if self.recent is not None:
            self.recent.add_decision(line)
        if self._stream is not None:
            self._stream.write(json_line(line) + "\n")
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Flush once the event loop's current turn is over (at once outside a loop): the
        decisions of one turn share a write, and no line waits longer than that turn."""
        if self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_due = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_due = False
        if self._stream is not None and not self._stream.closed:
            self._stream.flush()

    def line(self, outcome: Outcome, latency: float, span: SpanContext) -> dict[str, Any]:
        caller, calls, origin, tool = outcome.caller, outcome.calls, outcome.origin, outcome.tool
        call = outcome.subject or (calls[0] if calls else None)
        traced = span.is_valid
        arguments = self._arguments
        return {
            "schema": AUDIT_SCHEMA,
            "version": __version__,
            "time": self._stamp(),
            "decision_id": outcome.decision_id,
            "trace_id": format_trace_id(span.trace_id) if traced else None,
            "span_id": format_span_id(span.span_id) if traced else None,
            "decision": outcome.label,
            "identity": caller.identity if caller else None,
            "grant": outcome.grant,
            "session": caller.session if caller else None,
            "method": call.method if call else None,
            "tool": call.tool if call else None,
            "request_id": call.id if call else next(iter(outcome.request_ids), None),
            "grant_label": caller.grant_label if caller else None,
            "client_address": origin.client_address or None,
            "envoy_request_id": origin.envoy_request_id or None,
            "authority": origin.authority or None,
            # Names only, never values (as PolicyLayer's logs): sorted, bounded.
            "argument_keys": argument_keys(call) if call and call.target else None,
            "rule": outcome.rule,
            "reason": outcome.reason,
            "policy_version": outcome.policy_version,
            "fail_open": outcome.fail_open,
            "would_deny": outcome.would_deny,
            "retry_after": outcome.retry_after,
            "approval": None if outcome.approval is None else _approval(outcome.approval),
            # The tool's risk class and what the catalogue knew of it (None without one).
            "risk": tool.risk if tool else None,
            "catalogue": None if tool is None else _catalogue(tool),
            "methods": [c.method for c in calls],
            "tools": [c.tool for c in calls if c.tool is not None],
            # Tools and prompts take arguments; other calls have none to hash.
            "arguments": [arguments.describe(c) for c in calls if c.target],
            "hmac_key": arguments.key_id,
            "latency_ms": round(latency * 1000, 3),
        }

    def record_admin(
        self,
        action: str,
        identity: str | None,
        target: str,
        result: str,
        *,
        note: str = "",
        span: SpanContext | None = None,
    ) -> None:
        """One admin API call (authz/admin/server.py): who did what to which target, and its end."""
        if self._stream is None and self.recent is None:
            return
        valid = span is not None and span.is_valid
        line = {
            "schema": AUDIT_SCHEMA,
            "version": __version__,
            "time": self._stamp(),
            "admin_action": action,
            "trace_id": format_trace_id(span.trace_id) if span and valid else None,
            "span_id": format_span_id(span.span_id) if span and valid else None,
            "identity": identity,
            "target": target,
            "result": result,
            "note": note or None,
        }
        if self.recent is not None:
            self.recent.add_admin(line)
        if self._stream is not None:
            self._stream.write(json_line(line) + "\n")
            self.flush()

    def record_catalogue(self, upstream: str, observed: Sequence[Observed]) -> None:
        """What one `tools/list` answer changed in the catalogue: one line per tool added,
        changed, removed or rejected (unchanged tools write nothing)."""
        if self._stream is None:
            return
        for seen in observed:
            if seen.change is Change.UNCHANGED:
                continue
            entry = seen.entry
            line = {
                "schema": AUDIT_SCHEMA,
                "version": __version__,
                "time": self._stamp(),
                "catalogue_change": seen.change.value,
                "upstream": upstream,
                "tool": seen.name,
                "fingerprint": entry.pinned.fingerprint if entry else None,
                "offered": entry.pending.fingerprint if entry and entry.pending else None,
                "oversized": entry.oversized if entry else None,
            }
            self._stream.write(json_line(line) + "\n")
        self._flush_soon()

    def record_response(self, event: ResponseEvent) -> None:
        """One thing the response side did (a list filtered, a refund, a withheld answer)."""
        if self._stream is None:
            return
        line = {
            "schema": AUDIT_SCHEMA,
            "version": __version__,
            "time": self._stamp(),
            "response_event": event.kind,
            "decision_id": event.decision_id or None,
            **event.detail,
        }
        self._stream.write(json_line(line) + "\n")
        self._flush_soon()

    def close(self) -> None:
        """Writes what is buffered; closes the file this log opened."""
        self.flush()
        if self._owned and self._stream is not None:
            self._stream.close()
