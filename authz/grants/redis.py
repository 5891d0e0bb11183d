"""Grants in Redis, shared by every replica: `lua/grants.lua` changes a label and its token
hash in one step, and every request looks its token's hash up (one GET inside the script),
so a revocation or rotation holds from the next request on every replica. Failures are
raised as StoreUnavailable; the decision core then refuses the request (it cannot tell who
is calling).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from authz.grants.base import Grant, taken, unknown
from authz.limits.redis_client import (
    REDIS_FAILURES,
    FirstCallAlone,
    RedisBacked,
    Script,
    unavailable,
)

SCRIPT = Script("authz.grants", "grants.lua")


class RedisGrants(RedisBacked):
    @property
    def _keys(self) -> str:
        return f"{{{self._prefix}:grants}}:v1:"

    @cached_property
    def _first(self) -> FirstCallAlone:
        return FirstCallAlone(self._client)

    async def by_digest(self, digest: str) -> Grant | None:
        return _grant(await self._run("get", digest))

    async def get(self, label: str) -> Grant | None:
        return next((g for g in await self.all() if g.label == label), None)

    async def all(self) -> Sequence[Grant]:
        return [g for text in await self._run("list") if (g := _grant(text)) is not None]

    async def add(self, grant: Grant) -> None:
        record = json.dumps(grant.to_dict(), ensure_ascii=False, separators=(",", ":"))
        if _text(await self._run("add", grant.label, grant.digest, record)) == "taken":
            raise taken(grant.label)

    async def replace_digest(self, label: str, digest: str, at: int) -> Grant:
        grant = _grant(await self._run("rotate", label, digest, str(at)))
        if grant is None:
            raise unknown(label)
        return grant

    async def remove(self, label: str) -> Grant:
        grant = _grant(await self._run("remove", label))
        if grant is None:
            raise unknown(label)
        return grant

    async def close(self) -> None:
        await self._close_clients()

    async def _run(self, op: str, *args: str) -> Any:
        with self._breaker.guard():
            try:
                async with asyncio.timeout(self._timeout):
                    # The labels key is declared so a cluster routes the script to its slot.
                    keys = [self._keys + "labels"]
                    return await self._first.run(SCRIPT, keys, [op, self._keys, *args])
            except REDIS_FAILURES as e:
                raise unavailable(self._name, self._timeout, e) from e


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _grant(text: bytes | str | None) -> Grant | None:
    if text is None:
        return None
    data: dict[str, Any] = json.loads(_text(text))
    return Grant.from_dict(data)
