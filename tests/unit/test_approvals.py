"""Require approval: the flow through the decision core with the in-process approval store."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from opentelemetry.trace import INVALID_SPAN_CONTEXT

from authz.approvals.base import ApprovalCaps, ApprovalError, Status, may_approve
from authz.approvals.memory import MemoryApprovals
from authz.core.reply import reply_for
from authz.limits.base import CounterKey, Hit, StoreUnavailable
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.policy.load import PolicyError, parse_policy
from authz.protocol.errors import Refusal
from authz.protocol.request import HttpRequest
from tests.unit.support import IDENTITY_HEADER, Gate

POLICY = {
    "version": "1",
    "tools": {
        "withdraw": {
            "action": "approve",
            "reason": "Withdrawals over 500 need a person",
            "approval": {
                "when": [{"path": "args.amount", "op": "gt", "value": 500}],
                "lifetime": 600,
                "approvers": ["alice"],
                "approver_claims": {"groups": "treasury"},
            },
            "limits": [{"counter": "w", "window": 60, "max": 3}],
        },
        "delete_account": {"action": "approve"},
        "trial": {"action": "approve", "mode": "dry_run"},
    },
}


@pytest.fixture
def flow() -> Gate:
    return Gate(parse_policy(yaml.safe_dump(POLICY).encode(), "p.yaml"), now=1_800_000_000.0)


async def test_refused_with_an_id_then_approved_passes_exactly_once(flow: Gate) -> None:
    first = await flow("withdraw", amount=900)
    assert first.refusal is Refusal.APPROVAL_REQUIRED
    assert first.approval is not None
    approval_id = first.approval.id
    error = json.loads(reply_for(first).body)["error"]
    assert error["code"] == -32005
    assert approval_id in error["message"]
    assert error["data"]["approval_id"] == approval_id
    assert error["data"]["approval_expires_at"] == flow.now + 600
    assert [a.id for a in flow.requested] == [approval_id]

    # Asking again while pending neither creates a request nor notifies again.
    again = await flow("withdraw", amount=900)
    assert again.approval is not None
    assert again.approval.id == approval_id
    assert len(flow.requested) == 1

    await flow.approvals.decide(approval_id, approve=True, by="alice")
    passed = await flow("withdraw", amount=900)
    assert passed.allowed
    assert passed.approval is not None
    assert passed.approval.id == approval_id

    replay = await flow("withdraw", amount=900)
    assert replay.refusal is Refusal.APPROVAL_REQUIRED
    assert replay.approval is not None
    assert replay.approval.id != approval_id


async def test_an_approval_covers_only_the_exact_call(flow: Gate) -> None:
    asked = await flow("withdraw", amount=900)
    assert asked.approval is not None
    await flow.approvals.decide(asked.approval.id, approve=True, by="alice")
    other_amount = await flow("withdraw", amount=901)
    assert other_amount.refusal is Refusal.APPROVAL_REQUIRED
    other_agent = await flow("withdraw", who="bot-2", amount=900)
    assert other_agent.refusal is Refusal.APPROVAL_REQUIRED
    assert (await flow("withdraw", amount=900)).allowed


async def test_small_amounts_need_no_approval(flow: Gate) -> None:
    assert (await flow("withdraw", amount=500)).allowed
    assert flow.requested == []


async def test_denied_refuses_with_its_state(flow: Gate) -> None:
    asked = await flow("delete_account", id="a1")
    assert asked.approval is not None
    await flow.approvals.decide(asked.approval.id, approve=False, by="alice")
    denied = await flow("delete_account", id="a1")
    assert denied.refusal is Refusal.APPROVAL_DENIED
    assert "was denied by alice" in denied.reason
    assert json.loads(reply_for(denied).body)["error"]["code"] == -32006


async def test_an_expired_approval_refuses_and_asks_anew(flow: Gate) -> None:
    asked = await flow("delete_account", id="a1")
    assert asked.approval is not None
    await flow.approvals.decide(asked.approval.id, approve=True, by="alice")
    flow.now += 900  # the default lifetime
    late = await flow("delete_account", id="a1")
    assert late.refusal is Refusal.APPROVAL_REQUIRED
    assert late.approval is not None
    assert late.approval.id != asked.approval.id
    with pytest.raises(ApprovalError):
        await flow.approvals.decide(asked.approval.id, approve=True, by="alice")


async def test_a_rate_limited_call_keeps_its_approval(flow: Gate) -> None:
    for _ in range(3):
        assert (await flow("withdraw", amount=10)).allowed
    asked = await flow("withdraw", amount=900)
    assert asked.approval is not None
    await flow.approvals.decide(asked.approval.id, approve=True, by="alice")
    assert (await flow("withdraw", amount=900)).refusal is Refusal.RATE_LIMITED
    flow.now += 60
    assert (await flow("withdraw", amount=900)).allowed


async def test_a_dry_run_approval_rule_only_reports(flow: Gate) -> None:
    outcome = await flow("trial")
    assert outcome.allowed
    assert outcome.would_deny == "/tools/trial: needs a person's approval"
    assert flow.requested == []


async def test_decisions_are_final(flow: Gate) -> None:
    asked = await flow("delete_account", id="a1")
    assert asked.approval is not None
    await flow.approvals.decide(asked.approval.id, approve=False, by="alice")
    with pytest.raises(ApprovalError, match="already denied"):
        await flow.approvals.decide(asked.approval.id, approve=True, by="alice")
    with pytest.raises(ApprovalError, match="no live approval"):
        await flow.approvals.decide("apr_unknown", approve=True, by="alice")


async def test_who_may_approve(flow: Gate) -> None:
    asked = await flow("withdraw", amount=900)
    gated = asked.approval
    assert gated is not None
    assert may_approve(gated, "alice", {})
    assert may_approve(gated, "carol", {"groups": ["eng", "treasury"]})
    assert not may_approve(gated, "carol", {"groups": ["eng"]})
    assert not may_approve(gated, "mallory", {})
    open_ = await flow("delete_account", id="x")
    assert open_.approval is not None
    assert may_approve(open_.approval, "anyone", {})
    # Never the agent that asked.
    assert not may_approve(open_.approval, "agent", {})
    assert gated.status is Status.PENDING


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (
            {"approval": {"lifetime": 60}},
            '$.tools.t.approval: only an "approve" rule asks for approval',
        ),
        (
            {"action": "approve", "approval": {"lifetime": 0}},
            "$.tools.t.approval.lifetime: expected a whole number",
        ),
        (
            {"action": "approve", "approval": {"approvers": "alice"}},
            "$.tools.t.approval.approvers: expected a list",
        ),
        (
            {
                "action": "approve",
                "approval": {"when": [{"path": "args.a", "op": "gt", "value": "x"}]},
            },
            '$.tools.t.approval.when[0].value: operator "gt" needs a number',
        ),
        ({"action": "approve", "approval": {"after": 1}}, "$.tools.t.approval.after: unknown key"),
    ],
)
def test_approval_policy_errors(rule: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps({"version": "1", "tools": {"t": rule}}).encode(), "p.json")
    assert any(f"{p.path}: {p.message}".startswith(problem) for p in info.value.problems), (
        info.value
    )


def test_approve_is_not_a_default_posture() -> None:
    with pytest.raises(PolicyError, match=r'\$.default: expected "allow" or "deny"'):
        parse_policy(b'{"version": "1", "default": "approve"}', "p.json")


async def test_a_batch_carrying_the_approved_call_twice_is_refused_and_charges_nothing(
    flow: Gate,
) -> None:
    asked = await flow("withdraw", amount=900)
    assert asked.approval is not None
    await flow.approvals.decide(asked.approval.id, approve=True, by="alice")
    call = {"method": "tools/call", "params": {"name": "withdraw", "arguments": {"amount": 900}}}
    batch = [{"jsonrpc": "2.0", "id": i, **call} for i in (1, 2)]
    headers = {"content-type": "application/json", IDENTITY_HEADER: "agent"}
    twice = await flow.decider.decide(
        HttpRequest("POST", "/mcp", headers, json.dumps(batch).encode())
    )
    assert twice.refusal is Refusal.APPROVAL_REQUIRED
    assert "more than once" in twice.reason
    # Neither spent nor charged: the approved call still passes, and the budget of 3 is whole.
    assert (await flow("withdraw", amount=900)).allowed
    assert (await flow("withdraw", amount=10)).allowed
    assert (await flow("withdraw", amount=10)).allowed
    assert (await flow("withdraw", amount=10)).refusal is Refusal.RATE_LIMITED


async def test_an_agent_over_its_pending_cap_is_refused_uncharged() -> None:
    policy = parse_policy(yaml.safe_dump(POLICY).encode(), "p.yaml")
    flow = Gate(policy, now=1_800_000_000.0, caps=ApprovalCaps(total=3, per_identity=2))
    for amount in (901, 902):
        assert (await flow("withdraw", amount=amount)).refusal is Refusal.APPROVAL_REQUIRED
        flow.now += 100
    full = await flow("withdraw", amount=903)
    assert full.refusal is Refusal.APPROVALS_FULL
    reply = reply_for(full)
    error = json.loads(reply.body)["error"]
    assert error["code"] == -32007
    assert error["message"].startswith("Too many approval requests: Withdrawals over 500")
    assert "2 approval requests are already pending for this identity" in error["message"]
    assert error["data"]["retry_after"] == 400
    assert ("retry-after", "400") in reply.headers
    assert len(flow.requested) == 2
    budget = Hit(CounterKey("w", "grant", ("default", "agent")), limit=3, window=60)
    assert (await flow.counters.usage(budget)).used == 0
    # Repeats of a pending call still answer with its id; other agents still ask.
    assert (await flow("withdraw", amount=901)).refusal is Refusal.APPROVAL_REQUIRED
    assert (await flow("withdraw", who="bot-2", amount=903)).refusal is Refusal.APPROVAL_REQUIRED
    total = await flow("withdraw", who="bot-3", amount=903)
    assert total.refusal is Refusal.APPROVALS_FULL
    assert "3 approval requests are already pending in total" in total.reason
    line = AuditLog(None, ArgumentAudit(b"k" * 32)).line(total, 0.001, INVALID_SPAN_CONTEXT)
    assert (line["decision"], line["retry_after"]) == ("approvals_full", 400.0)


def batch_of(*amounts: int) -> HttpRequest:
    calls = [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {"name": "withdraw", "arguments": {"amount": amount}},
        }
        for i, amount in enumerate(amounts)
    ]
    headers = {"content-type": "application/json", IDENTITY_HEADER: "agent"}
    return HttpRequest("POST", "/mcp", headers, json.dumps(calls).encode())


async def approve(flow: Gate, amount: int) -> str:
    asked = await flow("withdraw", amount=amount)
    assert asked.approval is not None
    await flow.approvals.decide(asked.approval.id, approve=True, by="alice")
    return asked.approval.id


async def test_a_batch_whose_second_approval_is_taken_releases_the_first(flow: Gate) -> None:
    first, second = await approve(flow, 901), await approve(flow, 902)
    assert await flow.approvals.spend(second)  # a concurrent call holds it
    refused = await flow.decider.decide(batch_of(901, 902))
    assert refused.refusal is Refusal.APPROVAL_REQUIRED
    assert f"approval {second} is held by a concurrent identical call" in refused.reason
    kept = await flow.approvals.get(first)
    assert kept is not None
    assert kept.status is Status.APPROVED
    budget = Hit(CounterKey("w", "grant", ("default", "agent")), limit=3, window=60)
    assert (await flow.counters.usage(budget)).used == 0
    await flow.approvals.release(second)
    passed = await flow.decider.decide(batch_of(901, 902))
    assert passed.allowed
    assert (await flow.counters.usage(budget)).used == 2
    assert await flow.approvals.get(first) is None
    assert await flow.approvals.get(second) is None


class FailingRelease(MemoryApprovals):
    """The in-process store whose release fails, as a Redis that went away would."""

    async def release(self, approval_id: str) -> None:
        raise StoreUnavailable("Redis did not answer within 100 ms")


async def test_a_failed_release_keeps_the_refusal_and_the_approval_in_use() -> None:
    policy = parse_policy(yaml.safe_dump(POLICY).encode(), "p.yaml")
    now = 1_800_000_000.0
    flow = Gate(policy, now=now, approvals=FailingRelease(lambda: now))
    for amount in (10, 20, 30):
        assert (await flow("withdraw", amount=amount)).allowed
    approval_id = await approve(flow, 900)
    limited = await flow("withdraw", amount=900)
    assert limited.refusal is Refusal.RATE_LIMITED
    # Fail closed: nobody can use it now, and nothing more was charged.
    stuck = await flow.approvals.get(approval_id)
    assert stuck is not None
    assert stuck.status is Status.IN_USE
    assert (await flow("withdraw", amount=900)).refusal is Refusal.APPROVAL_REQUIRED


class FailingSpend(MemoryApprovals):
    async def spend(self, approval_id: str) -> bool:
        raise StoreUnavailable("Redis did not answer within 100 ms")


async def test_an_approval_that_cannot_be_spent_fails_closed_uncharged() -> None:
    policy = parse_policy(yaml.safe_dump(POLICY).encode(), "p.yaml")
    now = 1_800_000_000.0
    flow = Gate(policy, now=now, approvals=FailingSpend(lambda: now))
    await approve(flow, 900)
    refused = await flow("withdraw", amount=900)
    assert refused.refusal is Refusal.LIMITS_UNAVAILABLE
    assert "approval-gated calls always fail closed" in refused.reason
    budget = Hit(CounterKey("w", "grant", ("default", "agent")), limit=3, window=60)
    assert (await flow.counters.usage(budget)).used == 0
