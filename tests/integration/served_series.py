"""Every series a real gateway serves on /metrics, for the tests of what reads them.

The Grafana dashboard (test_dashboard.py) and the chart's alerts (test_k8s_monitoring.py) may
only read series that exist. This runs a gateway with its Prometheus endpoint on, Redis
unreachable (fail mode open) and the collector unreachable: spans pile up and are dropped, the
store fails, the fail mode decides, an allowed and a denied tool are called, and the policy is
reloaded. Everything then has a series, labels included.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz.core.decision import FailMode
from authz.edges.authz_grpc import create_server
from authz.policy.reload import PolicyWatcher
from authz.runner import Gateway
from authz.settings import Settings
from tests.integration.test_grpc_server import check_request, tool_call

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    labels: dict[str, str]
    value: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(address: str) -> list[Series]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        Series(sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


async def serve_every_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Series]:
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "1")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
    policy = tmp_path / "policy.json"
    shutil.copy(SEED, policy)
    metrics_at = f"127.0.0.1:{free_port()}"
    settings = Settings(
        policy=policy,
        redis_url=f"redis://127.0.0.1:{free_port()}",
        fail_mode=FailMode.OPEN,
        audit_log="off",
        metrics_listen=metrics_at,
    )
    gateway = Gateway.build(settings)
    server, port, _ = await create_server(
        "127.0.0.1:0", gateway.decider(), gateway.audit, gateway.telemetry
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            for rid, tool in enumerate(["binance_us_create_listen_key", "transfer_funds"] * 3):
                await stub.Check(check_request(tool_call(tool, rid=rid)))
        watcher = PolicyWatcher(policy, gateway.policy, gateway.telemetry.metrics.record_reload)
        # Renamed over the old file, as a ConfigMap update does, so it applies at once.
        fresh = policy.with_name("policy.new")
        fresh.write_text(SEED.read_text().replace('"max": 30', '"max": 20'))
        fresh.replace(policy)
        assert await watcher.check() is True
        return scrape(metrics_at)
    finally:
        await server.stop(None)
        await gateway.store.close()
        gateway.telemetry.shutdown()
