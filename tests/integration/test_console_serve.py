"""`mcp-authz serve --console-listen`: the console served by the gateway's own process, in its
event loop, stopped with it on SIGTERM; and the flags that must stop start-up."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.test_startup import wait_for

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "examples" / "policies" / "demo.yaml"
ROLES = REPO / "examples" / "console-roles.yaml"


def serve(*flags: str) -> list[str]:
    return [sys.executable, "-m", "authz", "serve", "--policy", str(POLICY), *flags]


def get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - our own http URL
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def test_the_console_serves_beside_the_checks_and_stops_on_sigterm(tmp_path: Path) -> None:
    console = free_port()
    argv = serve(
        "--listen", f"127.0.0.1:{free_port()}",
        "--console-listen", f"127.0.0.1:{console}",
        "--console-roles-file", str(ROLES),
        "--console-trusted-header", "x-forwarded-email",
        "--audit-log", "off", "--grace", "1",
    )  # fmt: skip
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            wait_for(iter(proc.stderr.readline, ""), "serving ext_authz")
            url = f"http://127.0.0.1:{console}/approvals"
            status, page = get(url, {"x-forwarded-email": "a", "x-forwarded-groups": "treasury"})
            assert status == 200
            assert "Pending (0)" in page
            # The same request without the proxy's header is nobody's.
            assert get(url, {})[0] == 401
        finally:
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=20)
        assert proc.returncode == 0, errors


TRUSTED = ("--console-roles-file", str(ROLES), "--console-trusted-header", "x-user")
WORKERS = ("--workers", "2", "--redis-url", "redis://127.0.0.1:1")


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ((), "needs --console-roles-file"),
        (("--console-roles-file", str(ROLES)), "one way to sign people in"),
        ((*TRUSTED, *WORKERS), "--console-listen serves from one process"),
        (
            ("--console-roles-file", str(REPO / "README.md"), "--console-trusted-header", "x"),
            "README.md",
        ),
    ],
)
def test_console_flags_that_cannot_work_stop_start_up(flags: tuple[str, ...], problem: str) -> None:
    argv = serve("--console-listen", f"127.0.0.1:{free_port()}", *flags)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert problem in result.stderr
