"""Start and stop the demo stack: the demo MCP server, mcp-authz and Envoy.

`run_demo.py` (``make run``) and the end-to-end tests both start processes through this
module, so the tests exercise the very stack the demo runs. Envoy always gets the shipped
``deploy/envoy/envoy.yaml`` with only its four ports rewritten.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
ENVOY_CONFIG = REPO / "deploy" / "envoy" / "envoy.yaml"
# The shipped config for each ext_authz transport (`mcp-authz serve --transport`).
ENVOY_CONFIGS = {"grpc": ENVOY_CONFIG, "http": REPO / "deploy" / "envoy" / "envoy-http.yaml"}
SEED_POLICY = REPO / "examples" / "policies" / "seed.json"
DEMO_SERVER = REPO / "examples" / "demo_server.py"
DEMO_OIDC = REPO / "examples" / "demo_oidc.py"

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
STOP_GRACE = 10.0
# How long each readiness probe waits on the process before probing again; a process that
# exits meanwhile ends the wait at once.
POLL_INTERVAL = 0.05
LOG_TAIL_CHARS = 6000


class StartupError(RuntimeError):
    """A process of the stack exited or did not become ready in time."""


@dataclass(frozen=True)
class Ports:
    """The stack's ports; the defaults are the ones in the shipped Envoy configs. `health` is
    mcp-authz's HTTP health endpoint (--health-listen), which envoy-http.yaml checks; `extproc`
    is its ext_proc port with --transport http (with gRPC, ext_proc shares `authz`)."""

    mcp_server: int = 8000
    authz: int = 9191
    envoy: int = 10000
    admin: int = 9901
    health: int = 9193
    extproc: int = 9194

    @classmethod
    def free(cls) -> Ports:
        """Distinct ports the kernel has just handed out as free."""
        sockets = [socket.socket() for _ in range(6)]
        with ExitStack() as stack:
            for sock in sockets:
                stack.enter_context(sock)
                sock.bind((HOST, 0))
            mcp_server, authz, envoy, admin, health, extproc = (s.getsockname()[1] for s in sockets)
        return cls(mcp_server, authz, envoy, admin, health, extproc)

    def ensure_free(self) -> None:
        """Fail early and plainly on a busy port: a probe would take whatever holds it for
        the process we started."""
        ports = (self.mcp_server, self.authz, self.envoy, self.admin, self.health, self.extproc)
        for port in ports:
            with socket.socket() as sock:
                # As the servers do, so a port left in TIME_WAIT by the last run counts as free.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((HOST, port))
                except OSError as error:
                    raise StartupError(f"port {port} is in use: {error.strerror}") from None

    @property
    def mcp_url(self) -> str:
        """Where MCP clients connect: Envoy's listener."""
        return f"http://{HOST}:{self.envoy}/mcp"


@dataclass
class Process:
    """A child process whose output goes to `log` (or to our own terminal when None)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_text(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM (each component shuts down gracefully on it), SIGKILL after a grace period."""
        if not self.running():
            return
        self.popen.terminate()
        try:
            self.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def wait_ready(self, ready: Callable[[], bool], what: str) -> None:
        """Probe `ready` until it holds; fail fast if the process exits first."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not ready():
            if time.monotonic() > deadline:
                self.stop()
                raise StartupError(self._describe(f"not {what} after {STARTUP_TIMEOUT:.0f}s"))
            try:
                returncode = self.popen.wait(POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                continue
            raise StartupError(self._describe(f"exited with status {returncode}"))

    def _describe(self, problem: str) -> str:
        where = f"log {self.log}" if self.log else "output above"
        return f"{self.name} {problem} ({where}):\n{self.log_text()[-LOG_TAIL_CHARS:]}"


def launch(name: str, argv: list[str], log: Path | None) -> Process:
    """Start `argv` in its own process group, so a terminal's Ctrl-C reaches only us and
    we stop the stack in order."""
    with ExitStack() as files:
        out = files.enter_context(log.open("wb")) if log else None
        popen = subprocess.Popen(  # noqa: S603 (argv is ours: this interpreter, envoy, mcp-authz)
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            process_group=0,
        )
    return Process(name, popen, log)


def executable(name: str) -> str:
    """`name` from this interpreter's environment (a venv need not be activated), else PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise StartupError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def accepts_tcp(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=POLL_INTERVAL):
                return True
        except OSError:
            return False

    return probe


def grpc_serving(port: int) -> Callable[[], bool]:
    """The standard gRPC health check for the whole server reports SERVING."""

    def probe() -> bool:
        with grpc.insecure_channel(f"{HOST}:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return probe


def ready_200(port: int) -> Callable[[], bool]:
    """GET /ready answers 200: Envoy's admin port once listeners and clusters are initialised,
    mcp-authz's HTTP health endpoint once it can judge."""

    def probe() -> bool:
        with closing(http.client.HTTPConnection(HOST, port, timeout=1.0)) as conn:
            try:
                conn.request("GET", "/ready")
                return conn.getresponse().status == 200
            except OSError:
                return False

    return probe


def envoy_ready(admin_port: int) -> Callable[[], bool]:
    return ready_200(admin_port)


def render_envoy_config(
    ports: Ports, dest: Path, *, transport: str = "grpc", collector: int | None = None
) -> Path:
    """Write the shipped Envoy config (of `transport`) to `dest` with only its ports changed,
    and, given a `collector` port, its spans sent there."""
    config: dict[str, Any] = yaml.safe_load(ENVOY_CONFIGS[transport].read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = ports.admin
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"]["port_value"] = ports.envoy
    if collector is not None:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        exporter = manager["tracing"]["provider"]["typed_config"]["grpc_service"]
        exporter["google_grpc"]["target_uri"] = f"{HOST}:{collector}"
    cluster_ports = {
        "mcp_server": ports.mcp_server,
        "mcp_authz": ports.authz,
        "mcp_authz_extproc": ports.extproc,
    }
    for cluster in config["static_resources"]["clusters"]:
        for locality in cluster["load_assignment"]["endpoints"]:
            for lb_endpoint in locality["lb_endpoints"]:
                address = lb_endpoint["endpoint"]["address"]["socket_address"]
                address["port_value"] = cluster_ports[cluster["name"]]
                if "health_check_config" in lb_endpoint["endpoint"]:
                    lb_endpoint["endpoint"]["health_check_config"]["port_value"] = ports.health
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def start_demo_server(
    ports: Ports, log: Path | None, header_log: Path | None = None, *options: str
) -> Process:
    """The demo MCP server; with `header_log`, it records every request's headers there;
    `options` are further flags (`--rug-pull`)."""
    argv = [sys.executable, str(DEMO_SERVER), "--host", HOST, "--port", str(ports.mcp_server)]
    if header_log is not None:
        argv += ["--header-log", str(header_log)]
    argv += options
    process = launch("demo MCP server", argv, log)
    process.wait_ready(accepts_tcp(ports.mcp_server), "accepting connections")
    return process


def start_demo_oidc(port: int, log: Path | None) -> Process:
    """The demo's OIDC provider (examples/demo_oidc.py), for the console's sign-in."""
    argv = [sys.executable, str(DEMO_OIDC), "--host", HOST, "--port", str(port)]
    process = launch("demo OIDC provider", argv, log)
    process.wait_ready(accepts_tcp(port), "accepting connections")
    return process


def start_authz(
    ports: Ports, policy: Path, log: Path | None, *options: str, transport: str = "grpc"
) -> Process:
    """mcp-authz serving `policy`; `options` are further `serve` flags (e.g. --redis-url)."""
    if transport != "grpc":
        # The HTTP transport's health endpoint, which envoy-http.yaml's health checks ask, and
        # ext_proc's own gRPC port (envoy-http.yaml's mcp_authz_extproc cluster).
        health = f"{HOST}:{ports.health}"
        extproc = ("--extproc-listen", f"{HOST}:{ports.extproc}")
        options = ("--transport", transport, "--health-listen", health, *extproc, *options)
    argv = [
        executable("mcp-authz"),
        "serve",
        "--policy",
        str(policy),
        "--listen",
        f"{HOST}:{ports.authz}",
        *options,
    ]
    process = launch("mcp-authz", argv, log)
    if transport == "grpc":
        process.wait_ready(grpc_serving(ports.authz), "serving gRPC health")
    else:  # the HTTP transport's health endpoint says 200 once the stores answered
        process.wait_ready(ready_200(ports.health), "ready on its HTTP health endpoint")
    return process


def start_envoy(
    ports: Ports,
    workdir: Path,
    log: Path | None,
    *,
    transport: str = "grpc",
    collector: int | None = None,
) -> Process:
    config = render_envoy_config(
        ports, workdir / "envoy.yaml", transport=transport, collector=collector
    )
    # Hot restart shares memory keyed by a base id; without disabling it a second Envoy on
    # the machine (the demo next to a test run) would refuse to start.
    argv = [executable("envoy"), "-c", str(config), "--disable-hot-restart"]
    process = launch("envoy", argv, log)
    process.wait_ready(envoy_ready(ports.admin), "ready on its admin port")
    return process


@dataclass(frozen=True)
class Stack:
    ports: Ports
    processes: list[Process]

    def all_running(self) -> bool:
        return all(process.running() for process in self.processes)


@contextmanager
def running_stack(
    ports: Ports,
    policy: Path,
    workdir: Path,
    *,
    authz_log: Path | None,
    authz_options: tuple[str, ...] = (),
    before: tuple[Callable[[], Process], ...] = (),
) -> Iterator[Stack]:
    """Start all three, ready to serve, and stop them (in reverse) when the block ends.

    The demo server's and Envoy's output go to files in `workdir`; mcp-authz's to
    `authz_log`, or to our own terminal when None. `authz_options` are further `serve`
    flags; `before` starts processes mcp-authz needs first (the demo's OIDC provider).
    """
    with ExitStack() as cleanup:
        processes = [cleanup.enter_context(start()) for start in before]
        processes += [
            cleanup.enter_context(start_demo_server(ports, workdir / "demo_server.log")),
            cleanup.enter_context(start_authz(ports, policy, authz_log, *authz_options)),
            cleanup.enter_context(start_envoy(ports, workdir, workdir / "envoy.log")),
        ]
        yield Stack(ports, processes)
