"""The layers of docs/architecture.md hold: import-linter's contracts in pyproject.toml.

Run as its own process: import-linter configures logging, which would leak into other tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_import_runs_up_a_layer_or_across_siblings() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
