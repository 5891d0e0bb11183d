"""The official TypeScript SDK client (1.x) through Envoy and mcp-authz.

That client turns any non-2xx answer to a POST into a transport error, so this checks that
refusals reach it as JSON-RPC errors (McpError with our code and data) and that its session
(2025-11-25, Mcp-Session-Id) is still the same and still works afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

LISTEN_KEY = "binance_us_create_listen_key"
LIMIT = 30
WINDOW_SECONDS = 60
NODE_TIMEOUT = 60


def run_client(script: Path, url: str, *calls: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is needed for the TypeScript SDK end-to-end test"
    result = subprocess.run(
        [node, str(script), url, *calls],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def assert_refusal(call: dict[str, Any], code: int, tool: str) -> dict[str, Any]:
    assert not call["ok"], call
    error = call["error"]
    assert error["name"] == "McpError", error
    assert error["code"] == code
    data: dict[str, Any] = error["data"]
    assert data["tool"] == tool
    assert data["rule"]
    assert data["reason"]
    assert data["reason"] in error["message"]
    return data


def test_refusals_reach_the_typescript_client_and_session_survives(
    ts_client: Path, gateway: str
) -> None:
    report = run_client(ts_client, gateway, "transfer_funds:1", f"{LISTEN_KEY}:{LIMIT + 1}")

    assert report["protocolVersion"] == "2025-11-25"
    assert report["sessionId"]
    denied, *within_limit, limited = report["calls"]

    assert_refusal(denied, -32000, "transfer_funds")
    assert len(within_limit) == LIMIT
    assert all(call["ok"] and not call["isError"] for call in within_limit), within_limit
    data = assert_refusal(limited, -32001, LISTEN_KEY)
    assert LISTEN_KEY in data["rule"]
    assert 0 < data["retry_after"] <= WINDOW_SECONDS

    assert report["listTools"]["ok"], report["listTools"]
    # Filtered for the caller (ext_proc): the seed policy lets it call this one tool only.
    assert report["listTools"]["tools"] == [LISTEN_KEY]
    assert report["sessionIdAfter"] == report["sessionId"]
    assert report["terminate"]["ok"], report["terminate"]
