"""Approvals kept in this process: the embedded default, one replica only."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from authz.approvals.base import Approval, ApprovalError, Request, Status


def new_approval_id() -> str:
    # Unguessable: an id is what an approver acts on, and must not be enumerable by agents.
    return "apr_" + secrets.token_urlsafe(12)


class MemoryApprovals:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_id: dict[str, Approval] = {}
        self._by_key: dict[str, str] = {}

    async def request(self, request: Request, lifetime: int) -> tuple[Approval, bool]:
        self._expire()
        live = self._by_key.get(request.key)
        if live is not None:
            return self._by_id[live], False
        now = self._clock()
        approval = Approval(new_approval_id(), Status.PENDING, request, now, now + lifetime)
        self._by_id[approval.id] = approval
        self._by_key[request.key] = approval.id
        return approval, True

    async def consume(self, approval_id: str) -> bool:
        self._expire()
        approval = self._by_id.get(approval_id)
        if approval is None or approval.status is not Status.APPROVED:
            return False
        # Used is final: the key is freed so the next identical call asks again.
        del self._by_id[approval_id]
        del self._by_key[approval.request.key]
        return True

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
        return decided

    async def get(self, approval_id: str) -> Approval | None:
        self._expire()
        return self._by_id.get(approval_id)

    async def pending(self) -> Sequence[Approval]:
        self._expire()
        return [a for a in self._by_id.values() if a.status is Status.PENDING]

    async def ready(self) -> None:
        """In-process: always ready."""

    async def close(self) -> None:
        self._by_id.clear()
        self._by_key.clear()

    def _expire(self) -> None:
        now = self._clock()
        for approval in [a for a in self._by_id.values() if a.expires_at <= now]:
            del self._by_id[approval.id]
            del self._by_key[approval.request.key]
