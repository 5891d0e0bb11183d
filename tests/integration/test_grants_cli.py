"""`mcp-authz grants create|list|rotate|revoke` against a real admin server, and the tokens it
prints deciding real requests through the decision core (identity source `token`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authz.admin.server import AdminServicer, AdminTokens, create_admin_server
from authz.approvals.memory import MemoryApprovals
from authz.cli import main
from authz.core.decision import Decider
from authz.core.grant_identity import GrantIdentity
from authz.core.reply import reply_for
from authz.grants.base import GrantKey, Grants
from authz.grants.file import FileGrants
from authz.limits.memory import MemoryStore
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.policy.load import load_policy
from authz.policy.reload import PolicyHolder
from authz.protocol.errors import Refusal
from authz.protocol.identity import Anonymous
from authz.protocol.request import HttpRequest

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"
TOOL = "binance_us_create_listen_key"
ADMIN = "admin-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abcdef"


@dataclass
class World:
    address: str
    tmp: Path
    decider: Decider
    now: list[float]

    async def cli(self, capsys: pytest.CaptureFixture[str], *argv: str, token: str = ADMIN):
        path = self.tmp / f"t-{token[:5]}"
        path.write_text(token)
        common = ["--admin-address", self.address, "--admin-token-file", str(path)]
        code = await asyncio.to_thread(main, [*argv, *common])
        out, err = capsys.readouterr()
        return code, out, err

    async def call(self, token: str | None, tool: str = TOOL):
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
        headers = {"content-type": "application/json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        request = HttpRequest("POST", "/mcp", headers, json.dumps(body).encode())
        return await self.decider.decide(request)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    policy = load_policy(SEED)
    now = [0.0]
    grants = Grants(FileGrants(tmp_path / "grants.json"), GrantKey(b"g" * 32))
    store = MemoryStore(lambda: now[0])
    approvals = MemoryApprovals(lambda: now[0])
    decider = Decider(
        lambda: policy, Anonymous(), store, approvals=approvals, grants=GrantIdentity(grants)
    )
    (tmp_path / "tokens").write_text(f"{ADMIN} root\n{VIEWER} eve role=viewer\n")
    servicer = AdminServicer(
        AdminTokens.load(tmp_path / "tokens"),
        approvals,
        store,
        PolicyHolder(policy),
        AuditLog(None, ArgumentAudit(b"k" * 32)),
        grants=grants,
    )
    server, port = await create_admin_server("127.0.0.1:0", servicer)
    yield World(f"127.0.0.1:{port}", tmp_path, decider, now)
    await server.stop(None)


def token_of(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("mcpa_"))


async def test_each_token_has_its_own_seed_budget(world: World, capsys) -> None:
    code, out, _ = await world.cli(capsys, "grants", "create", "--label", "alice-laptop")
    assert code == 0
    assert "shown once" in out
    alice = token_of(out)
    bob = token_of((await world.cli(capsys, "grants", "create", "--label", "ci-runner"))[1])
    for _ in range(30):
        assert (await world.call(alice)).allowed
    refused = await world.call(alice)
    assert refused.refusal is Refusal.RATE_LIMITED
    assert refused.caller is not None
    assert refused.caller.grant_label == "alice-laptop"
    assert (await world.call(bob)).allowed


async def test_revoked_rotated_unknown_and_missing_tokens_get_401(world: World, capsys) -> None:
    alice = token_of((await world.cli(capsys, "grants", "create", "--label", "alice"))[1])
    assert (await world.call(alice)).allowed
    _, out, _ = await world.cli(capsys, "grants", "rotate", "alice")
    new = token_of(out)
    assert (await world.call(new)).allowed
    await world.cli(capsys, "grants", "revoke", "alice")
    for token in (alice, new, "mcpa_" + "x" * 43, "garbage", None):
        outcome = await world.call(token)
        assert outcome.refusal is Refusal.UNAUTHENTICATED
        reply = reply_for(outcome)
        assert reply.status == 401
        assert ("www-authenticate", 'Bearer realm="mcp-authz"') in reply.headers
        assert json.loads(reply.body)["error"]["code"] == -32003


async def test_list_never_shows_a_token_and_viewers_cannot_manage(world: World, capsys) -> None:
    token = token_of((await world.cli(capsys, "grants", "create", "--label", "bot"))[1])
    code, out, _ = await world.cli(capsys, "grants", "list")
    assert code == 0
    assert out.startswith("bot  (the server's policy; created ")
    assert token not in out
    assert token not in (world.tmp / "grants.json").read_text()
    code, _, err = await world.cli(capsys, "grants", "create", "--label", "x", token=VIEWER)
    assert code == 1
    assert "PERMISSION_DENIED" in err


async def test_a_grant_with_its_own_policy_is_judged_by_it(world: World, capsys) -> None:
    own = world.tmp / "own.json"
    own.write_text('{"version": "1", "default": "deny", "tools": {"only_this": {}}}')
    out = (await world.cli(capsys, "grants", "create", "--label", "b", "--policy", str(own)))[1]
    token = token_of(out)
    assert (await world.call(token, "only_this")).allowed
    assert (await world.call(token)).rule == "(default deny)"
    bad = world.tmp / "bad.json"
    bad.write_text('{"version": "1", "tools": {"t": {"deny_if": 3}}}')
    code, _, err = await world.cli(capsys, "grants", "create", "--label", "c", "--policy", str(bad))
    assert code == 1
    assert "INVALID_ARGUMENT" in err
    assert "$.tools.t.deny_if" in err


async def test_a_taken_label_and_an_unknown_one_are_named(world: World, capsys) -> None:
    await world.cli(capsys, "grants", "create", "--label", "a")
    code, _, err = await world.cli(capsys, "grants", "create", "--label", "a")
    assert (code, "ALREADY_EXISTS" in err) == (1, True)
    code, _, err = await world.cli(capsys, "grants", "revoke", "nobody")
    assert (code, "NOT_FOUND" in err) == (1, True)
