"""Approvals kept in Redis, so every replica sees one request per call and one use per approval.

Every transition is one run of `lua/approvals.lua` (called by EVALSHA), so two replicas
can never both create a request for one call, nor both use one approval. Records expire with
their request's lifetime (PX), time comes from the Redis server, and every Redis failure is
raised as StoreUnavailable: the decision core then refuses approval-gated calls (they always
fail closed). Connections, scripts and failures are handled as for the counters (`redis_client`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from authz.approvals.base import (
    APPROVAL_ID,
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
from authz.approvals.memory import new_approval_id
from authz.limits.redis_client import (
    _US,
    REDIS_FAILURES,
    Client,
    FirstCallAlone,
    RedisBacked,
    Script,
    unavailable,
)

SCRIPT = Script("authz.approvals", "approvals.lua")


class RedisApprovals(RedisBacked):
    """An ApprovalStore on Redis (standalone, Sentinel or Cluster)."""

    SCRIPTS = (SCRIPT,)

    def __init__(self, client: Client, *, caps: ApprovalCaps | None = None, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._caps = caps or ApprovalCaps()

    @property
    def _keys(self) -> str:
        # One hash tag for every approval key (apart from the counters' one), so each
        # operation's keys, declared or found through each other, sit on one cluster slot.
        return f"{{{self._prefix}:approvals}}:v1:"

    @cached_property
    def _first(self) -> FirstCallAlone:
        return FirstCallAlone(self._client)

    async def request(self, request: Request, lifetime: int) -> tuple[Approval, bool]:
        approval_id = new_approval_id()
        digest = request.key
        owner = self._owner(request.identity)
        keys = [self._call(digest), self._record(approval_id), self._pending, owner]
        body = json.dumps(request.to_dict(), separators=(",", ":"), ensure_ascii=False)
        caps = (self._caps.total, self._caps.per_identity)
        reply = await self._run("request", keys, approval_id, lifetime * _US, digest, body, *caps)
        created = int(reply[0])
        if created < 0:
            scope = _text(reply[1])
            cap = self._caps.per_identity if scope == "identity" else self._caps.total
            raise ApprovalsFull(scope, cap, int(reply[2]) / _US)
        return _approval(reply[1]), created == 1

    async def spend(self, approval_id: str) -> bool:
        return await self._move(approval_id, Status.APPROVED, Status.IN_USE)

    async def release(self, approval_id: str) -> None:
        await self._move(approval_id, Status.IN_USE, Status.APPROVED)

    async def commit(self, approval_id: str) -> None:
        if APPROVAL_ID.fullmatch(approval_id):
            await self._run("commit", [self._record(approval_id), self._pending])

    async def _move(self, approval_id: str, was: Status, to: Status) -> bool:
        if not APPROVAL_ID.fullmatch(approval_id):
            return False
        keys = [self._record(approval_id), self._pending]
        return int(await self._run("move", keys, was.value, to.value)) == 1

    async def decide(self, approval_id: str, approve: bool, by: str) -> Approval:
        if not APPROVAL_ID.fullmatch(approval_id):
            raise ApprovalError(f"no live approval {approval_id} (unknown, used or expired)")
        keys = [self._record(approval_id), self._pending]
        reply = await self._run("decide", keys, "1" if approve else "0", by)
        outcome = _text(reply[0])
        if outcome == "gone":
            raise ApprovalError(f"no live approval {approval_id} (unknown, used or expired)")
        if outcome == "decided":
            raise ApprovalError(f"approval {approval_id} is already {_text(reply[1])}")
        return _approval(reply[1])

    async def get(self, approval_id: str) -> Approval | None:
        if not APPROVAL_ID.fullmatch(approval_id):
            return None
        fields = await self._run("get", [self._record(approval_id), self._pending])
        return None if fields is None else _approval(fields)

    async def pending(self, size: int = DEFAULT_PAGE, after: str = "") -> ApprovalPage:
        expires, last = read_page_token(after, _microseconds) if after else ("", "")
        reply = await self._run("list", [self._pending], min(size, MAX_PAGE), expires, last)
        more, expires, last = int(reply[0]), _text(reply[1]), _text(reply[2])
        token = page_token(expires, last) if more and last else ""
        return ApprovalPage(tuple(_approval(fields) for fields in reply[3:]), token)

    async def close(self) -> None:
        await self._close_clients()

    @property
    def _pending(self) -> str:
        return self._keys + "pending"

    def _call(self, digest: str) -> str:
        return f"{self._keys}call:{digest}"

    def _record(self, approval_id: str) -> str:
        return f"{self._keys}id:{approval_id}"

    def _owner(self, identity: str) -> str:
        # Hashed: an identity may be 2048 characters of anything.
        return f"{self._keys}pending-of:{hashlib.sha256(identity.encode()).hexdigest()}"

    async def _run(self, op: str, keys: list[str], *args: int | str) -> Any:
        argv = [op, self._now(), self._keys, *args]
        with self._breaker.guard():
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._first.run(SCRIPT, keys, argv)
            except REDIS_FAILURES as e:
                raise unavailable(self._name, self._timeout, e) from e


def _microseconds(position: str) -> bool:
    return position.isascii() and position.isdigit()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _approval(flat: Sequence[bytes | str]) -> Approval:
    """An Approval from the script's flat field, value array."""
    fields = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
    record: dict[str, Any] = json.loads(fields["request"])
    record.update(
        id=fields["id"],
        status=fields["status"],
        requested_at=int(fields["requested_at"]) / _US,
        expires_at=int(fields["expires_at"]) / _US,
        decided_by=fields["decided_by"] or None,
    )
    return Approval.from_dict(record)
