"""Metric labels stay bounded, and every instrument reaches Prometheus under its declared name."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import authz
from authz.core.outcome import Outcome
from authz.observe.metrics import (
    BUILD_INFO,
    NO_TOOL,
    OTHER_TOOL,
    PROMETHEUS_NAMES,
    SERVING,
    Metrics,
    PolicyTools,
    policy_tools,
    split_address,
)
from authz.policy.load import parse_policy
from authz.policy.model import Policy
from authz.protocol.errors import Refusal
from authz.protocol.mcp import McpCall

POLICY = {
    "version": "1",
    "tools": {"search": {}, "files_*": {}},
    "hide": ["rm_rf"],
    "grants": {"ops": {"identities": ["ops-*"], "tools": {"deploy": {}}}},
}


def policy(document: dict[str, Any]) -> Policy:
    return parse_policy(json.dumps(document).encode(), "policy.json")


def outcome(*calls: McpCall, refusal: Refusal | None = None, fail_open: bool = False) -> Outcome:
    subject = calls[0] if calls else None
    return Outcome("d", "v", refusal, "rule", "reason", calls, subject, fail_open=fail_open)


def tool(name: str) -> McpCall:
    return McpCall("tools/call", 1, name)


def test_policy_tools_are_the_exact_names_of_every_grant_and_the_hidden_list() -> None:
    # Patterns are not tool names: "files_*" would let an agent mint labels at will.
    assert policy_tools(policy(POLICY)) == {"search", "deploy", "rm_rf"}


@pytest.mark.parametrize(
    ("calls", "label"),
    [
        ((tool("search"),), "search"),
        ((tool("files_read"),), OTHER_TOOL),
        ((tool("x" * 200),), OTHER_TOOL),
        ((McpCall("tools/list", 1),), NO_TOOL),
        ((), NO_TOOL),
    ],
)
def test_tool_label_is_bounded_by_the_policy(calls: tuple[McpCall, ...], label: str) -> None:
    metrics = Metrics(MeterProvider().get_meter("t"), PolicyTools(lambda: policy(POLICY)))
    assert metrics.tool_label(outcome(*calls)) == label


def test_tool_names_follow_a_reload() -> None:
    current = [policy(POLICY)]
    tools = PolicyTools(lambda: current[0])
    assert "fresh" not in tools()
    current[0] = policy(POLICY | {"tools": {"fresh": {}}})
    assert "fresh" in tools()


def test_every_instrument_has_its_declared_prometheus_name() -> None:
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider([reader]).get_meter("t"))
    metrics.record_check(outcome(tool("a"), refusal=Refusal.LIMITS_UNAVAILABLE), 0.002)
    metrics.record_store("redis", 0.001, failed=True)
    metrics.record_reload(ok=False)
    metrics.record_spans_dropped(2, "queue_full")
    metrics.record_serving(True)
    data = reader.get_metrics_data()
    assert data is not None
    instruments = {
        m.name: m.unit
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name not in {BUILD_INFO, SERVING}
    }
    assert {prometheus_name(name, unit) for name, unit in instruments.items()} == PROMETHEUS_NAMES


def points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        (m.name, tuple(sorted((p.attributes or {}).items()))): p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
        if hasattr(p, "value")
    }


def test_the_serving_gauge_is_the_last_health_change_without_labels() -> None:
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider([reader]).get_meter("t"))
    metrics.record_serving(True)
    assert points(reader)[(SERVING, ())] == 1
    metrics.record_serving(False)
    assert points(reader)[(SERVING, ())] == 0


def test_build_info_and_the_dashboards_event_counters_exist_before_any_event() -> None:
    reader = InMemoryMetricReader()
    Metrics(MeterProvider([reader]).get_meter("t"))
    assert points(reader) == {
        (BUILD_INFO, (("version", authz.__version__),)): 1,
        ("mcp_authz.policy.reloads", (("result", "ok"),)): 0,
        ("mcp_authz.policy.reloads", (("result", "error"),)): 0,
        ("mcp_authz.fail_mode.activations", (("fail_mode", "open"),)): 0,
        ("mcp_authz.fail_mode.activations", (("fail_mode", "closed"),)): 0,
    }


def prometheus_name(name: str, unit: str | None) -> str:
    """The OTLP-to-Prometheus rule for our units: seconds suffix histograms, `_total` counters."""
    base = name.replace(".", "_")
    return base + "_seconds" if unit == "s" else base + "_total"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("metrics.local:1", ("metrics.local", 1)),
    ],
)
def test_metrics_address(listen: str, expected: tuple[str, int]) -> None:
    assert split_address(listen) == expected


@pytest.mark.parametrize("listen", ["9464", ":9464", "host:", "host:http", "host:70000"])
def test_bad_metrics_address(listen: str) -> None:
    with pytest.raises(ValueError, match="not host:port"):
        split_address(listen)
