"""The real stack for end-to-end tests: demo MCP server, mcp-authz and Envoy on free ports.

Processes start through `examples/stack.py`, the launcher `make run` uses, and Envoy gets the
shipped deploy/envoy/envoy.yaml with only its ports changed. The demo server lives for the
whole session; mcp-authz (with its in-process counters) and Envoy are new for every test, so
each test starts with the seed policy's full budget. A failing test shows every process's log.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

# examples/ is on sys.path from tests/conftest.py.
from stack import (
    LOG_TAIL_CHARS,
    SEED_POLICY,
    Ports,
    Process,
    start_authz,
    start_demo_server,
    start_envoy,
)

REPO = Path(__file__).resolve().parents[2]

HEADER_LOG = "upstream-headers.jsonl"
TS_CLIENT_DIR = Path(__file__).resolve().parent / "ts"
NPM_INSTALL_TIMEOUT = 300

PROCESSES = pytest.StashKey[list[Process]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for process in item.stash.get(PROCESSES, []):
            report.sections.append((f"{process.name} log", process.log_text()[-LOG_TAIL_CHARS:]))
    return report


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ports, Process]]:
    ports = Ports.free()
    log = tmp_path_factory.mktemp("demo_server") / "demo_server.log"
    with start_demo_server(ports, log, header_log=log.with_name(HEADER_LOG)) as process:
        yield ports, process


class UpstreamRequests:
    """The requests the demo server received since this object was made (its --header-log),
    each as its method, path and headers (name, value) in the order they arrived."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._start = path.stat().st_size if path.exists() else 0

    def seen(self) -> list[dict[str, Any]]:
        if not self._path.exists():  # the demo server has not been sent a request yet
            return []
        with self._path.open("rb") as log:
            log.seek(self._start)
            return [json.loads(line) for line in log.read().splitlines()]


@pytest.fixture
def upstream_requests(demo_server: tuple[Ports, Process]) -> UpstreamRequests:
    _, process = demo_server
    assert process.log is not None
    return UpstreamRequests(process.log.with_name(HEADER_LOG))


GatewayFactory = Callable[..., AbstractContextManager[str]]
# Envoy asks mcp-authz over gRPC (deploy/envoy/envoy.yaml) or HTTP (envoy-http.yaml).
TRANSPORTS = ("grpc", "http")


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """The ext_authz transport: every test through a gateway runs over each, with the same
    assertions. A test that needs one only parametrizes `transport` itself."""
    value: str = request.param
    return value


@pytest.fixture
def gateway_for(
    request: pytest.FixtureRequest,
    demo_server: tuple[Ports, Process],
    tmp_path: Path,
    transport: str,
) -> GatewayFactory:
    """Starts a fresh mcp-authz (`policy`, further `serve` flags) and Envoy in front of the
    demo server, as a context manager yielding the MCP URL."""
    demo_ports, demo_process = demo_server

    @contextmanager
    def start(policy: Path, *options: str) -> Iterator[str]:
        ports = replace(Ports.free(), mcp_server=demo_ports.mcp_server)
        processes = request.node.stash[PROCESSES] = [demo_process]
        log = tmp_path / "mcp-authz.log"
        with start_authz(ports, policy, log, *options, transport=transport) as authz:
            processes.append(authz)
            with start_envoy(ports, tmp_path, tmp_path / "envoy.log", transport=transport) as envoy:
                processes.append(envoy)
                yield ports.mcp_url

    return start


@pytest.fixture
def gateway(gateway_for: GatewayFactory) -> Iterator[str]:
    """A fresh mcp-authz (seed policy) and Envoy in front of the demo server; its MCP URL."""
    with gateway_for(SEED_POLICY) as url:
        yield url


@pytest.fixture
def gateway_without_authz(
    request: pytest.FixtureRequest,
    demo_server: tuple[Ports, Process],
    tmp_path: Path,
    transport: str,
) -> Iterator[str]:
    """Envoy in front of the demo server, its ext_authz cluster pointing at a closed port."""
    demo_ports, demo_process = demo_server
    ports = replace(Ports.free(), mcp_server=demo_ports.mcp_server)
    processes = request.node.stash[PROCESSES] = [demo_process]
    with start_envoy(ports, tmp_path, tmp_path / "envoy.log", transport=transport) as envoy:
        processes.append(envoy)
        yield ports.mcp_url


@pytest.fixture(scope="session")
def ts_client() -> Path:
    """tests/e2e/ts with the TypeScript SDK installed (from the lock file) on first use."""
    if not (TS_CLIENT_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        npm = shutil.which("npm")
        assert npm, "npm is needed for the TypeScript SDK end-to-end test"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=TS_CLIENT_DIR,
            check=True,
            timeout=NPM_INSTALL_TIMEOUT,
        )
    return TS_CLIENT_DIR / "client.mjs"
