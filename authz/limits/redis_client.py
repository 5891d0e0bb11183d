"""Redis connections, Lua scripts and failures, shared by every Redis store (counters and
approvals): one URL syntax, one way to run a script, one mapping of failures.

A script is package data, sent once by EVALSHA and again by EVAL only when Redis has
forgotten it (a restart or SCRIPT FLUSH), so a Redis restart needs no restart of ours.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ReadOnlyError, RedisClusterException, RedisError

from authz.limits.base import StoreUnavailable
from authz.limits.breaker import CircuitBreaker

Client = Redis | RedisCluster
Clock = Callable[[], float]
# Sends one command and returns its reply, as a client's execute_command does.
Execute = Callable[..., Awaitable[Any]]
_US = 1_000_000
# Query options of cluster and Sentinel URLs (plain URLs take all of redis-py's).
TLS_OPTIONS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}

# Everything a Redis call can fail with; each becomes StoreUnavailable at our edge.
REDIS_FAILURES = (TimeoutError, RedisError, RedisClusterException, OSError)


class Script:
    def __init__(self, package: str, name: str) -> None:
        self.source = files(package).joinpath(f"lua/{name}").read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, client: Client, keys: list[str], args: list[int | str]) -> Any:
        return await self.call(client.execute_command, keys, args)

    async def call(self, execute: Execute, keys: list[str], args: list[int | str]) -> Any:
        try:
            return await execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await execute("EVAL", self.source, len(keys), *keys, *args)


class HeldConnections:
    """Script calls on a plain (standalone or Sentinel) client's own connections, kept out
    of its pool between calls.

    redis-py's execute_command spends more instructions per call than our whole decision:
    the pool's lock and its check that a connection has no unread data, metrics records on
    acquire, release and completion, and an event on release. None of it is needed by a
    connection that only we use and that redis-py closes whenever a command leaves it
    unread (an error, a timeout, a cancellation). What stays is redis-py's: the
    connection (TLS, AUTH, Sentinel's discovery of the primary), its packing and parsing,
    and its Retry, which reconnects once when a Redis restart closed the connection. A held
    connection stays in the pool's count, so closing or disconnecting the pool reaches it.
    """

    def __init__(self, client: Redis) -> None:
        self._pool = client.connection_pool
        self._idle: list[AbstractConnection] = []
        # hiredis packs in C what redis-py packs in Python (~110k instructions of a script
        # call of ours); its bytes are redis-py's for our str and int arguments when the
        # client encodes as redis-py does by default (a URL may choose another encoding).
        options = self._pool.connection_kwargs
        self._hiredis = (options.get("encoding", "utf-8"), options.get("encoding_errors")) in (
            ("utf-8", None),
            ("utf-8", "strict"),
        )

    async def execute(self, *args: Any) -> Any:
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated
        try:
            return await conn.retry.call_with_retry(
                lambda: self._send(conn, args), lambda error: conn.disconnect(error=error)
            )
        finally:
            self._idle.append(conn)

    async def _send(self, conn: AbstractConnection, args: tuple[Any, ...]) -> Any:
        packed = hiredis.pack_command(args) if self._hiredis else conn.pack_command(*args)
        await conn.send_packed_command(packed, check_health=False)
        return await conn.read_response()


class FirstCallAlone:
    """redis-py's cluster client fails when its very first commands run concurrently (each
    starts discovering the cluster), so on a cluster the first call goes alone and the rest
    follow. Other clients connect per pooled connection and need no such wait, which would
    otherwise count against the first calls' timeout."""

    def __init__(self, client: Client) -> None:
        self._done = not isinstance(client, RedisCluster)
        self._execute: Execute = (
            HeldConnections(client).execute if isinstance(client, Redis) else client.execute_command
        )
        self._lock = asyncio.Lock()

    async def run(self, script: Script, keys: list[str], args: list[int | str]) -> Any:
        if self._done:
            return await script.call(self._execute, keys, args)
        async with self._lock:
            reply = await script.call(self._execute, keys, args)
            self._done = True
            return reply


def unavailable(name: str, timeout: float, error: BaseException) -> StoreUnavailable:
    """A Redis failure, named for the operator; the caller raises it `from` the error."""
    if isinstance(error, TimeoutError):
        return StoreUnavailable(f"{name} did not answer within {timeout * 1000:.0f} ms")
    if isinstance(error, ReadOnlyError):
        return StoreUnavailable(f"{name} is a read-only replica: {error}")
    return StoreUnavailable(f"{name} failed: {type(error).__name__}: {error}")


# Seconds start-up gives Redis to connect, load the scripts and answer a PING, per attempt.
READY_TIMEOUT = 5.0
# Seconds a new connection may take to open, on its own clock: the per-call timeout bounds
# every call anyway, and a busy machine can take longer than it just to connect.
CONNECT_TIMEOUT = 1.0
# Connections opened at start-up, and the most script calls RedisStore has in flight at once,
# so no call waits for a connection to open within its own timeout.
WARM_CONNECTIONS = 4


class RedisBacked:
    """What every Redis store shares: the client, its key prefix, the per-call timeout, the
    circuit breaker, and the time the scripts use.

    `clock` is for tests only: production leaves it None so that time comes from the Redis
    server and replicas with skewed clocks agree.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "mcp-authz",
        timeout: float = 0.05,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        owned: Sequence[Redis] = (),
        name: str = "Redis",
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"Redis key prefix {prefix!r} must be non-empty and free of braces")
        if timeout <= 0:
            raise ValueError("the Redis timeout must be positive")
        self._client = client
        self._prefix = prefix
        self._timeout = timeout
        self._breaker = breaker or CircuitBreaker()
        self._clock = clock
        self._owned = tuple(owned)
        self._name = name

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "mcp-authz",
        timeout: float = 0.05,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        **options: Any,
    ) -> Self:
        """Build from redis://, rediss://, unix://, redis[s]+cluster:// or redis[s]+sentinel://.

        Nothing is contacted here (the first call connects), but a malformed URL fails now.
        `options` are the store's own (its caps), passed on to its constructor.
        """
        client, owned = connect(url, timeout)
        return cls(
            client,
            prefix=prefix,
            timeout=timeout,
            breaker=breaker,
            clock=clock,
            owned=owned,
            name=describe(url),
            **options,
        )

    # The Lua scripts this store runs, loaded by `ready`.
    SCRIPTS: ClassVar[tuple[Script, ...]] = ()

    async def ready(self) -> None:
        """Connect, load the scripts and check the round trip, so that no call pays for it
        out of its own timeout; raises StoreUnavailable when Redis does not answer in time."""
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                # One first: a cluster client discovers the cluster on its first command.
                await self._client.ping()
                await asyncio.gather(*(self._client.ping() for _ in range(WARM_CONNECTIONS)))
                for script in self.SCRIPTS:
                    await self._client.script_load(script.source)
        except REDIS_FAILURES as e:
            raise unavailable(self._name, READY_TIMEOUT, e) from e

    def _now(self) -> int | str:
        """The scripts' `now` argument: empty, so they read Redis's clock, except in tests."""
        return "" if self._clock is None else round(self._clock() * _US)

    async def _close_clients(self) -> None:
        await self._client.aclose()
        for client in self._owned:
            await client.aclose()


def connect(url: str, timeout: float) -> tuple[Client, tuple[Redis, ...]]:
    """A client for `url`, and any helper clients (Sentinels) to close with it."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": max(timeout, CONNECT_TIMEOUT),
        # One immediate retry replaces a pooled connection that a Redis restart closed;
        # anything slower would not fit in the timeout anyway.
        "retry": Retry(NoBackoff(), 1),
    }
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        return Redis.from_url(url, **options), ()
    if scheme in ("redis+cluster", "rediss+cluster"):
        return _cluster(url, options), ()
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel(url, options)
    raise ValueError(
        f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
    )


def _cluster(url: str, options: dict[str, Any]) -> RedisCluster:
    parts = urlsplit(url)
    if parts.path.strip("/"):
        raise ValueError(f"a cluster URL takes no database: {_redact(url)}")
    tls = _query(url, TLS_OPTIONS)
    auth, nodes = _hosts(parts.netloc, default_port=6379)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        ssl=parts.scheme.startswith("rediss"),
        **tls,
        **auth,
        **options,
    )


def _sentinel(url: str, options: dict[str, Any]) -> tuple[Redis, tuple[Redis, ...]]:
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    if len(path) not in (1, 2) or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"a Sentinel URL ends in /SERVICE or /SERVICE/DB: {_redact(url)}")
    tls = _query(url, TLS_OPTIONS | {"sentinel_password"})
    sentinel_password = tls.pop("sentinel_password", None)
    auth, nodes = _hosts(parts.netloc, default_port=26379)
    tls["ssl"] = parts.scheme.startswith("rediss")
    # Called through a Callable so the check holds whether or not the installed redis-py
    # annotates Sentinel's constructor (8.x does, older releases do not).
    make_sentinel: Callable[..., Sentinel] = Sentinel
    sentinel = make_sentinel(
        nodes,
        sentinel_kwargs={**options, **tls, "password": sentinel_password},
        **tls,
        **auth,
        **options,
    )
    db = int(path[1]) if len(path) == 2 else 0
    return sentinel.master_for(path[0], db=db), tuple(sentinel.sentinels)


def _query(url: str, allowed: set[str]) -> dict[str, Any]:
    query = {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}
    unknown = set(query) - allowed
    if unknown:
        raise ValueError(
            f"unknown URL options {sorted(unknown)} (known: {sorted(allowed)}): {_redact(url)}"
        )
    return query


def _hosts(netloc: str, default_port: int) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """Credentials and the host:port list of a multi-host URL (IPv6 hosts in brackets)."""
    userinfo, _, hostlist = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    auth: dict[str, Any] = {
        k: unquote(v) for k, v in (("username", user), ("password", password)) if v
    }
    nodes = [_host_port(h, default_port) for h in hostlist.split(",") if h]
    if not nodes:
        raise ValueError("a cluster or Sentinel URL needs at least one host")
    return auth, nodes


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(f"//{text}")
    if parts.hostname is None:
        raise ValueError(f"not a host[:port]: {text!r}")
    return parts.hostname, parts.port or default_port


def _redact(url: str) -> str:
    """The URL without credentials or options (which may hold a Sentinel password)."""
    parts = urlsplit(url)
    _, at, hosts = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"***@{hosts}" if at else hosts, query="").geturl()


def describe(url: str) -> str:
    """How messages name a Redis: its URL without credentials or options."""
    return f"Redis at {_redact(url)}"
