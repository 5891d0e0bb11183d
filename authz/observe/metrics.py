"""Decision metrics as OpenTelemetry instruments, read over OTLP or a Prometheus scrape.

Every label has a bounded set of values: decisions and fail modes are fixed, rules come
from the policy, and tool names, which agents choose, are labels only when the policy names
the tool; any other tool is counted as `other`, so a caller inventing names cannot grow the
number of series.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter, NoOpMeter
from prometheus_client import CollectorRegistry, start_http_server

from authz import __version__
from authz.core.decision import FailMode
from authz.core.outcome import Outcome
from authz.policy.model import UNKNOWN_RISK, Policy
from authz.protocol.errors import Refusal

OTHER_TOOL: Final = "other"
# The build-info gauge: 1, labelled with the running version; not on the dashboard.
BUILD_INFO: Final = "mcp_authz.build_info"
# The health gauge: 1 while this replica's health says SERVING (it can judge a Check), else
# 0; no labels. A per-replica signal for alerts and probes, not on the dashboard.
SERVING: Final = "mcp_authz.serving"
# The label of requests that call no tool (initialize, tools/list, malformed bodies).
NO_TOOL: Final = "none"
# A decision is a parse, a policy lookup and at most two store round trips: sub-millisecond
# in process, a few milliseconds with Redis, and never past Envoy's 250 ms timeout.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# The names Prometheus sees, after the OTLP-to-Prometheus translation every path applies
# (our scrape endpoint, Prometheus's and Mimir's OTLP ingest, the Collector's exporters): dots
# become underscores, counters gain `_total`, histograms in seconds gain `_seconds`.
# The dashboard test checks that every query in deploy/grafana names one of these.
PROMETHEUS_NAMES: Final = frozenset(
    {
        "mcp_authz_decisions_total",
        "mcp_authz_check_duration_seconds",
        "mcp_authz_store_duration_seconds",
        "mcp_authz_store_errors_total",
        "mcp_authz_fail_mode_activations_total",
        "mcp_authz_policy_reloads_total",
        "mcp_authz_telemetry_spans_dropped_total",
    }
)


class Metrics:
    def __init__(self, meter: Meter, known_tools: Callable[[], frozenset[str]] = frozenset) -> None:
        self._known_tools = known_tools
        # With no reader (no OTLP metrics, no Prometheus endpoint) nothing is recorded: the
        # labels and the clock reads would be spent per check for nobody.
        self.recording = not isinstance(meter, NoOpMeter)
        self._decisions = meter.create_counter(
            "mcp_authz.decisions", "{decision}", "Decisions by outcome, tool and rule"
        )
        self._check_duration = meter.create_histogram(
            "mcp_authz.check.duration",
            "s",
            "Time to decide one Check, from request to answer",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._store_duration = meter.create_histogram(
            "mcp_authz.store.duration",
            "s",
            "Time of one counter store operation",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._store_errors = meter.create_counter(
            "mcp_authz.store.errors", "{error}", "Counter store operations that did not answer"
        )
        self._fail_mode = meter.create_counter(
            "mcp_authz.fail_mode.activations",
            "{decision}",
            "Decisions taken by the fail mode because the counter store was unavailable",
        )
        self._reloads = meter.create_counter(
            "mcp_authz.policy.reloads", "{reload}", "Policy reloads by result"
        )
        self._spans_dropped = meter.create_counter(
            "mcp_authz.telemetry.spans_dropped", "{span}", "Spans lost before export, by reason"
        )
        # `{replica}` rather than `1`: Prometheus translations give a gauge of unit `1` a
        # `_ratio` suffix on some paths; an annotation is dropped on all of them.
        self._serving = meter.create_gauge(
            SERVING, "{replica}", "1 while this replica can judge a Check (health SERVING), else 0"
        )
        # `mcp_authz_build_info{version="..."} 1`, the usual way to tell which build is running.
        meter.create_up_down_counter(
            BUILD_INFO, "1", "The running build: 1, labelled with its version"
        ).add(1, {"version": __version__})
        # Counters the dashboard reads start at zero with every label set, so a panel shows 0,
        # not "no data", until the first reload or fail-mode decision.
        for result in (True, False):
            self._reloads.add(0, {"result": _result(result)})
        for mode in FailMode:
            self._fail_mode.add(0, {"fail_mode": mode.value})

    def record_check(self, outcome: Outcome, seconds: float) -> None:
        if not self.recording:
            return
        decision = outcome.label
        labels = {
            "decision": decision,
            "tool": self.tool_label(outcome),
            "rule": outcome.rule,
            # read, write, destructive or unknown: the catalogue's classes, never more.
            "risk": outcome.tool.risk if outcome.tool else UNKNOWN_RISK,
        }
        self._decisions.add(1, labels)
        self._check_duration.record(seconds, {"decision": decision})
        if outcome.fail_open:
            self._fail_mode.add(1, {"fail_mode": "open"})
        elif outcome.refusal is Refusal.LIMITS_UNAVAILABLE:
            self._fail_mode.add(1, {"fail_mode": "closed"})

    def record_store(self, store: str, seconds: float, *, failed: bool) -> None:
        if not self.recording:
            return
        self._store_duration.record(seconds, {"store": store, "result": _result(not failed)})
        if failed:
            self._store_errors.add(1, {"store": store})

    def record_reload(self, ok: bool) -> None:
        """The policy watcher's hook: one call per attempted reload."""
        self._reloads.add(1, {"result": _result(ok)})

    def record_serving(self, serving: bool) -> None:
        """ReplicaHealth's hook: one call per change of what health says."""
        self._serving.set(int(serving))

    def record_spans_dropped(self, count: int, reason: str) -> None:
        self._spans_dropped.add(count, {"reason": reason})

    def tool_label(self, outcome: Outcome) -> str:
        call = outcome.subject or next(iter(outcome.calls), None)
        tool = call.tool if call is not None else None
        if tool is None:
            return NO_TOOL
        return tool if tool in self._known_tools() else OTHER_TOOL


class PolicyTools:
    """The tools the policy in force names, recomputed only when a reload swaps it."""

    def __init__(self, policy: Callable[[], Policy]) -> None:
        self._policy = policy
        self._cached: tuple[Policy, frozenset[str]] | None = None

    def __call__(self) -> frozenset[str]:
        policy = self._policy()
        if self._cached is None or self._cached[0] is not policy:
            self._cached = (policy, policy_tools(policy))
        return self._cached[1]


def _result(ok: bool) -> str:
    return "ok" if ok else "error"


def policy_tools(policy: Policy) -> frozenset[str]:
    """Every tool the policy names exactly, in any grant or in its hidden list."""
    grants = (policy.everyone, *policy.grants)
    named = {tool for grant in grants for tool in grant.tools.exact}
    return frozenset(named | (policy.hidden - {"*"}))


@dataclass(frozen=True, slots=True)
class PrometheusEndpoint:
    """`/metrics` for Prometheus to scrape, served from a thread of its own."""

    reader: PrometheusMetricReader
    server: WSGIServer
    thread: threading.Thread
    # host:port as bound (port 0 becomes the one taken)
    address: str

    @classmethod
    def start(cls, listen: str) -> PrometheusEndpoint:
        """Raises ValueError for an address that cannot be served, so start-up fails."""
        host, port = split_address(listen)
        # A registry of our own: the global one would refuse a second gateway in a process.
        registry = CollectorRegistry()
        reader = PrometheusMetricReader(registry=registry)
        try:
            server, thread = start_http_server(port, host, registry=registry)
        except OSError as e:
            raise ValueError(f"cannot serve metrics on {listen}: {e.strerror}") from None
        shown = f"[{host}]" if ":" in host else host
        return cls(reader, server, thread, f"{shown}:{server.server_port}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def split_address(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`; port 0 takes a free one."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address {listen!r} is not host:port")
    return host, int(port)
