"""The recent-records ring the console reads: bounded, newest first, filtered as asked."""

from __future__ import annotations

from authz.observe.recent import MAX_FILTER_CHARS, DecisionFilter, RecentRecords


def line(n: int, **fields: object) -> dict[str, object]:
    return {"decision_id": str(n), "tool": "t", "identity": "a", "decision": "allowed", **fields}


def test_keeps_the_newest_up_to_its_capacity() -> None:
    ring = RecentRecords(capacity=3)
    for n in range(5):
        ring.add_decision(line(n))
    assert [d["decision_id"] for d in ring.decisions(DecisionFilter(), 10)] == ["4", "3", "2"]
    assert len(ring) == 3
    assert [d["decision_id"] for d in ring.decisions(DecisionFilter(), 2)] == ["4", "3"]


def test_filters_by_tool_identity_outcome_and_rule_prefix() -> None:
    ring = RecentRecords()
    ring.add_decision(line(1, rule="/tools/withdraw"))
    ring.add_decision(line(2, tool="withdraw", decision="denied", rule="/tools/withdraw/deny_if/x"))
    ring.add_decision(line(3, identity="b", decision="denied", rule="/default"))
    found = ring.decisions(DecisionFilter.of({"outcome": "denied", "rule": "/tools/withdraw"}), 9)
    assert [d["decision_id"] for d in found] == ["2"]
    found = ring.decisions(DecisionFilter.of({"identity": " b "}), 9)
    assert [d["decision_id"] for d in found] == ["3"]
    assert ring.decisions(DecisionFilter.of({"tool": "x" * 10_000}), 9) == []
    assert len(DecisionFilter.of({"tool": "x" * 10_000}).tool) == MAX_FILTER_CHARS


def test_admin_lines_by_action_and_distinct_callers() -> None:
    ring = RecentRecords()
    ring.add_admin({"admin_action": "approve", "target": "apr_1"})
    ring.add_admin({"admin_action": "list_approvals", "target": ""})
    assert ring.admin(frozenset({"approve", "deny"}), 9) == [
        {"admin_action": "approve", "target": "apr_1"}
    ]
    ring.add_decision(line(1, grant="g", session=None))
    ring.add_decision(line(2, grant="g", session=None))
    ring.add_decision(line(3, identity="b", grant="g", session="s"))
    assert [s["decision_id"] for s in ring.subjects()] == ["3", "2"]
