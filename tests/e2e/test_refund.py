"""Quota refund through real Envoy: an upstream 503 gives the call's count back.

The demo server answers every call of `unavailable` with 503 before the MCP app sees it. The
policy allows that tool twice a minute; without refunds the third call would be refused as
rate limited (-32001). With them, every call reaches the server, fails there, and is given
back, so no call is ever refused by the budget; the audit log shows one refund per call.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client, MCPError

from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_typescript_sdk import run_client

pytestmark = pytest.mark.e2e

POLICY = Path(__file__).parent / "policies" / "refund.json"
LIMIT = 2
CALLS = LIMIT + 3
RATE_LIMITED = -32001


def refunds(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("response_event") == "refunded"]


async def test_a_503_gives_the_python_clients_count_back(
    gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    with gateway_for(POLICY) as url:
        async with Client(url) as client:
            for _ in range(CALLS):
                with pytest.raises(Exception) as failed:  # noqa: PT011 - any transport error
                    await client.call_tool("unavailable")
                # The server's outage, never the budget.
                assert not (
                    isinstance(failed.value, MCPError) and failed.value.code == RATE_LIMITED
                ), failed.value
            # The session still works, and a tool that answers is still counted as usual.
            assert not (await client.call_tool("binance_us_create_listen_key")).is_error
    done = refunds(tmp_path / "mcp-authz.log")
    assert len(done) == CALLS
    assert all(r["counters"] == ["unavailable_rate"] and r["status"] == 503 for r in done)


@pytest.mark.parametrize("transport", ["grpc"])
def test_a_503_gives_the_typescript_clients_count_back(
    ts_client: Path, gateway_for: GatewayFactory, tmp_path: Path, transport: str
) -> None:
    with gateway_for(POLICY) as url:
        report = run_client(ts_client, url, f"unavailable:{CALLS}")
    assert len(report["calls"]) == CALLS
    for call in report["calls"]:
        assert not call["ok"]
        # A transport error for the 503, never the gateway's rate-limit refusal.
        assert call["error"]["code"] != RATE_LIMITED, call
    assert len(refunds(tmp_path / "mcp-authz.log")) == CALLS
