"""`mcp-authz check`: bad JSON flags are named, and a closed pipe ends quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from authz.cli import EXIT_BAD_INPUT, EXIT_CLOSED_PIPE, main

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"
TOOL = "binance_us_create_listen_key"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--args", "{oops"], "--args is not valid JSON: Expecting property name"),
        (["--args", "[1]"], "--args must be a JSON object, got list: [1]"),
        (["--claims", "{"], "--claims is not valid JSON"),
        (["--claims", '"sub"'], "--claims must be a JSON object, got str"),
    ],
)
def test_a_bad_json_flag_is_named(
    flags: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(SEED), "--tool", TOOL, *flags]) == EXIT_BAD_INPUT
    assert expected in capsys.readouterr().err


def test_a_reader_that_went_away_gets_no_traceback() -> None:
    argv = [sys.executable, "-m", "authz", "check", str(SEED), "--tool", TOOL, "--json"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        # Closed before the child can have written: its first write meets a closed pipe.
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=30)
    assert (code, err) == (EXIT_CLOSED_PIPE, "")
