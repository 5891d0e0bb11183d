"""The Python snippet `make run` prints runs as a script against the demo's policy: the
agent's filtered tool list, then the 31st call refused."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from run_demo import (  # examples/, on sys.path from conftest
    CURL_BODY,
    CURL_HEADERS,
    DEMO_POLICY,
    python_snippet,
)

from tests.e2e.conftest import GatewayFactory

pytestmark = pytest.mark.e2e
LIMIT = 30


def test_the_printed_snippet_shows_the_filtered_list_and_refuses_the_31st_call(
    gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    script = tmp_path / "demo_calls.py"
    with gateway_for(DEMO_POLICY) as gateway:
        script.write_text(python_snippet(gateway))
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
        )
    assert result.returncode == 0, result.stderr
    tools, *lines = result.stdout.splitlines()
    # The demo server offers four tools; the demo policy lets the agent call two.
    assert tools == "tools: ['binance_us_create_listen_key', 'transfer_funds']"
    assert lines[:LIMIT] == [f"{n} allowed" for n in range(1, LIMIT + 1)]
    assert lines[LIMIT].startswith("31 refused: Rate limited")
    assert len(lines) == LIMIT + 1


def test_the_printed_curl_asks_for_an_approval(gateway_for: GatewayFactory) -> None:
    """The newcomer's first step: the transfer of 500 is refused with -32005 and an approval
    id to approve in the console (tests/e2e/test_console_browser.py does the rest)."""
    with gateway_for(DEMO_POLICY) as gateway:
        request = urllib.request.Request(gateway, CURL_BODY.encode(), CURL_HEADERS)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310 - our own URL
            status, answer = reply.status, json.loads(reply.read())
    assert status == 200
    assert answer["error"]["code"] == -32005
    assert "apr_" in answer["error"]["message"]
