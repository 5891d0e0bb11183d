"""Lua scripts on Redis, and Redis failures as StoreUnavailable: shared by every Redis store.

A script is package data, sent once by EVALSHA and again by EVAL only when Redis has
forgotten it (a restart or SCRIPT FLUSH), so a Redis restart needs no restart of ours.
"""

from __future__ import annotations

import asyncio
import hashlib
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError, ReadOnlyError, RedisClusterException, RedisError

from authz.limits.base import StoreUnavailable

Client = Redis | RedisCluster

# Everything a Redis call can fail with; each becomes StoreUnavailable at our edge.
REDIS_FAILURES = (TimeoutError, RedisError, RedisClusterException, OSError)


class Script:
    def __init__(self, package: str, name: str) -> None:
        self.source = files(package).joinpath(f"lua/{name}").read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, client: Client, keys: list[str], args: list[int | str]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


class FirstCallAlone:
    """redis-py's cluster client fails when its very first commands run concurrently (each
    starts discovering the cluster), so the first call goes alone and the rest follow."""

    def __init__(self) -> None:
        self._done = False
        self._lock = asyncio.Lock()

    async def run(
        self, script: Script, client: Client, keys: list[str], args: list[int | str]
    ) -> Any:
        if self._done:
            return await script.run(client, keys, args)
        async with self._lock:
            reply = await script.run(client, keys, args)
            self._done = True
            return reply


def unavailable(name: str, timeout: float, error: BaseException) -> StoreUnavailable:
    """A Redis failure, named for the operator; the caller raises it `from` the error."""
    if isinstance(error, TimeoutError):
        return StoreUnavailable(f"{name} did not answer within {timeout * 1000:.0f} ms")
    if isinstance(error, ReadOnlyError):
        return StoreUnavailable(f"{name} is a read-only replica: {error}")
    return StoreUnavailable(f"{name} failed: {type(error).__name__}: {error}")
