"""An identity flag its --identity-source would ignore stops start-up and says what to add."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.cli import EXIT_BAD_INPUT, main

SEED = Path(__file__).resolve().parents[2] / "examples" / "policies" / "seed.json"


@pytest.mark.parametrize(
    ("flags", "fix"),
    [
        (["--identity-header", "x-agent-id"], "--identity-source header"),
        (
            ["--identity-header", "x-agent-id", "--identity-source", "jwt"],
            "--identity-source header",
        ),
        (["--identity-claim", "email"], "--identity-source jwt"),
        (["--jwt-payload-key", "p", "--identity-source", "mtls"], "--identity-source jwt"),
    ],
)
def test_a_flag_for_another_source_is_refused(
    flags: list[str], fix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--policy", str(SEED), *flags]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert f"{flags[0]} {flags[1]} has no effect" in error
    assert fix in error


def test_the_environment_twin_is_held_to_the_same_rule(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MCP_AUTHZ_IDENTITY_HEADER", "x-agent-id")
    assert main(["serve", "--policy", str(SEED)]) == EXIT_BAD_INPUT
    assert "--identity-header x-agent-id has no effect with --identity-source none" in (
        capsys.readouterr().err
    )
