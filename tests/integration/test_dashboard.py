"""The shipped Grafana assets are valid, and the dashboard reads only what the service emits.

Every PromQL query must name metrics the service declares, every declared metric must be on
the dashboard, and a real gateway (Prometheus endpoint on, Redis unreachable, collector
unreachable) must serve every series the dashboard reads; every span attribute a TraceQL
query filters on must be one the service sets. So neither side can be renamed alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.core.outcome import Outcome
from authz.limits.base import CounterKey, Hit, LimitState
from authz.observe.metrics import PROMETHEUS_NAMES
from authz.observe.spans import check_attributes
from authz.protocol.errors import Refusal
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall
from tests.integration.served_series import serve_every_series

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mcp-authz.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "mcp-authz.yaml"
COLLECTOR = ROOT / "deploy" / "otel" / "collector.yaml"
SEED = ROOT / "examples" / "policies" / "seed.json"
METRIC = re.compile(r"\bmcp_authz_[a-z0-9_]+")
SPAN_ATTRIBUTE = re.compile(r"\bspan\.([a-z0-9_.]+)")
SERIES_SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def targets(kind: str) -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            if target["datasource"]["type"] == kind:
                yield target


def promql() -> list[str]:
    queries = [t["expr"] for t in targets("prometheus")]
    variables = dashboard()["templating"]["list"]
    return queries + [v["definition"] for v in variables if v["type"] == "query"]


def base_name(series: str) -> str:
    for suffix in SERIES_SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in PROMETHEUS_NAMES:
            return series.removesuffix(suffix)
    return series


def test_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "mcp-authz"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["prometheus"]["query"] == "prometheus"
    assert variables["tempo"]["query"] == "tempo"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"]
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            # Datasources by variable, so the dashboard imports into any Grafana.
            source = target["datasource"]
            assert source["uid"] == "${" + source["type"] + "}", panel["title"]


def test_every_query_names_declared_metrics_and_every_metric_is_shown() -> None:
    seen: set[str] = set()
    for query in promql():
        names = {base_name(n) for n in METRIC.findall(query)}
        assert names, f"query names no mcp-authz metric: {query}"
        assert names <= PROMETHEUS_NAMES, f"unknown metric in: {query}"
        seen |= names
    assert seen == PROMETHEUS_NAMES


def test_trace_queries_filter_on_attributes_the_service_sets() -> None:
    call = McpCall("tools/call", 1, "t", {})
    outcome = Outcome(
        "d",
        "v",
        Refusal.RATE_LIMITED,
        "rule",
        "reason",
        (call,),
        call,
        Caller("agent", "session"),
        grant="default",
        limits=(LimitState(Hit(CounterKey("c", "grant", ()), 1, 60), 1, 0, 3.0),),
        retry_after=3.0,
        would_deny="x",
    )
    emitted = set(check_attributes(outcome))
    queries = [t["query"] for t in targets("tempo")]
    assert queries
    for query in queries:
        assert "resource.service.name" in query or "span.mcp_authz.decision_id" in query
        assert set(SPAN_ATTRIBUTE.findall(query)) <= emitted, query


def test_datasources_link_metrics_and_traces() -> None:
    sources = {s["uid"]: s for s in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    assert {sources[uid]["type"] for uid in sources} == {"prometheus", "tempo"}
    (exemplars,) = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert exemplars["datasourceUid"] in sources
    assert sources["tempo"]["jsonData"]["tracesToMetrics"]["datasourceUid"] in sources
    for query in sources["tempo"]["jsonData"]["tracesToMetrics"]["queries"]:
        assert {base_name(n) for n in METRIC.findall(query["query"])} <= PROMETHEUS_NAMES


def test_collector_pipelines_use_only_what_it_defines() -> None:
    config = yaml.safe_load(COLLECTOR.read_text())
    for name, pipeline in config["service"]["pipelines"].items():
        for section in ("receivers", "processors", "exporters"):
            assert set(pipeline[section]) <= set(config[section]), (name, section)
    assert set(config["service"]["pipelines"]) == {"traces", "metrics"}


async def test_a_running_gateway_serves_every_series_the_dashboard_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = {series.name for series in await serve_every_series(tmp_path, monkeypatch)}
    wanted = {n for query in promql() for n in METRIC.findall(query)}
    assert wanted - served == set()
