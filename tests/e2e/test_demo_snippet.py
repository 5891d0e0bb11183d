"""The Python snippet `make run` prints runs as a script: the agent's filtered tool list, then
the 31st call refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from run_demo import python_snippet  # examples/, on sys.path from conftest

pytestmark = pytest.mark.e2e
LIMIT = 30


def test_the_printed_snippet_shows_the_filtered_list_and_refuses_the_31st_call(
    gateway: str, tmp_path: Path
) -> None:
    script = tmp_path / "demo_calls.py"
    script.write_text(python_snippet(gateway))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    tools, *lines = result.stdout.splitlines()
    # The demo server offers four tools; the seed policy lets the agent call one.
    assert tools == "tools: ['binance_us_create_listen_key']"
    assert lines[:LIMIT] == [f"{n} allowed" for n in range(1, LIMIT + 1)]
    assert lines[LIMIT].startswith("31 refused: Rate limited")
    assert len(lines) == LIMIT + 1
