"""A spend budget enforced through Envoy, with the counters in a real Redis.

Calls are admitted until their amounts would pass the budget, then refused with what is left;
the budget lives in Redis, so a second mcp-authz sharing that Redis sees the same spend.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client, MCPError

from tests.conftest import RedisServer
from tests.e2e.conftest import GatewayFactory

pytestmark = pytest.mark.e2e

SPEND_POLICY = Path(__file__).parent / "policies" / "spend.yaml"
DENIED = -32000
RATE_LIMITED = -32001


async def transfer(client: Client, amount: int) -> None:
    result = await client.call_tool("transfer_funds", {"amount": amount, "to": "acct-1"})
    assert not result.is_error, result


async def test_spend_budget_through_envoy_with_redis(
    gateway_for: GatewayFactory, own_redis: RedisServer
) -> None:
    with gateway_for(SPEND_POLICY, "--redis-url", own_redis.url) as url:
        async with Client(url) as client:
            await transfer(client, 400)
            await transfer(client, 500)
            with pytest.raises(MCPError) as refused:
                await transfer(client, 200)
            assert refused.value.code == RATE_LIMITED
            assert "has 100 left and the call needs 200" in refused.value.error.message
            with pytest.raises(MCPError) as too_big:
                await transfer(client, 501)
            assert too_big.value.code == DENIED
            assert "Single transfers are capped at 500" in too_big.value.error.message
            await transfer(client, 100)
    # A new mcp-authz on the same Redis: the day's budget is already spent.
    with gateway_for(SPEND_POLICY, "--redis-url", own_redis.url) as url:
        async with Client(url) as client:
            with pytest.raises(MCPError) as spent:
                await transfer(client, 1)
            assert spent.value.code == RATE_LIMITED
            assert "daily_transfers" in spent.value.error.message
            assert "is spent" in spent.value.error.message
