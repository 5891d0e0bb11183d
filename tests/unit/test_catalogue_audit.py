"""Catalogue changes and tool facts in the audit log."""

from __future__ import annotations

import io
import json
from typing import Any

from opentelemetry.trace import INVALID_SPAN_CONTEXT

from authz.catalogue.memory import MemoryCatalogue
from authz.core.outcome import Outcome, ToolFacts
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.observe.catalogue_audit import AuditedCatalogue
from authz.protocol.mcp import McpCall
from authz.protocol.tools import parse_tool


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def audit() -> tuple[AuditLog, io.StringIO]:
    stream = io.StringIO()
    return AuditLog(stream, ArgumentAudit(b"k" * 32)), stream


async def test_every_change_a_listing_makes_is_one_line() -> None:
    log, stream = audit()
    catalogue = AuditedCatalogue(MemoryCatalogue(), log)
    one, two = parse_tool({"name": "a"}), parse_tool({"name": "b"})
    await catalogue.observe("pay", [one, two], complete=True)
    await catalogue.observe("pay", [one, two], complete=True)
    swapped = parse_tool({"name": "a", "description": "new"})
    await catalogue.observe("pay", [swapped], complete=True)
    written = [(line["catalogue_change"], line["tool"]) for line in lines(stream)]
    assert written == [("added", "a"), ("added", "b"), ("changed", "a"), ("removed", "b")]
    changed = lines(stream)[2]
    assert changed["upstream"] == "pay"
    assert changed["fingerprint"] == one.fingerprint
    assert changed["offered"] == swapped.fingerprint


def test_a_decision_line_carries_the_tools_class_and_pin() -> None:
    log, stream = audit()
    facts = ToolFacts("pay", "destructive", True, "f" * 64, "e" * 64, "$.amount")
    call = McpCall("tools/call", 1, "wipe", {"amount": 1})
    log.record(
        Outcome("d", "v", None, "r", "ok", calls=(call,), tool=facts), 0.001, INVALID_SPAN_CONTEXT
    )
    [line] = lines(stream)
    assert line["risk"] == "destructive"
    assert line["catalogue"] == {
        "upstream": "pay",
        "fingerprint": "f" * 64,
        "offered": "e" * 64,
        "open_world": True,
        "argument_path": "$.amount",
    }
