"""One version everywhere: the package, its installed metadata and `mcp-authz --version`."""

from __future__ import annotations

from importlib.metadata import version

import pytest

import authz
from authz.cli import main


def test_the_installed_metadata_carries_the_package_version() -> None:
    # pyproject.toml reads it from authz/__init__.py; a stale install would differ here.
    assert version("mcp-authz") == authz.__version__


def test_version_flag_prints_it_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"mcp-authz {authz.__version__}\n"
