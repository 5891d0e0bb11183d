"""A policy in PolicyLayer's full format (hide, all_tools.limits, require, deny_if, on_deny)
enforced through real Envoy and mcp-authz on the official Python SDK client.

policies/policylayer.json hides the listen-key tool, lets transfers go to alice or bob only
and 100 at most, and gives every call three a minute in all; refusals name PolicyLayer's rule
(a JSON pointer) and carry the policy's own message, and nothing refused is counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError

from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_python_sdk import DENIED, RATE_LIMITED, refusal_data

pytestmark = pytest.mark.e2e

POLICY = Path(__file__).parent / "policies" / "policylayer.json"
TRANSFER_MESSAGE = "Transfers go to alice or bob, 100 at most"
POLICY_MESSAGE = "Blocked by the demo policy"


async def refused(client: Client, tool: str, args: dict[str, Any], code: int) -> dict[str, Any]:
    """Call `tool`, expect a refusal with `code`, and return its data."""
    with pytest.raises(MCPError) as error:
        await client.call_tool(tool, args)
    assert error.value.code == code, error.value.error
    return refusal_data(error.value)


async def transfer(client: Client, amount: object, to: str) -> None:
    result = await client.call_tool("transfer_funds", {"amount": amount, "to": to})
    assert not result.is_error, result


async def test_policylayer_document_is_enforced_end_to_end(gateway_for: GatewayFactory) -> None:
    with gateway_for(POLICY) as url:
        async with Client(url) as client:
            await transfer(client, 50, "bob")

            big = await refused(client, "transfer_funds", {"amount": 500, "to": "bob"}, DENIED)
            assert big["rule"] == "/tools/transfer_funds/deny_if/args.amount-gt"
            assert big["reason"].startswith(TRANSFER_MESSAGE)
            # A string the server would coerce to 500 cannot be judged: refused, not passed.
            text = await refused(client, "transfer_funds", {"amount": "500", "to": "bob"}, DENIED)
            assert text["rule"] == "/tools/transfer_funds/deny_if/args.amount-gt"
            stranger = {"amount": 5, "to": "mallory"}
            elsewhere = await refused(client, "transfer_funds", stranger, DENIED)
            assert elsewhere["rule"] == "/tools/transfer_funds/require/args.to-in"

            hidden = await refused(client, "binance_us_create_listen_key", {}, DENIED)
            assert (hidden["rule"], hidden["reason"]) == ("(hidden)", POLICY_MESSAGE)
            unlisted = await refused(client, "echo", {"text": "hi"}, DENIED)
            assert (unlisted["rule"], unlisted["reason"]) == ("(default deny)", POLICY_MESSAGE)

            # Five refusals drew nothing from the three calls a minute: two more pass.
            await transfer(client, 100, "alice")
            await transfer(client, 1, "bob")
            spent = await refused(
                client, "transfer_funds", {"amount": 1, "to": "bob"}, RATE_LIMITED
            )
            assert spent["rule"] == "/all_tools/limits/calls-per-minute"
            assert spent["counter"] == "calls-per-minute"
