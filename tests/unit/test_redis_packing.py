"""HeldConnections packs script calls with hiredis: the bytes must be redis-py's own."""

from __future__ import annotations

import hiredis
import pytest
from redis.asyncio.connection import Connection

ARGS = [
    ("EVALSHA", "a" * 40, 2, '{p}:v1:["calls","t"]', '{p}:v1:sessions:["é"]', "", 1, -1),
    ("EVALSHA", "b" * 40, 0, 2**63 - 1, -(2**63), 0, "ünïcødé ✓", "x" * 7000),
    ("EVAL", "return 1", 0),
]


@pytest.mark.parametrize("args", ARGS)
def test_hiredis_packs_our_arguments_as_redis_py_does(args: tuple[object, ...]) -> None:
    redis_py = b"".join(Connection().pack_command(*args))
    assert hiredis.pack_command(args) == redis_py
