"""Approvals kept in Redis, so every replica sees one request per call and one use per approval.

Every transition is one run of `lua/approvals.lua` (called by EVALSHA), so two replicas
can never both create a request for one call, nor both use one approval. Records expire with
their request's lifetime (PX), time comes from the Redis server, and every Redis failure is
raised as StoreUnavailable: the decision core then refuses approval-gated calls (they always
fail closed). Connections, scripts and failures are handled as for the counters (`redis_client`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from authz.approvals.base import Approval, ApprovalError, Request
from authz.approvals.memory import new_approval_id
from authz.limits.redis_client import (
    _US,
    REDIS_FAILURES,
    FirstCallAlone,
    RedisBacked,
    Script,
    unavailable,
)

SCRIPT = Script("authz.approvals", "approvals.lua")

# What `new_approval_id` makes; anything else cannot name a record and is never looked up.
_ID = re.compile(r"apr_[A-Za-z0-9_-]{1,64}")


class RedisApprovals(RedisBacked):
    """An ApprovalStore on Redis (standalone, Sentinel or Cluster)."""

    SCRIPTS = (SCRIPT,)

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
        keys = [self._call(digest), self._record(approval_id), self._pending]
        body = json.dumps(request.to_dict(), separators=(",", ":"), ensure_ascii=False)
        created, fields = await self._run(
            "request", keys, approval_id, lifetime * _US, digest, body
        )
        return _approval(fields), int(created) == 1

    async def consume(self, approval_id: str) -> bool:
        if not _ID.fullmatch(approval_id):
            return False
        used = await self._run("consume", [self._record(approval_id), self._pending])
        return int(used) == 1

    async def decide(self, approval_id: str, approve: bool, by: str) -> Approval:
        if not _ID.fullmatch(approval_id):
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
        if not _ID.fullmatch(approval_id):
            return None
        fields = await self._run("get", [self._record(approval_id), self._pending])
        return None if fields is None else _approval(fields)

    async def pending(self) -> Sequence[Approval]:
        records = await self._run("list", [self._pending])
        return [_approval(fields) for fields in records]

    async def close(self) -> None:
        await self._close_clients()

    @property
    def _pending(self) -> str:
        return self._keys + "pending"

    def _call(self, digest: str) -> str:
        return f"{self._keys}call:{digest}"

    def _record(self, approval_id: str) -> str:
        return f"{self._keys}id:{approval_id}"

    async def _run(self, op: str, keys: list[str], *args: int | str) -> Any:
        argv = [op, self._now(), self._keys, *args]
        with self._breaker.guard():
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._first.run(SCRIPT, keys, argv)
            except REDIS_FAILURES as e:
                raise unavailable(self._name, self._timeout, e) from e


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
