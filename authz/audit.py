"""The audit log: one JSON line per decision, never the call's arguments."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from authz.decision import Outcome


class AuditLog:
    def __init__(self, stream: TextIO | None, *, owned: bool = False) -> None:
        self._stream = stream
        self._owned = owned

    @classmethod
    def open(cls, target: str) -> AuditLog:
        """`-` for stdout, `off` for none, anything else is a file appended to."""
        if target == "off":
            return cls(None)
        if target == "-":
            return cls(sys.stdout)
        return cls(open(target, "a", encoding="utf-8", buffering=1), owned=True)

    def record(self, outcome: Outcome, latency: float) -> None:
        if self._stream is None:
            return
        self._stream.write(json.dumps(audit_record(outcome, latency), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()


def audit_record(outcome: Outcome, latency: float) -> dict[str, Any]:
    caller = outcome.caller
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "decision_id": outcome.decision_id,
        "decision": outcome.label,
        "identity": caller.identity if caller else None,
        "grant": outcome.grant,
        "session": caller.session if caller else None,
        "methods": [c.method for c in outcome.calls],
        "tools": [c.tool for c in outcome.calls if c.tool is not None],
        "rule": outcome.rule,
        "reason": outcome.reason,
        "policy_version": outcome.policy_version,
        "fail_open": outcome.fail_open,
        "would_deny": outcome.would_deny,
        "latency_ms": round(latency * 1000, 3),
    }
