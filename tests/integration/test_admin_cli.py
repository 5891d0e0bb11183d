"""`mcp-authz approvals|usage|counters|policy-status` against a real admin server, and the
admin API's start-up checks and TLS (with certificates made by openssl for the test)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.admin.server import AdminServicer, AdminTls, AdminTokens, create_admin_server
from authz.cli import main
from authz.limits.base import CounterKey, Hit
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.policy.load import parse_policy
from authz.policy.reload import PolicyHolder
from authz.runner import Gateway
from authz.settings import Settings
from tests.unit.support import Gate

POLICY = {
    "version": "1",
    "tools": {
        "withdraw": {
            "action": "approve",
            "reason": "Withdrawals need a person",
            "approval": {"approvers": ["alice"]},
            "limits": [{"counter": "w", "window": 60, "max": 5, "scope": "grant"}],
        },
    },
}
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
UNKNOWN = "not-a-known-token-at-all"


@dataclass
class Cli:
    gate: Gate
    address: str
    tmp: Path

    def token(self, token: str) -> Path:
        path = self.tmp / f"token-{token[:3]}"
        path.write_text(token + "\n")
        return path

    async def __call__(
        self, capsys: pytest.CaptureFixture[str], *argv: str, token: str = ALICE
    ) -> tuple[int, str, str]:
        common = ["--admin-address", self.address, "--admin-token-file", str(self.token(token))]
        # The CLI's client is synchronous: run it off the loop the server is on.
        code = await asyncio.to_thread(main, [*argv, *common])
        out, err = capsys.readouterr()
        return code, out, err


def write_tokens(tmp: Path) -> Path:
    path = tmp / "tokens"
    path.write_text(f"{ALICE} alice\n{BOB} bob\n")
    return path


def admin_of(tmp_path: Path) -> tuple[Gate, AdminServicer]:
    """The decision core on POLICY and an admin servicer over its stores."""
    policy = parse_policy(yaml.safe_dump(POLICY).encode(), "policy.yaml")
    gate = Gate(policy)
    servicer = AdminServicer(
        AdminTokens.load(write_tokens(tmp_path)),
        gate.approvals,
        gate.decider._store,
        PolicyHolder(policy),
        AuditLog(None, ArgumentAudit(b"k" * 32)),
    )
    return gate, servicer


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    gate, servicer = admin_of(tmp_path)
    server, port = await create_admin_server("127.0.0.1:0", servicer)
    yield Cli(gate, f"127.0.0.1:{port}", tmp_path)
    await server.stop(None)


async def ask(cli: Cli, amount: int = 900) -> str:
    outcome = await cli.gate("withdraw", amount=amount)
    assert outcome.approval is not None
    return outcome.approval.id


async def test_list_show_approve(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await cli(capsys, "approvals", "list")
    assert (code, out) == (0, "no approval requests pending\n")
    approval_id = await ask(cli)
    code, out, _ = await cli(capsys, "approvals", "list")
    assert code == 0
    assert out.startswith(f"{approval_id}  withdraw  by agent  expires ")
    assert out.rstrip().endswith('{"amount": 900}')
    code, out, _ = await cli(capsys, "approvals", "show", approval_id)
    assert out.splitlines()[0] == f"{approval_id}: pending"
    assert "  approvers:  alice" in out
    code, out, _ = await cli(capsys, "approvals", "approve", approval_id, "--note", "fine")
    assert code == 0
    assert f"{approval_id}: approved" in out
    assert "decided by: alice" in out
    assert (await cli.gate("withdraw", amount=900)).allowed


async def test_list_pages_through_every_request(
    cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = {await ask(cli, amount) for amount in (901, 902, 903)}
    code, out, _ = await cli(capsys, "approvals", "list", "--page-size", "1")
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()} == asked
    code, out, _ = await cli(capsys, "approvals", "list", "--page-size", "2", "--json")
    assert {a["id"] for a in json.loads(out)["approvals"]} == asked


async def test_json_output(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    approval_id = await ask(cli, 2**60)
    code, out, _ = await cli(capsys, "approvals", "list", "--json")
    assert code == 0
    (listed,) = json.loads(out)["approvals"]
    assert listed["id"] == approval_id
    assert listed["status"] == "APPROVAL_STATUS_PENDING"
    assert listed["arguments"] == {"amount": 2**60}
    code, out, _ = await cli(capsys, "approvals", "deny", approval_id, "--json")
    assert json.loads(out)["decided_by"] == "alice"


async def test_refusals_exit_non_zero_with_the_reason(
    cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    approval_id = await ask(cli)
    code, out, err = await cli(capsys, "approvals", "approve", approval_id, token=BOB)
    assert (code, out) == (1, "")
    assert err.startswith("mcp-authz: PERMISSION_DENIED: bob may not decide")
    code, _, err = await cli(capsys, "approvals", "list", token=UNKNOWN)
    assert code == 1
    assert "UNAUTHENTICATED" in err
    code, _, err = await cli(capsys, "approvals", "show", "apr_gone")
    assert (code, err.split(":")[1].strip()) == (1, "NOT_FOUND")
    code = await asyncio.to_thread(main, ["approvals", "list", "--admin-address", cli.address])
    assert code == 2
    assert "--admin-token-file" in capsys.readouterr().err


async def test_usage_and_reset(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    store = cli.gate.decider._store
    await store.hit([Hit(CounterKey("w", "grant", ("default", "agent")), 5, 60, 3)])
    subject = ["--counter", "w", "--scope", "grant", "--subject", "default", "agent"]
    code, out, _ = await cli(capsys, "usage", *subject)
    assert (code, out) == (0, "w (grant: default agent): 3 of 5 used per 60s, 2 left; fits now\n")
    code, out, _ = await cli(capsys, "counters", "reset", *subject, "--json")
    assert json.loads(out)["remaining"] == "5"  # int64 is a string in proto3 JSON
    code, _, err = await cli(capsys, "usage", "--counter", "w", "--subject", "agent")
    assert code == 1
    assert "INVALID_ARGUMENT" in err
    assert "its subject is GRANT IDENTITY" in err


async def test_policy_status(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await cli(capsys, "policy-status")
    assert code == 0
    assert out.startswith("policy policy.yaml (sha256:")


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"admin_listen": "127.0.0.1:0"}, "needs --admin-tokens-file"),
        ({"admin_listen": "0.0.0.0:0"}, "needs --admin-tokens-file"),
        (
            {"admin_listen": "127.0.0.1:0", "admin_tls_cert": Path("c.pem"), "tokens": True},
            "--admin-tls-cert and --admin-tls-key together",
        ),
        ({"approval_webhook": "file:///etc/passwd"}, "not an http:// or https:// URL"),
    ],
)
def test_misconfiguration_stops_start_up(
    tmp_path: Path, options: dict[str, Any], problem: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    if options.pop("tokens", False):
        options["admin_tokens_file"] = write_tokens(tmp_path)
    with pytest.raises(ValueError, match=problem):
        Gateway.build(Settings(policy=policy, audit_log="off", **options))


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> None:
    """A CA, a server certificate for localhost and a client certificate, all from it."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "1", "-subj", "/CN=test CA", cwd=d)  # fmt: skip
    for name, extension in (("server", "subjectAltName=DNS:localhost"), ("client", None)):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        ext = ["-extfile", f"{name}.ext"] if extension else []
        if extension:
            (d / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *ext, cwd=d)  # fmt: skip


async def test_mutual_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_certificates(tmp_path)
    gate, servicer = admin_of(tmp_path)
    tls = AdminTls(tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem")
    server, port = await create_admin_server("localhost:0", servicer, tls)
    try:
        cli = Cli(gate, f"localhost:{port}", tmp_path)
        ca = ["--admin-ca-file", str(tmp_path / "ca.pem")]
        client = ["--admin-client-cert", str(tmp_path / "client.pem"),
                  "--admin-client-key", str(tmp_path / "client.key")]  # fmt: skip
        code, out, _ = await cli(capsys, "approvals", "list", *ca, *client)
        assert (code, out) == (0, "no approval requests pending\n")
        # Without a client certificate the handshake fails: no token is even read.
        code, _, err = await cli(capsys, "approvals", "list", *ca)
        assert code == 1
        assert "UNAVAILABLE" in err
        code, _, err = await cli(capsys, "approvals", "list")
        assert code == 1
        assert "UNAVAILABLE" in err
    finally:
        await server.stop(None)


async def test_tls_files_that_cannot_be_read_stop_start_up(tmp_path: Path) -> None:
    tls = AdminTls(tmp_path / "missing.pem", tmp_path / "missing.key")
    with pytest.raises(ValueError, match="cannot read the admin TLS files"):
        tls.credentials()
