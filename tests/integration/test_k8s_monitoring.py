"""The chart's prometheus-operator objects: valid, aimed at mcp-authz, alerting on real series.

The ServiceMonitor, PodMonitor and PrometheusRule validate against prometheus-operator's own
CRD schemas (vendored in schemas/prometheus-operator; unknown fields refused, as by `kubectl
apply --validate=strict`), scrape a port that exists, and every alert's PromQL parses and reads
only series, with label values, that a running gateway serves; each alert has a runbook in
docs/kubernetes.md.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import promql_parser
import pytest

from tests.integration.served_series import Series, serve_every_series
from tests.integration.test_k8s_manifests import (
    ROOT,
    Doc,
    container,
    crd_validator,
    helm_template,
    helm_values,
    one,
    port_of,
    selects,
    sidecar_deployment,
)

# Labels Prometheus adds to every series of a target (kubernetes_sd): the gateway never serves
# them, and each alert scopes itself to the release with them.
TARGET_LABELS = {"namespace", "pod"}
KUBERNETES_MD = ROOT / "docs" / "kubernetes.md"


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> tuple[Doc, ...]:
    return helm_template(helm_values("production"), tmp_path_factory.mktemp("production"))


@pytest.fixture(scope="module")
def pod_monitor_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Doc, ...]:
    case = "cluster-redis-pod-monitor"
    return helm_template(helm_values(case), tmp_path_factory.mktemp(case))


def test_the_service_monitor_scrapes_the_metrics_port_of_the_release(
    production: tuple[Doc, ...],
) -> None:
    monitor = one(production, "ServiceMonitor")
    service = one(production, "Service", "tools-gateway")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    deployment = sidecar_deployment(production)
    (metrics,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port_of(container(deployment, "mcp-authz"), metrics["targetPort"]) > 0


def test_the_pod_monitor_scrapes_every_pod(pod_monitor_release: tuple[Doc, ...]) -> None:
    monitor = one(pod_monitor_release, "PodMonitor")
    deployment = sidecar_deployment(pod_monitor_release)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(monitor["spec"]["selector"]["matchLabels"], labels)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert port_of(container(deployment, "mcp-authz"), endpoint["port"]) > 0
    assert not [d for d in pod_monitor_release if d["kind"] == "ServiceMonitor"]


@pytest.mark.parametrize(
    ("kind", "mistake"),
    [
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(intervall="30s")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].update(expresion="1")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][1].update({"for": "2 min"})),
    ],
)
def test_the_crd_schemas_catch_a_mistake(
    production: tuple[Doc, ...], kind: str, mistake: object
) -> None:
    doc = copy.deepcopy(one(production, kind))
    assert callable(mistake)
    mistake(doc)
    with pytest.raises(jsonschema.ValidationError):
        crd_validator(kind).validate(doc)


# ======================================================================= the alerts

WANTED_ALERTS = {
    "McpAuthzMetricsAbsent",
    "McpAuthzStoreUnavailable",
    "McpAuthzFailOpen",
    "McpAuthzPolicyReloadFailed",
    "McpAuthzRefusalRateHigh",
    "McpAuthzCheckLatencyHigh",
    "McpAuthzSpansDropped",
}


def alerts(docs: tuple[Doc, ...]) -> list[Doc]:
    rule = one(docs, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


# By the operator's name: promql_parser's MatchOp is not hashable.
MATCH = {
    "MatchOp.Equal": lambda have, want: have == want,
    "MatchOp.NotEqual": lambda have, want: have != want,
    "MatchOp.Re": lambda have, want: re.fullmatch(want, have) is not None,
    "MatchOp.NotRe": lambda have, want: re.fullmatch(want, have) is None,
}


def matching(selector: promql_parser.VectorSelector, served: list[Series]) -> list[Series]:
    """The served series the selector would read once Prometheus has scraped them."""
    matchers = [m for m in selector.matchers.matchers if m.name not in TARGET_LABELS]
    return [
        s
        for s in served
        if s.name == selector.name
        and all(MATCH[str(m.op)](s.labels.get(m.name, ""), m.value) for m in matchers)
    ]


def test_the_rule_has_every_alert_the_issue_asks_for(production: tuple[Doc, ...]) -> None:
    names = [a["alert"] for a in alerts(production)]
    assert len(names) == len(set(names))
    assert set(names) == WANTED_ALERTS


def test_every_alert_is_scoped_to_the_release(production: tuple[Doc, ...]) -> None:
    for alert in alerts(production):
        for selector in selectors(alert["expr"]):
            scope = {m.name: m.value for m in selector.matchers.matchers if m.name in TARGET_LABELS}
            assert scope["namespace"] == "default", alert["alert"]
            assert re.fullmatch(scope["pod"], "tools-gateway-7d9f8b6c5-x2x4q"), alert["alert"]
            assert not re.fullmatch(scope["pod"], "tools-gateway-redis-7d9f8b6c5-x2x4q")


async def test_every_alert_reads_series_a_running_gateway_serves(
    production: tuple[Doc, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = await serve_every_series(tmp_path, monkeypatch)
    for alert in alerts(production):
        found = selectors(alert["expr"])
        assert found, alert["alert"]
        for selector in found:
            assert selector.name.startswith("mcp_authz_"), alert["alert"]
            assert matching(selector, served), f"{alert['alert']}: nothing served for {selector}"


def test_a_misspelt_label_value_reads_nothing() -> None:
    # The check above can fail: a label value no series has matches nothing.
    (selector,) = selectors('mcp_authz_policy_reloads_total{result="failed"}')
    served = [Series("mcp_authz_policy_reloads_total", {"result": "error"}, 1.0)]
    assert matching(selector, served) == []


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, spaces to dashes, punctuation dropped."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_every_alert_has_a_runbook(production: tuple[Doc, ...]) -> None:
    documented = anchors(KUBERNETES_MD.read_text())
    for alert in alerts(production):
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"]
        url = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("/docs/kubernetes.md")
        assert anchor == alert["alert"].lower()
        assert anchor in documented, f"docs/kubernetes.md has no runbook heading for {anchor}"
