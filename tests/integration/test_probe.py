"""`mcp-authz probe`: one real Check against a running `mcp-authz serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.checks import serving_port
from tests.conftest import free_port

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    argv = [sys.executable, "-m", "authz", "serve", "--policy", str(SEED)]
    argv += ["--listen", "127.0.0.1:0", "--audit-log", "off"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        yield f"127.0.0.1:{serving_port(proc.stderr)}"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "authz", "probe", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_an_allowed_tool(address: str) -> None:
    result = probe(address, "--tool", "binance_us_create_listen_key")
    assert (result.returncode, result.stdout) == (
        0,
        "binance_us_create_listen_key: allowed (status OK)\n",
    )


def test_a_denied_tool_is_still_a_working_gateway(address: str) -> None:
    result = probe(address, "--tool", "transfer_funds", "--identity-header", "x-agent-id=a")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("transfer_funds: denied (status PERMISSION_DENIED, HTTP ")
    assert "JSON-RPC error -32000: Denied by policy" in result.stdout


def test_no_answer_exits_1_and_says_why() -> None:
    result = probe(f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert result.returncode == 1
    assert "did not answer: DEADLINE_EXCEEDED" in result.stderr


def test_a_bad_header_is_refused_by_the_parser() -> None:
    result = probe("127.0.0.1:1", "--identity-header", "no-equals-sign")
    assert result.returncode == 2
    assert "expected NAME=VALUE" in result.stderr
