"""Require approval end to end: the official Python SDK client through Envoy, mcp-authz with
its approvals in a real Redis, the admin API driven by the `mcp-authz approvals` CLI, and
the webhook POSTing to a real HTTP server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from mcp import Client, MCPError
from stack import executable

from authz._gen.mcpauthz.admin.v1 import admin_pb2 as pb
from authz._gen.mcpauthz.admin.v1 import admin_pb2_grpc
from tests.conftest import RedisServer, free_port
from tests.e2e.conftest import GatewayFactory

pytestmark = pytest.mark.e2e

POLICY = Path(__file__).parent / "policies" / "approvals.yaml"
APPROVAL_REQUIRED = -32005
APPROVAL_DENIED = -32006
ALICE = "alice-admin-token-0123456789"
BOB = "bob-admin-token-0123456789"
EXPIRY_TIMEOUT = 10.0


class Webhook:
    """A real HTTP server keeping the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/approvals"

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + EXPIRY_TIMEOUT
        while len(self.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.bodies


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    thread = threading.Thread(target=hook.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()
    thread.join()


class Admin:
    def __init__(self, tmp: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.tokens = tmp / "admin-tokens"
        self.tokens.write_text(f"{ALICE} alice\n{BOB} bob\n")
        self.token_files = {}
        for name, token in (("alice", ALICE), ("bob", BOB)):
            path = tmp / f"{name}.token"
            path.write_text(token + "\n")
            self.token_files[name] = path

    def serve_flags(self) -> list[str]:
        return ["--admin-listen", self.address, "--admin-tokens-file", str(self.tokens)]

    def cli(self, *argv: str, who: str = "alice") -> subprocess.CompletedProcess[str]:
        """`mcp-authz ARGV` as an operator would run it, the token file from the environment."""
        env = {
            "MCP_AUTHZ_ADMIN_ADDRESS": self.address,
            "MCP_AUTHZ_ADMIN_TOKEN_FILE": str(self.token_files[who]),
            "PATH": str(Path(executable("mcp-authz")).parent),
        }
        return subprocess.run(
            [executable("mcp-authz"), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def approve_now(self, approval_id: str) -> None:
        """Approve in-process: the two-second lifetime leaves no room for a CLI start-up."""
        with grpc.insecure_channel(self.address) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            stub.Approve(
                pb.DecideRequest(id=approval_id),
                metadata=(("authorization", f"Bearer {ALICE}"),),
                timeout=5,
            )

    def gone(self, approval_id: str) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            try:
                stub.GetApproval(
                    pb.GetApprovalRequest(id=approval_id),
                    metadata=(("authorization", f"Bearer {ALICE}"),),
                    timeout=5,
                )
            except grpc.RpcError as e:
                return isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND
        return False


async def refused(client: Client, tool: str, arguments: dict[str, Any]) -> MCPError:
    with pytest.raises(MCPError) as info:
        await client.call_tool(tool, arguments)
    return info.value


async def transfer(client: Client, amount: int) -> None:
    result = await client.call_tool("transfer_funds", {"amount": amount, "to": "acct-1"})
    assert not result.is_error, result


async def test_approve_from_the_cli_then_the_call_passes_exactly_once(
    gateway_for: GatewayFactory, own_redis: RedisServer, tmp_path: Path, webhook: Webhook
) -> None:
    admin = Admin(tmp_path)
    audit = tmp_path / "audit.jsonl"
    flags = ["--redis-url", own_redis.url, "--audit-log", str(audit), *admin.serve_flags()]
    with gateway_for(POLICY, *flags, "--approval-webhook", webhook.url) as url:
        async with Client(url) as client:
            await transfer(client, 50)  # under the threshold: no approval needed
            asked = await refused(client, "transfer_funds", {"amount": 500, "to": "acct-1"})
            assert asked.code == APPROVAL_REQUIRED
            data = asked.error.data
            assert isinstance(data, dict)
            approval_id = data["approval_id"]
            assert approval_id.startswith("apr_")
            assert approval_id in asked.error.message
            assert "Transfers over 100 need a person" in asked.error.message
            assert data["approval_status"] == "pending"
            assert data["approval_expires_at"] > time.time() + 200
            # Asking again while pending is the same request.
            again = await refused(client, "transfer_funds", {"amount": 500, "to": "acct-1"})
            assert again.error.data["approval_id"] == approval_id

            listed = admin.cli("approvals", "list")
            assert listed.returncode == 0, listed.stderr
            assert approval_id in listed.stdout
            # bob is not among the rule's approvers.
            bob = admin.cli("approvals", "approve", approval_id, who="bob")
            assert bob.returncode == 1
            assert "PERMISSION_DENIED" in bob.stderr
            approved = admin.cli("approvals", "approve", approval_id, "--note", "checked")
            assert approved.returncode == 0, approved.stderr
            assert f"{approval_id}: approved" in approved.stdout

            # Another amount is another call: the approval does not cover it.
            other = await refused(client, "transfer_funds", {"amount": 501, "to": "acct-1"})
            assert other.code == APPROVAL_REQUIRED
            assert other.error.data["approval_id"] != approval_id
            # The approved call passes, once.
            await transfer(client, 500)
            replay = await refused(client, "transfer_funds", {"amount": 500, "to": "acct-1"})
            assert replay.code == APPROVAL_REQUIRED
            assert replay.error.data["approval_id"] not in (
                approval_id,
                other.error.data["approval_id"],
            )
            # A denied request refuses with its state.
            denied_id = other.error.data["approval_id"]
            denied = admin.cli("approvals", "deny", denied_id, "--note", "too much")
            assert denied.returncode == 0, denied.stderr
            refusal = await refused(client, "transfer_funds", {"amount": 501, "to": "acct-1"})
            assert refusal.code == APPROVAL_DENIED
            assert "was denied by alice" in refusal.error.message
            # The session stays usable.
            await transfer(client, 1)

    hooks = webhook.wait_for(3)
    assert [h["id"] for h in hooks] == [
        approval_id,
        other.error.data["approval_id"],
        replay.error.data["approval_id"],
    ]
    assert hooks[0]["arguments"] == {"amount": 500, "to": "acct-1"}
    assert (hooks[0]["identity"], hooks[0]["approvers"]) == ("anonymous", ["alice"])
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    actions = [
        (a["admin_action"], a["identity"], a["target"], a["result"], a["note"])
        for a in lines
        if "admin_action" in a
    ]
    assert actions == [
        ("list_approvals", "alice", "", "ok", None),
        ("approve", "bob", approval_id, "permission_denied", None),
        ("approve", "alice", approval_id, "ok", "checked"),
        ("deny", "alice", denied_id, "ok", "too much"),
    ]


async def test_an_expired_approval_refuses(
    gateway_for: GatewayFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    admin = Admin(tmp_path)
    flags = ["--redis-url", own_redis.url, "--audit-log", "off", *admin.serve_flags()]
    with gateway_for(POLICY, *flags) as url:
        async with Client(url) as client:
            asked = await refused(client, "echo", {"text": "hi"})
            assert asked.code == APPROVAL_REQUIRED
            approval_id = asked.error.data["approval_id"]
            admin.approve_now(approval_id)
            # Redis expires the approval with its request, two seconds after it was asked.
            deadline = time.monotonic() + EXPIRY_TIMEOUT
            while not admin.gone(approval_id):
                assert time.monotonic() < deadline, "the approval never expired"
                await asyncio.sleep(0.05)
            late = await refused(client, "echo", {"text": "hi"})
            assert late.code == APPROVAL_REQUIRED
            assert late.error.data["approval_id"] != approval_id
            unknown = admin.cli("approvals", "approve", approval_id)
            assert unknown.returncode == 1
            assert "NOT_FOUND" in unknown.stderr
