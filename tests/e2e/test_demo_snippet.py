"""The Python snippet `make run` prints runs as a script against the demo's policy: the
agent's filtered tool list, then the 31st call refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from run_demo import DEMO_POLICY, python_snippet  # examples/, on sys.path from conftest

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
