"""The recent decisions and admin actions, in memory, for the console's pages.

The audit log hands every line it writes (or would write, with `--audit-log off`) to this
ring, so the console shows the very records the log holds: the same fields, the same
redaction (argument names, never values). It is bounded: the oldest record goes when a new
one arrives past `capacity`, so a flood of calls costs a fixed amount of memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final

DEFAULT_CAPACITY: Final = 2000
# Filters come from a query string; longer values cannot match any stored field's prefix
# usefully and would only cost time.
MAX_FILTER_CHARS: Final = 256


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    """What the Decisions page narrows to; an empty field matches everything."""

    tool: str = ""
    identity: str = ""
    outcome: str = ""
    rule: str = ""

    @classmethod
    def of(cls, query: Mapping[str, str]) -> DecisionFilter:
        def field(name: str) -> str:
            return query.get(name, "").strip()[:MAX_FILTER_CHARS]

        return cls(field("tool"), field("identity"), field("outcome"), field("rule"))

    def matches(self, line: Mapping[str, Any]) -> bool:
        return (
            _equal(self.tool, line.get("tool"))
            and _equal(self.identity, line.get("identity"))
            and _equal(self.outcome, line.get("decision"))
            # Rules are JSON pointers: a prefix names a tool's rules or a whole section.
            and (not self.rule or str(line.get("rule") or "").startswith(self.rule))
        )


def _equal(wanted: str, value: Any) -> bool:
    return not wanted or wanted == value


class RecentRecords:
    """The last `capacity` decision lines and the last `capacity` admin lines, newest first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"the recent-records ring needs a capacity >= 1, not {capacity}")
        self._decisions: deque[Mapping[str, Any]] = deque(maxlen=capacity)
        self._admin: deque[Mapping[str, Any]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._decisions)

    def add_decision(self, line: Mapping[str, Any]) -> None:
        self._decisions.appendleft(line)

    def add_admin(self, line: Mapping[str, Any]) -> None:
        self._admin.appendleft(line)

    def decisions(self, where: DecisionFilter, limit: int) -> list[Mapping[str, Any]]:
        return list(islice((d for d in self._decisions if where.matches(d)), limit))

    def admin(self, actions: frozenset[str], limit: int) -> list[Mapping[str, Any]]:
        return list(islice((a for a in self._admin if a.get("admin_action") in actions), limit))

    def subjects(self) -> list[Mapping[str, Any]]:
        """The distinct callers (identity, grant, session) of the decisions kept, newest first."""
        seen: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        for d in self._decisions:
            key = (d.get("identity"), d.get("grant"), d.get("session"))
            seen.setdefault(key, d)
        return list(seen.values())
