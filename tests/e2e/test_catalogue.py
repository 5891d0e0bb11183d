"""The tool catalogue through real Envoy (ext_authz and ext_proc) with the official SDK clients.

A demo MCP server of this test's own is swapped under the running gateway for one that lists
`echo` with a malicious description (`--rug-pull`): the gateway, which pinned the honest
definition from the first `tools/list`, hides the swapped tool from the list and refuses its
calls (-32008) for the Python and the TypeScript client alike, until an operator accepts the new
fingerprint with `mcp-authz tools accept`. Arguments a lax server would coerce are refused with
their JSON path (-32009), and a tool its own annotations call destructive waits for approval
because of its class.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError

# examples/ is on the path (tests/e2e/conftest.py): the launcher `make run` uses.
from stack import Ports, Process, start_authz, start_demo_server, start_envoy

from authz.cli import main
from tests.conftest import free_port
from tests.e2e.conftest import PROCESSES, TS_CLIENT_DIR
from tests.e2e.test_typescript_sdk import run_client

pytestmark = pytest.mark.e2e

TOOL_CHANGED, INVALID_ARGUMENTS, APPROVAL_REQUIRED = -32008, -32009, -32005
OPERATOR = "catalogue-e2e-admin-token-0123456789"
POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {"transfer_funds": {}},
    "risk": {
        "read": {},
        "destructive": {"action": "approve", "reason": "destructive tools need a person"},
    },
    # The demo server is ours: its annotations are taken as they are.
    "catalogue": {"upstreams": {"default": {"trusted": True}}},
}


@dataclass
class Stack:
    url: str
    ports: Ports
    tmp: Path
    processes: list[Process]
    exits: ExitStack
    admin: str

    def upstream(self, *options: str) -> None:
        """(Re)start the MCP server behind the running gateway, with `options`."""
        for process in [p for p in self.processes if p.name == "demo MCP server"]:
            process.stop()
            self.processes.remove(process)
        log = self.tmp / f"demo-{len(self.processes)}.log"
        server = self.exits.enter_context(start_demo_server(self.ports, log, None, *options))
        self.processes.append(server)

    async def cli(self, *argv: str) -> int:
        """`mcp-authz ARGV --json` against the gateway's admin API, as an operator runs it."""
        token = self.tmp / "admin-token"
        token.write_text(OPERATOR + "\n")
        common = ["--admin-address", self.admin, "--admin-token-file", str(token)]
        return await asyncio.to_thread(main, [*argv, *common, "--json"])


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, transport: str) -> Iterator[Stack]:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(f"{OPERATOR} ops\n")
    ports = Ports.free()
    # Asked for apart from the stack's, so the kernel may hand out one of theirs again.
    taken = {ports.mcp_server, ports.authz, ports.envoy, ports.admin, ports.health, ports.extproc}
    admin = f"127.0.0.1:{next(p for p in iter(free_port, None) if p not in taken)}"
    processes: list[Process] = []
    request.node.stash[PROCESSES] = processes
    with ExitStack() as exits:
        found = Stack(ports.mcp_url, ports, tmp_path, processes, exits, admin)
        found.upstream()
        options = ("--catalogue", "on", "--admin-listen", admin, "--admin-tokens-file", str(tokens))
        authz = exits.enter_context(
            start_authz(ports, policy, tmp_path / "authz.log", *options, transport=transport)
        )
        processes.append(authz)
        envoy = exits.enter_context(
            start_envoy(ports, tmp_path, tmp_path / "envoy.log", transport=transport)
        )
        processes.append(envoy)
        yield found


def data_of(error: MCPError) -> dict[str, Any]:
    data = error.error.data
    assert isinstance(data, dict), error.error
    assert data["reason"] in error.error.message
    return data


async def names(client: Client) -> list[str]:
    listing = await client.list_tools(cache_mode="bypass")
    return sorted(tool.name for tool in listing.tools)


async def test_a_definition_swapped_under_the_gateway_is_refused_until_accepted(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Client(stack.url, mode="legacy") as client:
        assert "echo" in await names(client)
        result = await client.call_tool("echo", {"text": "hi"})
        assert not result.is_error
    stack.upstream("--rug-pull")
    async with Client(stack.url, mode="legacy") as client:
        # The swapped description never reaches the agent: the tool is left out of its list.
        assert "echo" not in await names(client)
        with pytest.raises(MCPError) as refused:
            await client.call_tool("echo", {"text": "hi"})
        assert refused.value.code == TOOL_CHANGED
        data = data_of(refused.value)
        assert data["tool"] == "echo"
        assert data["pinned_fingerprint"] != data["offered_fingerprint"]
        offered = data["offered_fingerprint"]
    # The TypeScript client (2025-11-25 sessions over SSE) gets the same refusal.
    report = run_client(TS_CLIENT_DIR / "client.mjs", stack.url, "echo:1")
    [call] = report["calls"]
    assert not call["ok"]
    assert call["error"]["code"] == TOOL_CHANGED
    # An operator reviews and accepts exactly the offered definition.
    capsys.readouterr()
    assert await stack.cli("tools", "show", "echo") == 0
    [shown] = json.loads(capsys.readouterr().out)["tools"]
    assert shown["pending_fingerprint"] == offered
    assert "id_rsa" in shown["pending"]["description"]
    assert await stack.cli("tools", "accept", "echo", offered, "--note", "e2e") == 0
    async with Client(stack.url, mode="legacy") as client:
        assert "echo" in await names(client)
        result = await client.call_tool("echo", {"text": "hi"})
        assert not result.is_error


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_coerced_type_is_refused_with_its_path(stack: Stack, mode: str) -> None:
    async with Client(stack.url, mode=mode) as client:
        assert "transfer_funds" in await names(client)
        with pytest.raises(MCPError) as refused:
            # The server's pydantic would read "5" as 5.0; the schema says number.
            await client.call_tool("transfer_funds", {"amount": "5", "to": "mallory"})
        assert refused.value.code == INVALID_ARGUMENTS
        data = data_of(refused.value)
        assert data["path"] == "$.amount"
        assert "$.amount" in refused.value.error.message
        # The same call with a number passes the schema and meets the next rule: unannotated,
        # transfer_funds is destructive, so it waits for a person (nothing was counted before).
        with pytest.raises(MCPError) as held:
            await client.call_tool("transfer_funds", {"amount": 5, "to": "mallory"})
        assert held.value.code == APPROVAL_REQUIRED


async def test_a_destructive_tool_waits_for_approval_by_its_class(stack: Stack) -> None:
    async with Client(stack.url, mode="legacy") as client:
        listed = await names(client)
        # Approval-gated tools stay in the list; the read one is allowed by its class.
        assert {"echo", "transfer_funds", "close_account"} <= set(listed)
        assert "binance_us_create_listen_key" in listed  # destructive, unannotated: gated too
        with pytest.raises(MCPError) as refused:
            await client.call_tool("close_account", {"account": "acct-1"})
        assert refused.value.code == APPROVAL_REQUIRED
        data = data_of(refused.value)
        assert data["rule"] == "/risk/destructive"
        assert data["risk"] == "destructive"
        result = await client.call_tool("echo", {"text": "still usable"})
        assert not result.is_error


def test_make_runs_demo_pins_the_tools_before_its_first_call(gateway_for: Any) -> None:
    """`make run` serves with --catalogue on and lists the tools once at start-up
    (run_demo.pin_tools), so the curl it prints, a tools/call with no tools/list before it,
    is judged instead of refused as a tool never listed."""
    from run_demo import pin_tools  # noqa: PLC0415 - examples/, on sys.path
    from stack import SEED_POLICY  # noqa: PLC0415

    async def call_without_listing(url: str) -> str | None:
        """The refusal's message, or None when the call went through."""
        async with Client(url, mode="legacy") as client:
            try:
                result = await client.call_tool("binance_us_create_listen_key")
            except MCPError as e:
                return e.error.message
            assert not result.is_error
            return None

    with gateway_for(SEED_POLICY, "--catalogue", "on") as url:
        refused = asyncio.run(call_without_listing(url))
        assert refused is not None
        assert "never listed" in refused
        assert asyncio.run(pin_tools(url)) == ["binance_us_create_listen_key"]
        assert asyncio.run(call_without_listing(url)) is None
