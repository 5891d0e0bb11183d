"""What the console's pages show, built from the admin actions' results: plain values the
templates render, with arguments redacted and the right buttons for the person's roles."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from authz.admin.actions import SUBJECT_PARTS, ClassedTool, Operator, limits_of
from authz.admin.roles import Permission, may
from authz.approvals.base import Approval
from authz.limits.base import LimitState
from authz.observe.audit import ArgumentPath
from authz.policy.model import Policy

REDACTED: Final = "(redacted)"
# Approvals the console has shown, kept so the decided list can say what each one was.
MAX_REMEMBERED: Final = 2000


@dataclass(frozen=True, slots=True)
class Can:
    """What the signed-in person may do, for which buttons to show (the actions check again)."""

    decide: bool
    reset: bool
    manage: bool

    @classmethod
    def of(cls, operator: Operator) -> Can:
        claims = operator.claims
        return cls(
            may(claims, Permission.DECIDE_APPROVALS),
            may(claims, Permission.RESET_COUNTERS),
            may(claims, Permission.MANAGE_POLICIES),
        )


def when(stamp: float | None) -> str:
    if stamp is None:
        return "unknown"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def stamp(iso: str | None) -> str:
    """An audit line's ISO time as the pages show times: `2026-12-03 09:22:48.426 UTC`."""
    if not iso:
        return ""
    return iso.replace("T", " ").replace("+00:00", " UTC")


def shown_arguments(approval: Approval, redact: Sequence[ArgumentPath], *, full: bool) -> str:
    """The call's arguments as indented JSON: whole for those who decide, keys only for the
    rest, and the configured paths replaced by REDACTED for everyone."""
    request = approval.request
    if not full:
        return json.dumps(sorted(request.arguments), ensure_ascii=False)
    arguments: Any = json.loads(json.dumps(request.arguments))
    for path in redact:
        if path.applies_to(request.tool):
            _redact(arguments, path.keys)
    return json.dumps(arguments, indent=2, sort_keys=True, ensure_ascii=False)


def _redact(node: Any, keys: tuple[str, ...]) -> None:
    for key in keys[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict) and keys[-1] in node:
        node[keys[-1]] = REDACTED


class Remembered:
    """The approvals shown lately, by id, bounded: the oldest is forgotten first."""

    def __init__(self, capacity: int = MAX_REMEMBERED) -> None:
        self._by_id: OrderedDict[str, Approval] = OrderedDict()
        self._capacity = capacity

    def keep(self, approvals: Iterable[Approval]) -> None:
        for approval in approvals:
            self._by_id[approval.id] = approval
            self._by_id.move_to_end(approval.id)
            if len(self._by_id) > self._capacity:
                self._by_id.popitem(last=False)

    def get(self, approval_id: str) -> Approval | None:
        return self._by_id.get(approval_id)


def decided(lines: Iterable[Mapping[str, Any]], remembered: Remembered) -> list[dict[str, Any]]:
    """The approve/deny admin records, each with the approval it was about when known."""
    return [{**line, "approval": remembered.get(str(line.get("target", "")))} for line in lines]


def risk_of(tool: str, tools: Sequence[ClassedTool] | None) -> str:
    """The tool's risk class under the policy in force, or 'unknown' when never listed (or
    when no catalogue is kept); a tool of several upstreams takes its strictest class."""
    risks = [t.risk for t in tools or () if t.entry.pinned.name == tool]
    return max(risks).label if risks else "unknown"


def tool_rows(tools: Sequence[ClassedTool]) -> list[dict[str, Any]]:
    rows = []
    for t in sorted(tools, key=lambda t: (t.entry.upstream, t.entry.pinned.name)):
        e = t.entry
        rows.append(
            {
                "upstream": e.upstream,
                "name": e.pinned.name,
                "risk": t.risk.label,
                "fingerprint": e.pinned.fingerprint,
                "pending": e.pending,
                # Over the size bound: only refused, never accepted (catalogue/base.py).
                "acceptable": e.pending is not None and not e.oversized,
                "removed": e.removed,
                "accepted_by": e.accepted_by,
                "last_seen": when(e.last_seen),
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class Budget:
    """One counter for one subject: what the Usage page lists."""

    counter: str
    scope: str
    subject: tuple[str, ...]

    @property
    def subject_json(self) -> str:
        return json.dumps(list(self.subject), ensure_ascii=False)


def budgets(policy: Policy, callers: Iterable[Mapping[str, Any]]) -> list[Budget]:
    """Every counter of the policy for every caller seen lately (global ones once)."""
    found: dict[Budget, None] = {}
    for name, limit in sorted(limits_of(policy).items()):
        parts = SUBJECT_PARTS[limit.scope]
        for caller in callers if parts else [{}]:
            values = [caller.get(part) for part in parts]
            subject = tuple(v for v in values if isinstance(v, str))
            # A caller without one of the parts (no session, say) has no such budget.
            if len(subject) == len(parts):
                found[Budget(name, limit.scope.value, subject)] = None
    return list(found)


def grant_labels(lines: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The grant label of the caller behind each approval, from the decisions that asked."""
    labels: dict[str, str] = {}
    for line in lines:
        approval, label = line.get("approval"), line.get("grant_label")
        if isinstance(approval, Mapping) and isinstance(label, str):
            labels.setdefault(str(approval.get("id")), label)
    return labels


def usage_row(budget: Budget, state: LimitState) -> dict[str, Any]:
    return {
        "budget": budget,
        "used": state.used,
        "max": state.hit.limit,
        "remaining": state.remaining,
        "window": state.hit.window,
        "retry_after": state.retry_after,
    }
