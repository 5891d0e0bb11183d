"""Approvals kept in this process: the embedded default, one replica only.

Every operation finds what it needs by key or in sorted order, never by scanning every
request held: a gated call costs O(log n) whatever the number of pending requests.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from sortedcontainers import SortedList

from authz.approvals.base import (
    DEFAULT_PAGE,
    MAX_PAGE,
    Approval,
    ApprovalCaps,
    ApprovalError,
    ApprovalPage,
    ApprovalsFull,
    Request,
    Status,
    page_token,
    read_page_token,
)

# (expires_at, id): the order requests expire in, and the order they are listed in.
Entry = tuple[float, str]


def new_approval_id() -> str:
    # Unguessable: an id is what an approver acts on, and must not be enumerable by agents.
    return "apr_" + secrets.token_urlsafe(12)


class MemoryApprovals:
    def __init__(
        self, clock: Callable[[], float] = time.time, caps: ApprovalCaps | None = None
    ) -> None:
        self._clock = clock
        self._caps = caps or ApprovalCaps()
        self._by_id: dict[str, Approval] = {}
        self._by_key: dict[str, str] = {}
        self._expiring: SortedList[Entry] = SortedList()
        self._pending: SortedList[Entry] = SortedList()
        self._pending_of: dict[str, SortedList[Entry]] = {}

    async def request(self, request: Request, lifetime: int) -> tuple[Approval, bool]:
        self._expire()
        live = self._by_key.get(request.key)
        if live is not None:
            return self._by_id[live], False
        self._make_room(request.identity)
        now = self._clock()
        approval = Approval(new_approval_id(), Status.PENDING, request, now, now + lifetime)
        entry = (approval.expires_at, approval.id)
        self._by_id[approval.id] = approval
        self._by_key[request.key] = approval.id
        self._expiring.add(entry)
        self._pending.add(entry)
        self._pending_of.setdefault(request.identity, SortedList()).add(entry)
        return approval, True

    async def spend(self, approval_id: str) -> bool:
        return self._move(approval_id, Status.APPROVED, Status.IN_USE)

    async def release(self, approval_id: str) -> None:
        self._move(approval_id, Status.IN_USE, Status.APPROVED)

    async def commit(self, approval_id: str) -> None:
        self._expire()
        approval = self._by_id.get(approval_id)
        if approval is not None and approval.status is Status.IN_USE:
            # Used is final: the key is freed so the next identical call asks again.
            self._drop(approval)

    async def decide(self, approval_id: str, approve: bool, by: str) -> Approval:
        self._expire()
        approval = self._by_id.get(approval_id)
        if approval is None:
            raise ApprovalError(f"no live approval {approval_id} (unknown, used or expired)")
        if approval.status is not Status.PENDING:
            raise ApprovalError(f"approval {approval_id} is already {approval.status.value}")
        status = Status.APPROVED if approve else Status.DENIED
        decided = replace(approval, status=status, decided_by=by)
        self._by_id[approval_id] = decided
        self._unlist(approval)
        return decided

    async def get(self, approval_id: str) -> Approval | None:
        self._expire()
        return self._by_id.get(approval_id)

    async def pending(self, size: int = DEFAULT_PAGE, after: str = "") -> ApprovalPage:
        self._expire()
        start = self._pending.bisect_right(_position(after)) if after else 0
        entries = self._pending[start : start + min(size, MAX_PAGE)]
        more = start + len(entries) < len(self._pending)
        token = page_token(repr(entries[-1][0]), entries[-1][1]) if more and entries else ""
        return ApprovalPage(tuple(self._by_id[i] for _, i in entries), token)

    async def ready(self) -> None:
        """In-process: always ready."""

    async def close(self) -> None:
        self._by_id.clear()
        self._by_key.clear()
        self._expiring.clear()
        self._pending.clear()
        self._pending_of.clear()

    def _move(self, approval_id: str, was: Status, to: Status) -> bool:
        self._expire()
        approval = self._by_id.get(approval_id)
        if approval is None or approval.status is not was:
            return False
        self._by_id[approval_id] = replace(approval, status=to)
        return True

    def _make_room(self, identity: str) -> None:
        """Raises ApprovalsFull when one more pending request would pass a cap."""
        now = self._clock()
        mine = self._pending_of.get(identity)
        if mine is not None and len(mine) >= self._caps.per_identity:
            raise ApprovalsFull("identity", self._caps.per_identity, mine[0][0] - now)
        if len(self._pending) >= self._caps.total:
            raise ApprovalsFull("total", self._caps.total, self._pending[0][0] - now)

    def _expire(self) -> None:
        now = self._clock()
        while self._expiring and self._expiring[0][0] <= now:
            self._drop(self._by_id[self._expiring[0][1]])

    def _drop(self, approval: Approval) -> None:
        del self._by_id[approval.id]
        del self._by_key[approval.request.key]
        self._expiring.remove((approval.expires_at, approval.id))
        self._unlist(approval)

    def _unlist(self, approval: Approval) -> None:
        """Off the pending lists, if it is on them."""
        if approval.status is not Status.PENDING:
            return
        entry = (approval.expires_at, approval.id)
        self._pending.remove(entry)
        mine = self._pending_of[approval.request.identity]
        mine.remove(entry)
        if not mine:
            del self._pending_of[approval.request.identity]


def _position(token: str) -> Entry:
    position, approval_id = read_page_token(token, _finite)
    return float(position), approval_id


def _finite(position: str) -> bool:
    try:
        return math.isfinite(float(position))
    except ValueError:
        return False
