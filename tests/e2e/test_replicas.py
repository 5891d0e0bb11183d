"""Two mcp-authz replicas behind the real front proxy (deploy/envoy/front-proxy.yaml): Envoy's
gRPC health checks and outlier detection take a dead replica, or one whose Redis is gone in
fail-closed mode, out of rotation, and every call made after that is judged by the other.

The front proxy is the shipped file with only addresses and ports changed: its payments route
goes to the demo MCP server, and its payments mcp-authz cluster names two replicas. Agents are
official Python SDK clients calling `echo` (limited, so each Check needs Redis) in a loop; each
call is recorded with when it started and how it ended.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client, MCPError
from stack import (
    HOST,
    SEED_POLICY,
    Ports,
    Process,
    envoy_ready,
    executable,
    launch,
    start_authz,
    start_envoy,
)

from authz.protocol.errors import Refusal
from tests.conftest import RedisServer
from tests.e2e.conftest import PROCESSES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FRONT_PROXY = REPO / "deploy" / "envoy" / "front-proxy.yaml"
AUTHZ_CLUSTER = "mcp_authz_payments"
TOOL = "echo"
LIMITS_UNAVAILABLE = Refusal.LIMITS_UNAVAILABLE.code
AGENTS = 4
# Calls made before a replica is hurt (a share judged by each), and calls made once it is out.
WARM_CALLS = 40
CALLS_AFTER = 120
# Upper bounds only (the test waits for the event, it does not time it): with the shipped
# settings a killed replica is ejected within a second or two of load, a NOT_SERVING one is
# out after two health checks (~2 s), a recovered one back after two more.
EVENT_WITHIN = 30.0


def policy(tmp: Path) -> Path:
    """Default deny; `echo` allowed under a limit no test reaches, so every Check counts in
    Redis and a replica without its Redis refuses (fail-closed) instead of judging."""
    rule = {"limits": [{"counter": "echo", "window": "minute", "max": 1_000_000}]}
    path = tmp / "policy.json"
    path.write_text(json.dumps({"version": "1", "default": "deny", "tools": {TOOL: rule}}))
    return path


def render_front_proxy(ports: Ports, replicas: list[int], dest: Path) -> Path:
    """The shipped front proxy with its addresses on loopback: the MCP routes to the demo
    server, both mcp-authz clusters to `replicas`, the collector to a closed port."""
    config: dict[str, Any] = yaml.safe_load(FRONT_PROXY.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = ports.admin
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"].update(address=HOST, port_value=ports.envoy)
    targets = {"payments_mcp": [ports.mcp_server], "github_mcp": [ports.mcp_server]}
    targets |= {"mcp_authz_payments": replicas, "mcp_authz_github": replicas}
    targets["otel_collector"] = [ports.authz]  # nothing listens there
    for cluster in config["static_resources"]["clusters"]:
        (locality,) = cluster["load_assignment"]["endpoints"]
        template = locality["lb_endpoints"][0]
        locality["lb_endpoints"] = [
            {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": port}}}}
            | {k: v for k, v in template.items() if k != "endpoint"}
            for port in targets[cluster["name"]]
        ]
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def admin_get(ports: Ports, path: str) -> str:
    conn = http.client.HTTPConnection(HOST, ports.admin, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def host_stats(ports: Ports, cluster: str = AUTHZ_CLUSTER) -> dict[int, dict[str, str]]:
    """Each endpoint's entries in Envoy's admin /clusters (health_flags, rq_total, ...)."""
    stats: dict[int, dict[str, str]] = {}
    for line in admin_get(ports, "/clusters").splitlines():
        parts = line.split("::")
        if parts[0] == cluster and len(parts) == 4 and ":" in parts[1]:
            stats.setdefault(int(parts[1].rpartition(":")[2]), {})[parts[2]] = parts[3]
    return stats


def health_flags(ports: Ports, cluster: str = AUTHZ_CLUSTER) -> dict[int, str]:
    return {port: host["health_flags"] for port, host in host_stats(ports, cluster).items()}


def sent_to(ports: Ports, port: int) -> int:
    """Every Check Envoy has routed to `port`: answered, failed, or refused at connect
    (health checks are not counted here)."""
    host = host_stats(ports)[port]
    return sum(int(host[k]) for k in ("rq_total", "rq_error", "cx_connect_fail"))


def timeouts_at(ports: Ports, port: int) -> int:
    return int(host_stats(ports)[port]["rq_timeout"])


async def wait_flags(ports: Ports, port: int, want: Callable[[str], bool]) -> str:
    """Waits until `port`'s health flags in Envoy's eyes satisfy `want`; returns them."""
    started = time.monotonic()
    while not want(flags := (await asyncio.to_thread(health_flags, ports)).get(port, "")):
        assert time.monotonic() - started < EVENT_WITHIN, health_flags(ports)
        await asyncio.sleep(0.05)
    return flags


def healthy(flags: str) -> bool:
    return flags == "healthy"


def failed_active_hc(flags: str) -> bool:
    return "failed_active_hc" in flags


@dataclass
class Call:
    started: float
    ok: bool
    error: str = ""
    code: int | None = None  # the JSON-RPC error code of a refusal


@dataclass
class Agents:
    """AGENTS SDK clients calling TOOL in a loop until stopped; every call is recorded."""

    url: str
    calls: list[Call] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _recorded: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Future[None]] = field(default_factory=list)

    async def _agent(self, n: int) -> None:
        async with Client(self.url, mode="auto") as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    result = await client.call_tool(TOOL, {"text": f"agent {n}"})
                except MCPError as e:
                    self._record(Call(started, ok=False, error=str(e), code=e.code))
                except Exception as e:  # every failure is a data point here
                    self._record(Call(started, ok=False, error=f"{type(e).__name__}: {e}"))
                else:
                    self._record(Call(started, ok=not result.is_error, error=str(result)))

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._recorded.set()

    async def until(self, calls: int, after: float = 0.0) -> None:
        """Waits for `calls` finished calls that started after `after`."""
        while sum(c.started > after for c in self.calls) < calls:
            self._recorded.clear()
            await self._recorded.wait()

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._agent(n)) for n in range(AGENTS)]

    async def stop(self) -> None:
        """Each agent ends its call in flight and closes its session."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def failed_after(self, moment: float) -> list[Call]:
        return [c for c in self.calls if c.started > moment and not c.ok]


@dataclass
class Replicas:
    ports: Ports
    authz: list[Process]
    redis: list[RedisServer]
    endpoints: list[int]
    url: str


def start_replica(stack: ExitStack, tmp: Path, n: int) -> tuple[Process, RedisServer, int]:
    """Replica `n`: fail-closed, with a Redis of its own so it can lose its store alone."""
    redis = RedisServer(tmp / f"redis-{n}").start()
    stack.callback(redis.stop)
    ports = Ports.free()
    options = ("--redis-url", redis.url, "--fail-mode", "closed", "--audit-log", "off")
    log = tmp / f"mcp-authz-{n}.log"
    process = stack.enter_context(start_authz(ports, policy(tmp), log, *options))
    return process, redis, ports.authz


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest, demo_server: tuple[Ports, Process], tmp_path: Path
) -> Iterator[Replicas]:
    """Two mcp-authz replicas behind the front proxy, both healthy in Envoy's eyes."""
    demo_ports, demo_process = demo_server
    processes = request.node.stash[PROCESSES] = [demo_process]
    with ExitStack() as stack:
        started = [start_replica(stack, tmp_path, n) for n in range(2)]
        authz = [process for process, _, _ in started]
        processes.extend(authz)
        ports = replace(Ports.free(), mcp_server=demo_ports.mcp_server)
        endpoints = [port for _, _, port in started]
        config = render_front_proxy(ports, endpoints, tmp_path / "front-proxy.yaml")
        argv = [executable("envoy"), "-c", str(config), "--disable-hot-restart"]
        envoy = stack.enter_context(launch("envoy", argv, tmp_path / "envoy.log"))
        processes.append(envoy)
        envoy.wait_ready(envoy_ready(ports.admin), "ready on its admin port")
        envoy.wait_ready(lambda: set(health_flags(ports).values()) == {"healthy"}, "healthy")
        url = f"http://{HOST}:{ports.envoy}/payments/mcp"
        yield Replicas(ports, authz, [redis for _, redis, _ in started], endpoints, url)


@dataclass
class Outage:
    """One hurt replica under load: when it was hurt, when Envoy first held it out of
    rotation (`ejected`, by whichever mechanism) and when its health checks did
    (`unhealthy`), what Envoy had sent it by then, and the Checks that timed out at the other
    replica since (a loaded machine can make one exceed its 250 ms; that is not routing)."""

    replicas: Replicas
    agents: Agents
    hurt: float
    ejected: float
    unhealthy: float
    flags: str  # the health flags Envoy first held it with
    sent: int  # Checks Envoy had routed to it when its health checks failed
    timeouts: int  # Checks that had timed out at the other replica by then

    def report(self, what: str) -> str:
        lost = len(self.agents.failed_after(0.0))
        return (
            f"{what}: ejected {self.ejected - self.hurt:.2f}s after, failed health checks "
            f"{self.unhealthy - self.hurt:.2f}s after; {lost} of {len(self.agents.calls)} "
            "calls failed in all"
        )

    def check_nothing_lost_since_unhealthy(self) -> None:
        """Since its health checks failed Envoy has sent the hurt replica nothing, and every
        call since succeeded but for what load does to the other replica: Checks that timed
        out there, and its own fail-closed refusals when its Redis was slower than the
        per-call timeout (answers of a replica that judged, not calls lost in routing)."""
        ports, (hurt, other) = self.replicas.ports, self.replicas.endpoints
        assert sent_to(ports, hurt) == self.sent, "Envoy routed a Check to an unhealthy replica"
        late = self.agents.failed_after(self.unhealthy)
        lost = [c for c in late if c.code != LIMITS_UNAVAILABLE]
        assert len(lost) <= timeouts_at(ports, other) - self.timeouts, lost[:3]


async def hurt_under_load(replicas: Replicas, hurt: Callable[[], None]) -> Outage:
    """Agents call through the front proxy until both replicas have judged Checks; `hurt` is
    done to replica 0; returns once CALLS_AFTER calls started after Envoy's health checks
    took it out of rotation (the agents keep calling)."""
    ports, (endpoint, other) = replicas.ports, replicas.endpoints
    agents = Agents(replicas.url)
    agents.start()
    calls = WARM_CALLS
    await agents.until(calls)
    while min(sent_to(ports, endpoint), sent_to(ports, other)) < WARM_CALLS // 4:
        calls += 1  # round robin: each replica soon judges a share
        await agents.until(calls)
    hurt_at = time.monotonic()
    hurt()
    flags = await wait_flags(ports, endpoint, lambda flags: not healthy(flags))
    ejected = time.monotonic()
    await wait_flags(ports, endpoint, failed_active_hc)
    unhealthy = time.monotonic()
    sent, timeouts = sent_to(ports, endpoint), timeouts_at(ports, other)
    await agents.until(CALLS_AFTER, after=unhealthy)
    return Outage(replicas, agents, hurt_at, ejected, unhealthy, flags, sent, timeouts)


async def test_a_killed_replica_is_ejected_and_the_other_judges_every_call(
    replicas: Replicas,
) -> None:
    # SIGKILL: no drain, no NOT_SERVING; the connections are reset.
    outage = await hurt_under_load(replicas, replicas.authz[0].popen.kill)
    await outage.agents.stop()
    print(outage.report("SIGKILLed replica"))
    outage.check_nothing_lost_since_unhealthy()
    assert health_flags(replicas.ports)[replicas.endpoints[1]] == "healthy"


async def test_a_replica_without_its_redis_leaves_rotation_and_comes_back(
    replicas: Replicas,
) -> None:
    outage = await hurt_under_load(replicas, replicas.redis[0].kill)
    # Its refusals (-32002) are well-formed answers, which outlier detection does not count:
    # only the health checks (the replica said NOT_SERVING) take it out.
    assert outage.flags == "/failed_active_hc", outage.flags
    outage.check_nothing_lost_since_unhealthy()
    replicas.redis[0].start()
    back = time.monotonic()
    await wait_flags(replicas.ports, replicas.endpoints[0], healthy)
    back_after = time.monotonic() - back
    sent = sent_to(replicas.ports, replicas.endpoints[0])
    await outage.agents.until(CALLS_AFTER, after=time.monotonic())
    await outage.agents.stop()
    print(outage.report("replica without Redis") + f"; back {back_after:.2f}s after Redis")
    assert sent_to(replicas.ports, replicas.endpoints[0]) > sent, "not back in rotation"
    assert replicas.authz[0].running()


def test_each_shipped_sidecar_config_health_checks_its_mcp_authz(
    request: pytest.FixtureRequest,
    demo_server: tuple[Ports, Process],
    tmp_path: Path,
    transport: str,
) -> None:
    """envoy.yaml asks the gRPC health service, envoy-http.yaml the HTTP endpoint on its own
    port: both must find the replica healthy, or a real outage could not be told apart."""
    demo_ports, demo_process = demo_server
    ports = replace(Ports.free(), mcp_server=demo_ports.mcp_server)
    processes = request.node.stash[PROCESSES] = [demo_process]
    with ExitStack() as stack:
        log = tmp_path / "mcp-authz.log"
        processes.append(
            stack.enter_context(start_authz(ports, SEED_POLICY, log, transport=transport))
        )
        envoy = start_envoy(ports, tmp_path, tmp_path / "envoy.log", transport=transport)
        processes.append(stack.enter_context(envoy))
        envoy.wait_ready(
            lambda: health_flags(ports, "mcp_authz") == {ports.authz: "healthy"}, "healthy"
        )
        stats = admin_get(ports, "/stats?filter=^cluster.mcp_authz.health_check.")
        counts = dict(line.split(": ") for line in stats.splitlines())
        assert int(counts["cluster.mcp_authz.health_check.success"]) >= 1, stats
