"""`mcp-authz probe URL`, the `helm test` hook's check: one call through the real Envoy.

Through a working gateway it reports mcp-authz's decision (a refusal of a call naming no tool,
which never reaches the MCP server, whatever the policy); with mcp-authz
unreachable Envoy answers 503 on its own, and the probe must fail rather than call that a pass.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import UpstreamRequests

pytestmark = pytest.mark.e2e


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "authz", "probe", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_a_decision_through_envoy_passes(gateway: str, upstream_requests: UpstreamRequests) -> None:
    result = probe(gateway)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{gateway}: mcp-authz decided (HTTP 400, decision ")
    # Refused whatever the policy says: nothing reached the MCP server.
    assert upstream_requests.seen() == []


def test_envoy_answering_alone_fails(gateway_without_authz: str) -> None:
    result = probe(gateway_without_authz, "--timeout", "10")
    assert result.returncode == 1
    assert "HTTP 503" in result.stderr
    assert "mcp-authz did not decide" in result.stderr


def test_nothing_listening_fails() -> None:
    result = probe(f"http://127.0.0.1:{free_port()}/mcp", "--timeout", "2")
    assert result.returncode == 1
    assert "did not answer" in result.stderr
