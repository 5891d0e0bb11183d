"""What the Redis store adds to the contract: its key layout, its clock, TTLs, memory, URLs."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from authz.limits.base import CounterKey, Hit
from authz.limits.lease import LeasePolicy
from authz.limits.redis import MAX_BATCH, MAX_NAME, QUANTA_PER_WINDOW, RedisStore
from tests.conftest import RedisServer, free_port

KEY = CounterKey("calls", "grant", ("alice",))
NO_LEASE = LeasePolicy(min_limit=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_200.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def new_store(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisStore]]:
    stores: list[RedisStore] = []

    def make(url: str = redis_server.url, clock: Clock | None = None, **options: Any) -> RedisStore:
        store = RedisStore.from_url(
            url, prefix=f"t-{uuid.uuid4().hex}", timeout=1.0, clock=clock, **options
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


def test_keys_are_readable_json_under_one_hash_tag() -> None:
    store = RedisStore(Redis(), prefix="gw")
    assert store.key(KEY) == '{gw}:v1:["calls","grant","alice"]'
    assert store.key(CounterKey("c", "global", ())) == '{gw}:v1:["c","global"]'
    assert store.key(CounterKey("c", "session", ("s\u00e9\ud800",))) == (
        '{gw}:v1:["c","session","s\\u00e9\\ud800"]'
    )


def test_every_key_lands_in_one_cluster_slot() -> None:
    store = RedisStore(Redis(), prefix="gw")
    keys = [
        KEY,
        CounterKey("other", "global", ()),
        CounterKey("x", "identity", ("}{", "{y}")),
        CounterKey("x", "identity", ("a" * 10_000,)),
    ]
    assert {key_slot(store.key(k).encode()) for k in keys} == {key_slot(b"gw")}


def test_long_subjects_are_hashed_to_a_bounded_name() -> None:
    store = RedisStore(Redis(), prefix="gw")
    long_a = store.key(CounterKey("c", "identity", ("a" * 5_000,)))
    long_b = store.key(CounterKey("c", "identity", ("a" * 4_999 + "b",)))
    assert long_a != long_b
    assert long_a.startswith("{gw}:v1:sha256:")
    assert len(long_a) <= len("{gw}:v1:") + MAX_NAME


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b"])
def test_prefixes_that_would_break_the_hash_tag_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisStore(Redis(), prefix=prefix)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:6379", "unsupported Redis URL scheme"),
        ("redis+cluster://u:secret@h1:7000/3", "takes no database"),
        ("redis+cluster://u:secret@h1:7000?db=1", "unknown URL options"),
        ("redis+cluster://", "at least one host"),
        ("redis+sentinel://u:secret@h1:26379", "SERVICE"),
        ("redis+sentinel://h1:26379/mymaster/x", "SERVICE"),
        ("redis+sentinel://u:secret@h1:26379/mymaster?db=2", "unknown URL options"),
        ("redis+sentinel://h1:26379/a/b?sentinel_password=secret", "SERVICE"),
    ],
)
def test_malformed_urls_fail_at_construction(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        RedisStore.from_url(url)
    assert "secret" not in str(e.value)


async def test_time_comes_from_the_redis_server(new_store: Callable[..., RedisStore]) -> None:
    store = new_store()
    hit = Hit(KEY, limit=2, window=60)
    assert (await store.hit([hit])).allowed
    assert (await store.hit([hit])).allowed
    refused = await store.hit([hit])
    assert not refused.allowed
    assert refused.retry_after is not None
    assert 59 < refused.retry_after <= 60 + 60 / QUANTA_PER_WINDOW


async def test_keys_expire_with_their_newest_entry(
    new_store: Callable[..., RedisStore], raw: Redis
) -> None:
    clock = Clock()
    store = new_store(clock=clock)
    await store.hit([Hit(KEY, limit=5, window=10)])
    assert 9_900 < await raw.pttl(store.key(KEY)) <= 10_000
    clock.now += 4
    await store.hit([Hit(KEY, limit=5, window=10)])
    # The TTL follows the newest entry: the key goes when the whole window has gone.
    assert 9_900 < await raw.pttl(store.key(KEY)) <= 10_000


async def test_a_key_holds_at_most_about_one_entry_per_quantum(
    new_store: Callable[..., RedisStore], raw: Redis
) -> None:
    clock = Clock()
    store = new_store(clock=clock, lease=NO_LEASE)  # exact counts (leases: test_redis_lease.py)
    hit = Hit(KEY, limit=1_000_000, window=100)
    for _ in range(3_000):
        clock.now += 0.1  # ten hits per 1 s quantum, over three windows
        assert (await store.hit([hit])).allowed
    key = store.key(KEY)
    assert await raw.zcard(key) <= QUANTA_PER_WINDOW + 2
    assert await raw.object("encoding", key) == b"listpack"
    usage = await raw.memory_usage(key)
    assert usage is not None
    assert usage <= 4096  # the bound docs/limits.md gives
    state = (await store.hit([hit])).states[0]
    assert state.used == 1_001


async def test_unix_socket_urls_work(
    redis_server: RedisServer, new_store: Callable[..., RedisStore]
) -> None:
    store = new_store(redis_server.unix_url)
    assert (await store.hit([Hit(KEY, limit=1, window=10)])).allowed
    assert not (await store.hit([Hit(KEY, limit=1, window=10)])).allowed


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_urls_work(
    tmp_path: Path, tls_pair: tuple[Path, Path], new_store: Callable[..., RedisStore]
) -> None:
    cert, key = tls_pair
    tls_port = free_port()
    server = RedisServer(
        tmp_path,
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no",
    ).start()  # fmt: skip
    try:
        store = new_store(f"rediss://127.0.0.1:{tls_port}?ssl_ca_certs={cert}")
        assert (await store.hit([Hit(KEY, limit=1, window=10)])).allowed
        assert not (await store.hit([Hit(KEY, limit=1, window=10)])).allowed
    finally:
        server.stop()


async def test_sentinel_urls_find_the_primary(
    own_redis: RedisServer, tmp_path: Path, new_store: Callable[..., RedisStore]
) -> None:
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"sentinel monitor primary 127.0.0.1 {own_redis.port} 1\n")
    sentinel = RedisServer(tmp_path, "--sentinel", config=conf)
    sentinel.start()
    try:
        store = new_store(f"redis+sentinel://127.0.0.1:{sentinel.port}/primary")
        assert (await store.hit([Hit(KEY, limit=1, window=10)])).allowed
        assert not (await store.hit([Hit(KEY, limit=1, window=10)])).allowed
        assert own_redis.command("DBSIZE") == 1
    finally:
        sentinel.stop()


async def test_concurrent_requests_share_script_calls_but_count_in_turn(
    own_redis: RedisServer,
) -> None:
    store = RedisStore.from_url(
        own_redis.url, prefix="batch", clock=Clock(), timeout=1.0, lease=NO_LEASE
    )
    small = Hit(KEY, limit=5, window=10)
    big = Hit(CounterKey("big", "global", ()), limit=1_000, window=10, cost=2)
    try:
        # Connect and load the script first, so only the batches themselves are counted.
        await store.hit([Hit(CounterKey("warm-up", "global", ()), limit=1, window=10)])
        own_redis.command("CONFIG", "RESETSTAT")
        results = await asyncio.gather(
            *(store.hit([small, big] if i % 2 else [big]) for i in range(300))
        )
    finally:
        await store.close()
    stats = own_redis.command("INFO", "commandstats")
    assert isinstance(stats, dict)
    assert stats["cmdstat_evalsha"]["calls"] == -(-300 // MAX_BATCH)
    allowed_small = [r for i, r in enumerate(results) if i % 2 and r.allowed]
    assert [r.states[0].used for r in allowed_small] == [1, 2, 3, 4, 5]
    # Refused requests charged nothing on `big`: 150 + 5 admitted, 2 units each.
    assert sorted(r.states[-1].used for r in results if r.allowed) == list(range(2, 312, 2))
