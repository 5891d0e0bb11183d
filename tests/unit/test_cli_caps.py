"""Caps that cannot hold stop start-up, naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.cli import EXIT_BAD_INPUT, main

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--approvals-max-pending", "0"], "0 (--approvals-max-pending)"),
        (["--approvals-max-pending-per-identity", "-3"], "-3 (--approvals-max-pending-per"),
        (["--max-sessions-per-identity", "0"], "0 (--max-sessions-per-identity)"),
        (["--memory-store-max-keys", "0"], "0 (--memory-store-max-keys)"),
    ],
)
def test_a_cap_below_one_is_refused(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--policy", str(SEED), *flags]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "must be at least 1" in error
    assert named in error


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--lease-min-limit", "-1"], "--lease-min-limit >= 0 (got -1)"),
        (["--lease-fraction", "0.5"], "--lease-fraction <= 0.1 (got 0.5)"),
        (["--lease-fraction", "0"], "--lease-fraction <= 0.1 (got 0.0)"),
        (["--lease-max", "0"], "--lease-max >= 1 (got 0)"),
        (["--lease-life", "0.2"], "--lease-life <= 0.1 (got 0.2)"),
    ],
)
def test_a_lease_setting_out_of_range_is_refused(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--policy", str(SEED), *flags]) == EXIT_BAD_INPUT
    assert named in capsys.readouterr().err
