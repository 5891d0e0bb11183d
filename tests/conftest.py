"""Real redis-server processes for the tests, each on a free port of its own.

Never the system Redis on 6379: every server here is started by the fixture, in a temporary
directory, and stopped when its fixture ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, settings

STARTUP_TIMEOUT = 10.0

# Hypothesis times each example (200 ms) and its data generation by default: timed asserts
# that a loaded machine fails. What a property test checks here is behaviour, never speed.
settings.register_profile("mcp-authz", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mcp-authz")
# The demo's scripts (the stack launcher, the demo OIDC provider) live in examples/, a folder
# of scripts, not a package; the tests start the very same ones.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def free_port(*, with_bus: bool = False) -> int:
    """A port nobody listens on (and, for cluster nodes, its bus port + 10000 too)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not with_bus or (port + 10000 < 65536 and _bindable(port + 10000)):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    """One redis-server process that a test may kill, pause and start again on its port."""

    def __init__(
        self, workdir: Path, *args: str, port: int | None = None, config: Path | None = None
    ) -> None:
        self.port = port or free_port(with_bus="--cluster-enabled" in args)
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self._args = args
        self._config = [str(config)] if config else []
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        command = [
            "redis-server",
            *self._config,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--unixsocket", str(self.socket),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.dir / "redis.log"),
            *self._args,
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def kill(self) -> None:
        """Die at once, as a crashed or OOM-killed server does (data and scripts are lost)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        """Keep connections open but answer nothing, as a hung or partitioned server does."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self.resume()
            self._process.terminate()
            self._process.wait()
            self._process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=STARTUP_TIMEOUT)

    def command(self, *args: str | int) -> object:
        with self.client() as c:
            return c.execute_command(*args)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"redis-server on port {self.port} did not start")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One standalone server shared by the session; tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client of the session's redis-server, for looking at what a store wrote."""
    client = redis.asyncio.Redis(port=redis_server.port)
    yield client
    await client.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server for this test alone, free to be killed, paused or misconfigured."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real three-primary Redis Cluster shared by the session; yields its URL."""
    nodes, url = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield url
    for node in nodes:
        node.stop()


def redis_url_for(request: pytest.FixtureRequest) -> str:
    """The URL of the session's standalone server or cluster, by a `["redis", "cluster"]`
    fixture parameter (the store contract suites run on both)."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster"))
    return str(request.getfixturevalue("redis_server").url)


def start_cluster(workdir: Path, node_timeout_ms: int = 2000) -> tuple[list[RedisServer], str]:
    """Three cluster-mode servers joined into one cluster; returns them and its
    redis+cluster:// URL. The caller stops the nodes."""
    nodes = [
        RedisServer(
            workdir, "--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms)
        )
        for _ in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses,
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        _wait_cluster_ok(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes, "redis+cluster://" + ",".join(addresses)


def _wait_cluster_ok(nodes: list[RedisServer]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        infos = [n.command("CLUSTER", "INFO") for n in nodes]
        if all(_cluster_ok(info) for info in infos):
            return
        time.sleep(0.05)
    raise RuntimeError("the test cluster did not reach cluster_state:ok")


def _cluster_ok(info: object) -> bool:
    if isinstance(info, dict):
        return info.get("cluster_state") == "ok"
    return b"cluster_state:ok" in info if isinstance(info, bytes) else False
