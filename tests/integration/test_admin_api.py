"""The admin gRPC API on a real server (port 0), driven through the generated client stub.

Approval requests are made by the real decision core, as an agent's call would make them;
tokens come from a real tokens file; every call is checked in the audit log and its span.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import authz
from authz._gen.mcpauthz.admin.v1 import admin_pb2 as pb
from authz._gen.mcpauthz.admin.v1 import admin_pb2_grpc
from authz.admin.server import AdminServicer, AdminTokens, create_admin_server
from authz.limits.base import CounterKey, Hit
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.observe.metrics import Metrics
from authz.observe.telemetry import Telemetry
from authz.policy.load import PolicyError, parse_policy
from authz.policy.reader import Problem
from authz.policy.reload import PolicyHolder
from tests.unit.support import Gate

POLICY = {
    "version": "1",
    "tools": {
        "withdraw": {
            "action": "approve",
            "reason": "Withdrawals need a person",
            "approval": {"approvers": ["alice"], "approver_claims": {"groups": ["treasury"]}},
            "limits": [{"counter": "withdrawals", "window": 60, "max": 3, "scope": "identity"}],
        },
        "delete_account": {"action": "approve"},
    },
}
TOKENS = {
    "alice": "alice-token-0123456789abcdef",
    "bob": "bob-token-0123456789abcdef",
    "carol": "carol-token-0123456789abcdef",
    "agent": "agent-token-0123456789abcdef",
}
NOW = 1_800_000_000.0


@dataclass
class Admin:
    stub: Any
    gate: Gate
    audit: io.StringIO
    spans: InMemorySpanExporter
    holder: PolicyHolder

    async def call(self, method: str, request: Any, who: str | None = "alice") -> Any:
        metadata = () if who is None else (("authorization", f"Bearer {TOKENS[who]}"),)
        return await getattr(self.stub, method)(request, metadata=metadata)

    def audited(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.audit.getvalue().splitlines()]
        return [line for line in lines if "admin_action" in line]

    async def ask(self, tool: str = "withdraw", **args: Any) -> str:
        outcome = await self.gate(tool, **args)
        assert outcome.approval is not None
        return outcome.approval.id


def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-tokens"
    path.write_text(
        "# token identity [claims]\n"
        f"{TOKENS['alice']} alice\n"
        f"{TOKENS['bob']}   bob  groups=eng\n"
        f"{TOKENS['carol']} carol groups=eng,groups=treasury\n"
        "\n"
        f"{TOKENS['agent']} agent groups=treasury\n"
    )
    return path


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    policy = parse_policy(yaml.safe_dump(POLICY).encode(), "policy.yaml")
    gate = Gate(policy, now=NOW)
    holder = PolicyHolder(policy)
    audit = io.StringIO()
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(tracers.get_tracer("test"), Metrics(MeterProvider().get_meter("t")))
    servicer = AdminServicer(
        AdminTokens.load(tokens_file(tmp_path)),
        gate.approvals,
        gate.decider._store,  # the counters the gate's decisions draw on
        holder,
        AuditLog(audit, ArgumentAudit(b"k" * 32)),
        telemetry=telemetry,
    )
    server, port = await create_admin_server("127.0.0.1:0", servicer)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Admin(admin_pb2_grpc.AdminServiceStub(channel), gate, audit, spans, holder)
    await server.stop(None)


async def refused(admin: Admin, method: str, request: Any, who: str | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.call(method, request, who)
    return info.value.code()


async def test_calls_without_a_known_token_are_refused_and_audited(admin: Admin) -> None:
    approval_id = await admin.ask(amount=900)
    request = pb.DecideRequest(id=approval_id)
    assert await refused(admin, "Approve", request, None) == grpc.StatusCode.UNAUTHENTICATED
    for header in (f"Basic {TOKENS['alice']}", "Bearer wrong-token-0123456789abcdef", "Bearer"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.stub.Approve(request, metadata=(("authorization", header),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "admin token is required" in str(info.value.details())
    assert [(a["identity"], a["result"]) for a in admin.audited()] == [
        (None, "unauthenticated")
    ] * 4
    # Nothing was decided.
    listed = await admin.call("ListApprovals", pb.ListApprovalsRequest())
    assert [a.id for a in listed.approvals] == [approval_id]


async def test_list_and_show_pending_requests(admin: Admin) -> None:
    first = await admin.ask(amount=900, to="acct-ü")
    second = await admin.ask("delete_account", id="a1")
    listed = await admin.call("ListApprovals", pb.ListApprovalsRequest(), who="bob")
    assert {a.id for a in listed.approvals} == {first, second}
    shown = await admin.call("GetApproval", pb.GetApprovalRequest(id=first), who="bob")
    assert shown.status == pb.APPROVAL_STATUS_PENDING
    assert (shown.identity, shown.tool, shown.rule) == ("agent", "withdraw", "/tools/withdraw")
    assert json.loads(shown.arguments_json) == {"amount": 900, "to": "acct-ü"}
    assert list(shown.approvers) == ["alice"]
    assert json.loads(shown.approver_claims_json) == {"groups": ["treasury"]}
    assert shown.expires_at.seconds == int(NOW) + 900
    assert shown.decided_by == ""
    assert [a["admin_action"] for a in admin.audited()] == ["list_approvals", "get_approval"]
    assert admin.audited()[1] | {"time": None, "trace_id": None, "span_id": None} == {
        "schema": "mcp-authz.audit/1",
        "version": authz.__version__,
        "time": None,
        "admin_action": "get_approval",
        "trace_id": None,
        "span_id": None,
        "identity": "bob",
        "target": first,
        "result": "ok",
        "note": None,
    }


async def test_the_listing_is_paged(admin: Admin) -> None:
    asked = {await admin.ask(amount=amount) for amount in (901, 902, 903)}
    first = await admin.call("ListApprovals", pb.ListApprovalsRequest(page_size=2))
    assert len(first.approvals) == 2
    assert first.next_page_token
    rest = await admin.call(
        "ListApprovals", pb.ListApprovalsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert rest.next_page_token == ""
    assert {a.id for a in [*first.approvals, *rest.approvals]} == asked
    # Past the maximum is read as the maximum; a bad size or token is the caller's error.
    everything = await admin.call("ListApprovals", pb.ListApprovalsRequest(page_size=10**9))
    assert len(everything.approvals) == 3
    for bad in (
        pb.ListApprovalsRequest(page_size=-1),
        pb.ListApprovalsRequest(page_token="x"),  # noqa: S106 - a page token, not a secret
    ):
        code = await refused(admin, "ListApprovals", bad, "alice")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [a["result"] for a in admin.audited()][-2:] == ["invalid_argument"] * 2


async def test_approve_lets_the_exact_call_through_once(admin: Admin) -> None:
    approval_id = await admin.ask(amount=900)
    approved = await admin.call("Approve", pb.DecideRequest(id=approval_id, note="ok by phone"))
    assert approved.status == pb.APPROVAL_STATUS_APPROVED
    assert approved.decided_by == "alice"
    assert (await admin.gate("withdraw", amount=900)).allowed
    assert not (await admin.gate("withdraw", amount=900)).allowed
    again = await refused(admin, "Approve", pb.DecideRequest(id=approval_id), "alice")
    assert again == grpc.StatusCode.NOT_FOUND
    line = admin.audited()[0]
    assert (line["admin_action"], line["identity"], line["target"]) == (
        "approve",
        "alice",
        approval_id,
    )
    assert (line["result"], line["note"]) == ("ok", "ok by phone")
    assert admin.audited()[1]["result"] == "not_found"


async def test_only_the_rules_approvers_may_decide(admin: Admin) -> None:
    approval_id = await admin.ask(amount=900)
    request = pb.DecideRequest(id=approval_id)
    assert await refused(admin, "Approve", request, "bob") == grpc.StatusCode.PERMISSION_DENIED
    assert await refused(admin, "Deny", request, "bob") == grpc.StatusCode.PERMISSION_DENIED
    # The agent that asked holds a qualifying claim, but never decides its own call.
    assert await refused(admin, "Approve", request, "agent") == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.call("Approve", request, "bob")
    assert "rule /tools/withdraw names alice, groups=treasury" in str(info.value.details())
    # A claim the rule names qualifies.
    approved = await admin.call("Approve", request, who="carol")
    assert approved.decided_by == "carol"
    results = [(a["admin_action"], a["identity"], a["result"]) for a in admin.audited()]
    assert results == [
        ("approve", "bob", "permission_denied"),
        ("deny", "bob", "permission_denied"),
        ("approve", "agent", "permission_denied"),
        ("approve", "bob", "permission_denied"),
        ("approve", "carol", "ok"),
    ]


async def test_deny_refuses_the_call_and_decisions_are_final(admin: Admin) -> None:
    approval_id = await admin.ask("delete_account", id="a1")
    denied = await admin.call("Deny", pb.DecideRequest(id=approval_id, note="no"), who="bob")
    assert denied.status == pb.APPROVAL_STATUS_DENIED
    outcome = await admin.gate("delete_account", id="a1")
    assert outcome.refusal is not None
    assert outcome.refusal.label == "approval_denied"
    late = await refused(admin, "Approve", pb.DecideRequest(id=approval_id), "alice")
    assert late == grpc.StatusCode.FAILED_PRECONDITION
    assert admin.audited()[0]["note"] == "no"
    unknown = await refused(admin, "GetApproval", pb.GetApprovalRequest(id="apr_nope"), "alice")
    assert unknown == grpc.StatusCode.NOT_FOUND


async def test_usage_and_reset_of_a_budget(admin: Admin) -> None:
    # Approval-gated calls count only when they pass: spend the budget directly.
    store = admin.gate.decider._store
    await store.hit([Hit(CounterKey("withdrawals", "identity", ("agent",)), 3, 60, 2)])
    request = pb.CounterRequest(counter="withdrawals", subject=["agent"])
    usage = await admin.call("GetUsage", request, who="bob")
    assert (usage.used, usage.remaining, usage.limit, usage.window_seconds) == (2, 1, 3, 60)
    assert (usage.scope, list(usage.subject)) == ("identity", ["agent"])
    reset = await admin.call("ResetCounter", request)
    assert (reset.used, reset.remaining) == (0, 3)
    bad = [
        (pb.CounterRequest(counter="nope", subject=["agent"]), grpc.StatusCode.NOT_FOUND),
        (pb.CounterRequest(counter="withdrawals"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.CounterRequest(counter="withdrawals", scope="grant", subject=["agent"]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for wrong, code in bad:
        assert await refused(admin, "GetUsage", wrong, "alice") == code
    targets = [(a["admin_action"], a["target"], a["result"]) for a in admin.audited()]
    assert targets[:2] == [
        ("get_usage", '["withdrawals", "", "agent"]', "ok"),
        ("reset_counter", '["withdrawals", "", "agent"]', "ok"),
    ]


async def test_policy_status_reports_the_last_reload(admin: Admin) -> None:
    status = await admin.call("GetPolicyStatus", pb.GetPolicyStatusRequest())
    assert status.version == admin.holder.current.version
    assert status.source == "policy.yaml"
    assert not status.reload_failed
    admin.holder.last_error = PolicyError(
        "policy.yaml", [Problem("$.tools.x.action", 'expected "allow", "deny" or "approve"')]
    )
    status = await admin.call("GetPolicyStatus", pb.GetPolicyStatusRequest())
    assert status.reload_failed
    assert list(status.reload_errors) == ['$.tools.x.action: expected "allow", "deny" or "approve"']


async def test_every_admin_call_is_a_span_named_in_its_audit_line(admin: Admin) -> None:
    approval_id = await admin.ask(amount=900)
    await admin.call("Approve", pb.DecideRequest(id=approval_id))
    await refused(admin, "Deny", pb.DecideRequest(id=approval_id), None)
    spans = admin.spans.get_finished_spans()
    assert [s.name for s in spans] == [
        "mcpauthz.admin.v1.AdminService/approve",
        "mcpauthz.admin.v1.AdminService/deny",
    ]
    assert spans[1].attributes is not None
    assert spans[1].attributes["mcp_authz.admin.result"] == "unauthenticated"
    for span, line in zip(spans, admin.audited(), strict=True):
        assert line["trace_id"] == format(span.context.trace_id, "032x")
        assert line["span_id"] == format(span.context.span_id, "016x")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no tokens"),
        ("short alice\n", ":1: the token is shorter than 16 characters"),
        ("# c\n0123456789abcdefXX\n", ":2: expected TOKEN IDENTITY"),
        ("0123456789abcdefXX alice groups\n", "claim 'groups' is not claim=value"),
        ("0123456789abcdefXX alice\n0123456789abcdefXX bob\n", ":2: this token is already"),
    ],
)
def test_tokens_file_problems_stop_start_up(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        AdminTokens.load(path)
    with pytest.raises(ValueError, match="cannot read the admin tokens file"):
        AdminTokens.load(tmp_path / "missing")
