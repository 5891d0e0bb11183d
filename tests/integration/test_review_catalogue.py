"""Adversarial review: a server's definition holding a lone surrogate (valid JSON, `"\\ud800"`)
is catalogued and read back by every backend like any other, never an encoding error that
withholds the server's whole list."""

from __future__ import annotations

import json

from authz.catalogue.base import Change
from authz.protocol.tools import parse_tool
from tests.integration import test_catalogue_contract as contract
from tests.integration.test_catalogue_contract import Pair

# The contract's backends (memory, Redis, Redis Cluster) and clock, as fixtures here too.
pair, clock = contract.pair, contract.clock


async def test_a_lone_surrogate_in_a_definition_is_stored_and_read_back(pair: Pair) -> None:
    a, b = pair
    entry = json.loads(
        '{"name": "transfer", "description": "Move \\ud800 money",'
        ' "inputSchema": {"type": "object", "properties": {"m\\udfff": {"type": "string"}}}}'
    )
    tool = parse_tool(entry)
    [seen] = await a.observe("pay", [tool], complete=True)
    assert seen.change is Change.ADDED
    found = await b.lookup("pay", "transfer")
    assert found is not None
    assert found.pinned == tool
