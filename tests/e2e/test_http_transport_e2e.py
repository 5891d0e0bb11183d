"""What only the HTTP transport has to get right, through the shipped envoy-http.yaml.

Every gateway test already runs over both transports (tests/e2e/conftest.py); these check
what http_service changes: the identity header reaches mcp-authz only because the config
allow-lists it, refusals agents must read arrive as 200 after Envoy's local-reply mapper,
other refusal statuses pass unchanged, and identity sources http_service cannot carry stop
start-up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stack import Ports, StartupError, start_authz

from tests.conftest import RedisServer
from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_http import Answer, modern_call, modern_headers, post

pytestmark = pytest.mark.e2e

PER_AGENT = 2


@pytest.fixture
def per_agent_policy(tmp_path: Path) -> Path:
    policy = {
        "version": "1",
        "default": "deny",
        "tools": {
            "echo": {
                "limits": [
                    {"counter": "echo", "window": "minute", "max": PER_AGENT, "scope": "identity"}
                ]
            }
        },
    }
    path = tmp_path / "per-agent.json"
    path.write_text(json.dumps(policy))
    return path


def send(url: str, request_id: int, **headers: str) -> Answer:
    """A stateless (2026-07-28) echo call, so no session needs setting up first."""
    return post(
        url, modern_call("echo", request_id), **modern_headers("tools/call", "echo"), **headers
    )


@pytest.mark.parametrize("transport", ["http"])
def test_identity_header_counts_per_agent_over_http(
    gateway_for: GatewayFactory, own_redis: RedisServer, per_agent_policy: Path
) -> None:
    flags = ("--redis-url", own_redis.url, "--identity-source", "header")
    with gateway_for(per_agent_policy, *flags) as url:
        for i in range(PER_AGENT):
            answer = send(url, i, **{"x-agent-id": "alice"})
            assert answer.status == 200, answer
            assert answer.headers["x-ratelimit-remaining"] == str(PER_AGENT - 1 - i)
            assert "error" not in answer.json_rpc(), answer
        limited = send(url, 9, **{"x-agent-id": "alice"})
        # 299 from mcp-authz, 200 from Envoy: the JSON-RPC error is what the agent reads.
        assert limited.status == 200, limited
        assert limited.json_rpc()["error"]["code"] == -32001
        assert limited.headers["content-type"] == "application/json"
        assert int(limited.headers["retry-after"]) > 0
        # Another agent has its own budget: the header reached mcp-authz.
        assert "error" not in send(url, 10, **{"x-agent-id": "bob"}).json_rpc()
        # No identity: 401 passes through unchanged.
        anonymous = send(url, 11)
        assert anonymous.status == 401, anonymous
        assert anonymous.json_rpc()["error"]["code"] == -32003


@pytest.mark.parametrize("source", ["jwt", "mtls"])
def test_identity_sources_http_service_cannot_carry_stop_start_up(
    tmp_path: Path, per_agent_policy: Path, source: str
) -> None:
    log = tmp_path / "mcp-authz.log"
    with pytest.raises(StartupError, match="exited with status 2") as failed:
        start_authz(
            Ports.free(), per_agent_policy, log, "--identity-source", source, transport="http"
        )
    assert "http_service forwards neither" in str(failed.value)
