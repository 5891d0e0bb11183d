"""The official Python SDK client through Envoy and mcp-authz, on both protocol revisions.

The seed policy denies by default and allows `binance_us_create_listen_key` 30 times a
minute: within-limit calls pass, the 31st is refused as an MCP error carrying the policy's
reason, an unlisted tool is refused, and the session keeps working after each refusal.
"""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client, MCPError

pytestmark = pytest.mark.e2e

LISTEN_KEY = "binance_us_create_listen_key"
LIMIT = 30
WINDOW_SECONDS = 60
DENIED = -32000
RATE_LIMITED = -32001

# `mode` as the SDK takes it, and the revision it must end up speaking. "auto" is the SDK's
# default: it probes server/discover (2026-07-28), so that probe must get through too.
REVISIONS = [
    pytest.param("legacy", "2025-11-25", id="2025-11-25"),
    pytest.param("auto", "2026-07-28", id="2026-07-28"),
]


def refusal_data(error: MCPError) -> dict[str, Any]:
    """The error's `data`, after checking the message shows the agent the policy's reason."""
    data = error.error.data
    assert isinstance(data, dict), error.error
    assert data["reason"], data
    assert data["reason"] in error.error.message
    return data


async def spend_the_seed_budget(client: Client) -> dict[str, Any]:
    """Call the listen-key tool LIMIT times, all allowed; the next call's refusal data."""
    for _ in range(LIMIT):
        result = await client.call_tool(LISTEN_KEY)
        assert not result.is_error, result
    with pytest.raises(MCPError) as refused:
        await client.call_tool(LISTEN_KEY)
    assert refused.value.code == RATE_LIMITED
    return refusal_data(refused.value)


async def assert_session_usable(client: Client) -> None:
    """A request that goes over the wire (no cached listing) still gets its answer."""
    listing = await client.list_tools(cache_mode="bypass")
    # The seed policy lets an agent call one tool, and its list shows that one (ext_proc).
    assert [tool.name for tool in listing.tools] == [LISTEN_KEY]


@pytest.mark.parametrize(("mode", "revision"), REVISIONS)
async def test_31st_call_in_a_minute_is_rate_limited(
    gateway: str, mode: str, revision: str
) -> None:
    async with Client(gateway, mode=mode) as client:
        assert client.protocol_version == revision
        data = await spend_the_seed_budget(client)
        assert data["tool"] == LISTEN_KEY
        assert LISTEN_KEY in data["rule"]
        assert isinstance(data["retry_after"], int)
        assert 0 < data["retry_after"] <= WINDOW_SECONDS
        await assert_session_usable(client)


@pytest.mark.parametrize(("mode", "revision"), REVISIONS)
async def test_unlisted_tool_is_denied_and_session_survives(
    gateway: str, mode: str, revision: str
) -> None:
    async with Client(gateway, mode=mode) as client:
        assert client.protocol_version == revision
        with pytest.raises(MCPError) as refused:
            await client.call_tool("transfer_funds", {"amount": 5, "to": "mallory"})

        assert refused.value.code == DENIED
        data = refusal_data(refused.value)
        assert data["tool"] == "transfer_funds"
        assert data["rule"]
        assert "retry_after" not in data

        await assert_session_usable(client)
        allowed = await client.call_tool(LISTEN_KEY)
        assert not allowed.is_error, allowed
        assert allowed.content
