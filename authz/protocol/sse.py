"""An incremental reader of `text/event-stream` (Server-Sent Events), as MCP's streamable HTTP
transport sends them: chunks in, whole events out, whatever the chunk boundaries.

The response side (ext_proc) gets an SSE body in the pieces Envoy happens to forward: an event
may be split anywhere, even between the CR and LF of one line end. The reader keeps only the
event being received, never the stream, and refuses an event over its byte bound, so a
long-lived stream costs memory for one event at a time. Each event keeps its bytes as they
arrived: one the gateway leaves alone is passed on unchanged.

Line ends are CRLF, LF or CR and an empty line ends an event (the WHATWG HTML "server-sent
events" section, which the MCP transport refers to).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# One event's bytes at most. A tools/list result is one event (or one JSON body), so this
# also bounds a listing: 1024 tools of 4 KiB each, the catalogue's own tool bound.
MAX_EVENT_BYTES: Final = 4 * 1024 * 1024
_BOM: Final = "\ufeff"
# The only line ends of the format: str.splitlines() would also split on U+2028, U+0085 and
# others, which are ordinary characters in an SSE field.
_LINES: Final = re.compile(r"\r\n|\r|\n")


class SseError(ValueError):
    """A stream the reader refuses: an event over the byte bound."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its bytes as received (the ending empty line included) and its fields."""

    raw: bytes
    # The data lines joined with "\n"; None when the event has no data field (a comment or
    # a bare `id:`, say), which a client does not dispatch.
    data: str | None
    event: str = ""
    id: str | None = None


class SseReader:
    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buffer = bytearray()
        # Where the line scan resumes in `_buffer`, and where the current event began.
        self._scan = 0
        self._first = True

    def feed(self, chunk: bytes) -> list[Event]:
        """The events `chunk` completes; the rest waits for the next chunk."""
        self._buffer += chunk
        events = self._events(final=False)
        if len(self._buffer) > self._max:
            raise SseError(f"an event is over {self._max} bytes")
        return events

    def finish(self) -> list[Event]:
        """At the end of the stream: the unterminated last event, if any. A browser would drop
        it; it is returned so that whatever handles events sees every byte a lax client might
        still read."""
        events = self._events(final=True)
        if self._buffer:
            events.append(self._event(bytes(self._buffer)))
            self._buffer.clear()
        return events

    def _events(self, *, final: bool) -> list[Event]:
        events: list[Event] = []
        start = 0
        buffer = self._buffer
        scan = self._scan
        while True:
            end, width = _line_end(buffer, scan, final=final)
            if end < 0:
                break
            if end == scan:  # an empty line: the event from `start` is complete
                events.append(self._event(bytes(buffer[start : end + width])))
                start = end + width
            scan = end + width
        del buffer[:start]
        self._scan = scan - start
        return events

    def _event(self, raw: bytes) -> Event:
        text = raw.decode("utf-8", "replace")
        if self._first:
            self._first = False
            text = text.removeprefix(_BOM)
        data: list[str] = []
        kind, last_id = "", None
        for line in _LINES.split(text):
            if not line or line.startswith(":"):
                continue
            name, colon, value = line.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id" and "\0" not in value:
                last_id = value
        return Event(raw, "\n".join(data) if data else None, kind, last_id)


def _line_end(buffer: bytearray, start: int, *, final: bool) -> tuple[int, int]:
    """(index of the next line end at or after `start`, its width), or (-1, 0) when the
    buffer holds no complete line yet. A CR at the very end may be the first half of a CRLF:
    it waits for the next byte unless the stream is over."""
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
    if cr < 0:
        return (lf, 1) if lf >= 0 else (-1, 0)
    if cr + 1 < len(buffer):
        return cr, 2 if buffer[cr + 1] == 0x0A else 1
    return (cr, 1) if final else (-1, 0)


def encode(data: str, *, event: str = "", event_id: str | None = None) -> bytes:
    """One event as the gateway writes it: for a message it rewrote, with the original's
    type and id, so a client resuming with Last-Event-ID still finds its place."""
    lines = [f"event: {event}"] if event else []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()
