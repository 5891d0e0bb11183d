"""Audit lines: JSON, tied to their trace, and never an argument value unless allow-listed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext, TraceFlags

import authz
from authz.approvals.base import Approval, Request, Status
from authz.core.outcome import Outcome
from authz.observe.audit import ArgumentAudit, ArgumentPath, AuditLog, _Stamps
from authz.protocol.errors import Refusal
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall
from authz.protocol.request import HttpRequest, Origin

KEY = b"0123456789abcdef0123456789abcdef"
SPAN = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0x00F067AA0BA902B7,
    is_remote=False,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)
MARKER = "S3CR3T"

# Argument documents whose every string, key and value alike, carries the marker.
marked_text = st.text(max_size=8).map(lambda t: MARKER + t)
documents = st.recursive(
    marked_text | st.integers(min_value=10**12, max_value=10**15),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(marked_text, inner, max_size=3),
    max_leaves=10,
)
arguments = st.dictionaries(marked_text, documents, max_size=4)


def outcome(*calls: McpCall, refusal: Refusal | None = Refusal.DENIED) -> Outcome:
    return Outcome(
        decision_id="d-1",
        policy_version="sha256:abc",
        refusal=refusal,
        rule="/tools/transfer",
        reason="transfers need approval",
        calls=calls,
        subject=calls[0] if calls else None,
        caller=Caller("agent-7", "session-1"),
        grant="default",
        request_ids=tuple(c.id for c in calls),
    )


def transfer(arguments: dict[str, Any], tool: str = "transfer", rid: int = 1) -> McpCall:
    return McpCall("tools/call", rid, tool, arguments)


def log(*allowed: str, key: bytes = KEY) -> tuple[AuditLog, io.StringIO]:
    stream = io.StringIO()
    clock = lambda: datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC).timestamp()  # noqa: E731
    paths = [ArgumentPath.parse(a) for a in allowed]
    return AuditLog(stream, ArgumentAudit(key, paths), clock=clock), stream


def written(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_answers_who_what_when_why_and_which_trace() -> None:
    audit, stream = log()
    audit.record(outcome(transfer({"amount": 5})), 0.0012345, SPAN)
    (line,) = written(stream)
    assert line | {"arguments": None, "hmac_key": None} == {
        "schema": "mcp-authz.audit/1",
        "version": authz.__version__,
        "time": "2026-01-02T03:04:05.678+00:00",
        "decision_id": "d-1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "00f067aa0ba902b7",
        "decision": "denied",
        "identity": "agent-7",
        "grant": "default",
        "session": "session-1",
        "method": "tools/call",
        "tool": "transfer",
        "request_id": 1,
        "grant_label": None,
        "client_address": None,
        "envoy_request_id": None,
        "authority": None,
        "argument_keys": ["amount"],
        "rule": "/tools/transfer",
        "reason": "transfers need approval",
        "policy_version": "sha256:abc",
        "fail_open": False,
        "would_deny": None,
        "retry_after": None,
        "approval": None,
        "risk": None,
        "catalogue": None,
        "methods": ["tools/call"],
        "tools": ["transfer"],
        "arguments": None,
        "hmac_key": None,
        "latency_ms": 1.234,
    }
    (entry,) = line["arguments"]
    assert set(entry) == {"id", "target", "hmac"}
    assert len(entry["hmac"]) == 64


def test_without_a_trace_the_ids_are_null() -> None:
    audit, stream = log()
    audit.record(outcome(), 0.001, INVALID_SPAN_CONTEXT)
    (line,) = written(stream)
    assert (line["trace_id"], line["span_id"], line["method"], line["arguments"]) == (
        None,
        None,
        None,
        [],
    )


@given(arguments, arguments)
def test_argument_values_and_keys_never_appear_in_clear(first: Any, second: Any) -> None:
    audit, stream = log("other_tool:" + MARKER, "missing.path")
    batch = outcome(transfer(first), transfer(second, "pay", 2), McpCall("tools/list", 3))
    audit.record(batch, 0.001, SPAN)
    (line,) = written(stream)
    # Only the first call's top-level names reach the line, in `argument_keys`.
    assert len(line.pop("argument_keys")) == len(first)
    assert MARKER not in json.dumps(line, ensure_ascii=False)
    assert [a["target"] for a in line["arguments"]] == ["transfer", "pay"]


def test_an_approval_is_named_without_the_arguments_it_holds() -> None:
    args = {"amount": MARKER}
    request = Request("agent-7", "default", "transfer", args, "/tools/transfer", "big")
    approval = Approval("a-1", Status.APPROVED, request, 1.0, 2.0, decided_by="alice")
    audit, stream = log()
    audit.record(replace(outcome(transfer(args)), refusal=None, approval=approval), 0.001, SPAN)
    assert MARKER not in stream.getvalue()
    (line,) = written(stream)
    assert line["approval"] == {"id": "a-1", "status": "approved", "decided_by": "alice"}


def test_allow_listed_paths_are_logged_in_clear_for_the_tools_they_name() -> None:
    audit, stream = log("currency", "transfer:order.symbol", "pay:order.symbol")
    args = {"currency": "USD", "order": {"symbol": "BTC", "account": "ACC-9"}, "amount": 10}
    audit.record(outcome(transfer(args), transfer(args, "quote", 2)), 0.001, SPAN)
    text = stream.getvalue()
    assert "ACC-9" not in text
    first, second = written(stream)[0]["arguments"]
    assert first["clear"] == {"currency": "USD", "order.symbol": "BTC"}
    assert second["clear"] == {"currency": "USD"}


def test_hash_correlates_equal_arguments_whatever_their_key_order() -> None:
    audit = ArgumentAudit(KEY)
    same = audit.digest(transfer({"a": 1, "b": [1, 2]}))
    assert audit.digest(transfer({"b": [1, 2], "a": 1})) == same
    assert audit.digest(transfer({"a": 2, "b": [1, 2]})) != same
    assert ArgumentAudit(b"another key that is long enough").digest(transfer({"a": 1})) != (
        audit.digest(transfer({"a": 1}))
    )


# JSON values as a parsed request holds them: no lone surrogates, no infinities.
parsed_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(arguments=st.dictionaries(st.text(max_size=4), parsed_values, max_size=4))
def test_the_hash_is_the_hmac_sha256_of_the_sorted_compact_json(arguments: dict[str, Any]) -> None:
    # The layout is part of every hash ever logged: a faster encoder must not change it.
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hmac.new(KEY, canonical.encode(), hashlib.sha256).hexdigest()
    assert ArgumentAudit(KEY).digest(transfer(arguments)) == expected


async def test_lines_reach_the_file_once_the_loop_turn_ends_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.open(str(path), ArgumentAudit(KEY))
    audit.record(replace(outcome(transfer({"a": 1})), decision_id="d-1"), 0.001, SPAN)
    audit.record(replace(outcome(transfer({"a": 1})), decision_id="d-2"), 0.001, SPAN)
    assert path.read_text() == ""  # buffered: one write for the turn's lines
    await asyncio.sleep(0)
    assert [json.loads(ln)["decision_id"] for ln in path.read_text().splitlines()] == [
        "d-1",
        "d-2",
    ]
    audit.record(replace(outcome(transfer({"a": 1})), decision_id="d-3"), 0.001, SPAN)
    audit.close()
    assert len(path.read_text().splitlines()) == 3


def test_outside_an_event_loop_each_line_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.open(str(path), ArgumentAudit(KEY))
    audit.record(outcome(transfer({"a": 1})), 0.001, SPAN)
    assert len(path.read_text().splitlines()) == 1
    audit.close()


def test_key_from_a_file_matches_across_processes_and_drops_the_trailing_newline(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY + b"\n")
    loaded = ArgumentAudit.configure([], key_file)
    assert loaded.digest(transfer({"a": 1})) == ArgumentAudit(KEY).digest(transfer({"a": 1}))
    assert loaded.key_id == ArgumentAudit(KEY).key_id


def test_per_process_keys_differ() -> None:
    first, second = ArgumentAudit.configure([], None), ArgumentAudit.configure([], None)
    assert first.key_id != second.key_id


@pytest.mark.parametrize(
    ("key", "problem"), [(b"short\n", "at least 16 bytes"), (None, "cannot read")]
)
def test_a_bad_key_file_fails_start_up(tmp_path: Path, key: bytes | None, problem: str) -> None:
    key_file = tmp_path / "audit.key"
    if key is not None:
        key_file.write_bytes(key)
    with pytest.raises(ValueError, match=problem):
        ArgumentAudit.configure([], key_file)


@pytest.mark.parametrize("spec", ["", "a..b", ":a", "tool:", "tool:a."])
def test_malformed_argument_paths_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="not PATH or TOOL:PATH"):
        ArgumentPath.parse(spec)


def test_argument_paths_parse_with_and_without_a_tool() -> None:
    assert ArgumentPath.parse(" order.symbol ") == ArgumentPath(None, ("order", "symbol"))
    assert ArgumentPath.parse("pay:amount") == ArgumentPath("pay", ("amount",))


def test_off_writes_nothing_and_a_file_is_appended_to(tmp_path: Path) -> None:
    audit = ArgumentAudit(KEY)
    AuditLog.open("off", audit).record(outcome(), 0.001, SPAN)
    target = tmp_path / "audit.jsonl"
    target.write_text('{"earlier": true}\n')
    appended = AuditLog.open(str(target), audit)
    appended.record(outcome(), 0.001, SPAN)
    appended.close()
    lines = target.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["decision_id"] == "d-1"


def test_a_line_names_the_grant_the_client_and_envoys_request() -> None:
    audit, stream = log()
    origin = Origin("10.0.0.7:51234", "5f0c-req", "mcp.example.com")
    caller = Caller("alice-laptop", grant_label="alice-laptop")
    many = {f"k{i:03}": i for i in range(200)} | {"x" * 500: 1}
    audit.record(replace(outcome(transfer(many)), origin=origin, caller=caller), 0.001, SPAN)
    (line,) = written(stream)
    assert (line["grant_label"], line["client_address"]) == ("alice-laptop", "10.0.0.7:51234")
    assert (line["envoy_request_id"], line["authority"]) == ("5f0c-req", "mcp.example.com")
    assert line["argument_keys"] == sorted(many)[:64]
    assert all(len(k) <= 64 for k in line["argument_keys"])


def test_origin_is_read_bounded_from_the_request() -> None:
    request = HttpRequest(
        "POST",
        "/mcp",
        {"x-request-id": "r" * 1000, ":authority": "h"},
        b"",
        client_address="1.2.3.4:5",
    )
    origin = request.origin()
    assert (len(origin.envoy_request_id), origin.authority, origin.client_address) == (
        256,
        "h",
        "1.2.3.4:5",
    )


@given(times=st.lists(st.floats(min_value=0, max_value=4e9), min_size=1, max_size=5))
def test_each_line_is_stamped_as_datetime_writes_the_time_to_the_millisecond(
    times: list[float],
) -> None:
    # The date and time of day are kept from one line to the next within a second.
    clock = iter(times)
    stamps = _Stamps(lambda: next(clock))
    for t in times:
        assert stamps() == datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
