"""`mcp-authz scan` against a real MCP server built on the official SDK, over both revisions:
it follows pagination, prints each tool's class, sends the operator's headers, writes a
starter policy that `mcp-authz validate` loads and `mcp-authz check` decides as intended, and
fails with a message on a server it cannot reach or that is not MCP."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from mcp import types
from mcp.server import Server
from starlette.types import ASGIApp, Receive, Scope, Send

from authz.cli import main
from authz.policy.scaffold import classify_tools
from authz.protocol.tools import parse_tool
from authz.scan.command import table
from tests.conftest import free_port

TOKEN = "Bearer scan-test-t0ken"  # noqa: S105 - a test server's own token
PAGE = 2
# (name, annotations, description): read, write, destructive, unannotated, a would-be glob.
TOOLS: list[tuple[str, dict[str, Any] | None, str]] = [
    ("get_balance", {"readOnlyHint": True}, "Read an account balance."),
    ("create_order", {"readOnlyHint": False, "destructiveHint": False}, "Place an order."),
    ("delete_account", {"destructiveHint": True, "openWorldHint": False}, "Close an account."),
    ("ping", None, "Unannotated: destructive by the specification's defaults."),
    ("evil_*", {"readOnlyHint": True}, "A name that would be a pattern as a policy key."),
]


async def list_tools(_ctx: Any, params: types.PaginatedRequestParams | None) -> Any:
    start = int(params.cursor) if params is not None and params.cursor else 0
    page = [
        types.Tool(
            name=name,
            description=description,
            input_schema={"type": "object"},
            annotations=types.ToolAnnotations(**hints) if hints else None,
        )
        for name, hints, description in TOOLS[start : start + PAGE]
    ]
    more = start + PAGE < len(TOOLS)
    return types.ListToolsResult(tools=page, next_cursor=str(start + PAGE) if more else None)


class RequireToken:
    """The server's auth: 401 without the bearer token the scan is given."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        if scope["type"] == "http" and headers.get(b"authorization") != TOKEN.encode():
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    app = Server("scan-test", on_list_tools=list_tools).streamable_http_app()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(RequireToken(app), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # uvicorn sets it once the socket listens
        if not thread.is_alive():
            pytest.fail("the test MCP server did not start")
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join()


@pytest.fixture
def header_file(tmp_path: Path) -> Path:
    path = tmp_path / "headers"
    path.write_text(f"# the token stays off the command line\nAuthorization: {TOKEN}\n")
    return path


def scan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["scan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def classes(out: str) -> dict[str, str]:
    rows = [line.split() for line in out.splitlines()]
    return {row[0]: row[1] for row in rows if row and row[0] in {t[0] for t in TOOLS}}


@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
def test_scan_lists_every_page_with_untrusted_classes(
    capsys: pytest.CaptureFixture[str], server_url: str, header_file: Path, protocol: str
) -> None:
    code, out, err = scan(
        capsys, server_url, "--header-file", str(header_file), "--protocol", protocol
    )
    assert (code, err) == (0, "")
    assert f"protocol {protocol}" in out
    assert classes(out) == {
        "get_balance": "write",  # its readOnlyHint alone cannot make it read
        "create_order": "write",
        "delete_account": "destructive",
        "ping": "destructive",
        "evil_*": "write",
    }
    assert "annotations are untrusted hints" in out
    assert "'evil_*' is left out of the policy" in out


def test_trusted_annotations_make_read_tools_read(
    capsys: pytest.CaptureFixture[str], server_url: str
) -> None:
    code, out, _ = scan(
        capsys, server_url, "--header", f"Authorization: {TOKEN}", "--trust-annotations"
    )
    assert code == 0
    assert classes(out)["get_balance"] == "read"
    assert classes(out)["delete_account"] == "destructive"
    assert "untrusted" not in out


# What `mcp-authz check` says of each tool in the written policy: exit status and a phrase.
EXPECTED = {
    "native": {
        "get_balance": (0, ""),
        "create_order": (0, "30 per 60s, scope grant"),
        "delete_account": (0, "approv"),
        "evil_x": (1, "default deny"),
        "unlisted": (1, "default deny"),
    },
    "intercept": {
        "get_balance": (0, ""),
        "create_order": (0, "30 per 60s, scope global"),
        "delete_account": (1, "needs approval"),
        "evil_x": (1, "default deny"),
        "unlisted": (1, "default deny"),
    },
}
EXPECTED["yaml"] = EXPECTED["native"]


@pytest.mark.parametrize("fmt", ["native", "yaml", "intercept"])
def test_the_written_policy_validates_and_decides_as_intended(
    capsys: pytest.CaptureFixture[str], server_url: str, header_file: Path, tmp_path: Path, fmt: str
) -> None:
    policy = tmp_path / ("policy.json" if fmt == "native" else "policy.yaml")
    code, out, _ = scan(
        capsys,
        server_url,
        "--header-file",
        str(header_file),
        "--trust-annotations",
        "--output",
        str(policy),
        "--format",
        fmt,
    )
    assert code == 0, out
    assert f"wrote {policy}" in out
    assert main(["validate", str(policy)]) == 0
    capsys.readouterr()
    for tool, (status, phrase) in EXPECTED[fmt].items():
        assert main(["check", str(policy), "--tool", tool]) == status, tool
        assert phrase in capsys.readouterr().out, tool


def test_an_existing_output_is_not_overwritten(
    capsys: pytest.CaptureFixture[str], server_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text("keep me")
    code, _, err = scan(capsys, server_url, "--output", str(policy))
    assert code == 2
    assert "pass --force" in err
    assert policy.read_text() == "keep me"


def test_a_server_refusing_the_credentials_fails_clearly(
    capsys: pytest.CaptureFixture[str], server_url: str
) -> None:
    code, out, err = scan(capsys, server_url, "--header", "Authorization: Bearer wrong")
    assert (code, out) == (2, "")
    assert f"cannot list the tools of {server_url}" in err
    assert "wrong" not in err


def test_an_unreachable_server_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    code, _, err = scan(capsys, url, "--timeout", "5")
    assert code == 2
    assert f"cannot list the tools of {url}" in err


def test_a_server_that_is_not_mcp_fails_clearly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{web.server_address[1]}/"
        code, _, err = scan(capsys, url, "--timeout", "5")
    finally:
        web.shutdown()
        web.server_close()
    assert code == 2
    assert f"cannot list the tools of {url}" in err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("# ok\nBearer s3cret-without-a-name\n", "2: expected 'NAME: VALUE'"),
        (
            "Authorization: Bearer s3cret\x00\n",
            "1: header 'Authorization': its value has a control",
        ),
    ],
)
def test_a_bad_header_file_line_names_the_file_and_line_not_the_value(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "headers"
    path.write_text(text)
    code, _, err = scan(capsys, "http://127.0.0.1:1/mcp", "--header-file", str(path))
    assert code == 2
    assert f"{path}:{problem}" in err
    assert "s3cret" not in err


@pytest.mark.parametrize(
    ("bound", "value", "message"),
    [
        ("MAX_PAGES", 2, "tools/list has more than 2 pages"),
        ("MAX_TOOLS", 3, "lists more than 3 tools"),
        ("MAX_RESPONSE_BYTES", 300, "response from the server is over 300 bytes"),
    ],
)
def test_what_the_server_sends_is_bounded(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    server_url: str,
    header_file: Path,
    bound: str,
    value: int,
    message: str,
) -> None:
    monkeypatch.setattr(f"authz.scan.client.{bound}", value)
    code, out, err = scan(capsys, server_url, "--header-file", str(header_file))
    assert (code, out) == (2, "")
    assert message in err


def test_an_oversized_tool_definition_is_skipped_and_said_so(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    server_url: str,
    header_file: Path,
) -> None:
    # delete_account's definition is 163 bytes of JSON, get_balance's 140.
    monkeypatch.setattr("authz.scan.client.MAX_TOOL_BYTES", 160)
    code, out, _ = scan(capsys, server_url, "--header-file", str(header_file))
    assert code == 0
    assert "delete_account" not in classes(out)
    assert "get_balance" in classes(out)
    assert "note: skipped 'delete_account': its definition is over 160 bytes" in out


def test_the_table_prints_no_control_characters_and_bounded_cells() -> None:
    entry = {
        "name": "t",
        "description": "\x1b]0;owned\x07" + "x" * 500,
        "annotations": {"readOnlyHint": True, "title": "y" * 10_000},
    }
    [row] = table(classify_tools([parse_tool(entry)], trusted=False)).splitlines()[1:]
    assert "\x1b" not in row
    assert "\x07" not in row
    assert "title" not in row
    assert len(row) < 200


def test_a_header_without_a_name_is_refused_without_echoing_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["scan", "http://127.0.0.1:1/mcp", "--header", "Bearer s3cret"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "expected 'NAME: VALUE'" in err
    assert "s3cret" not in err


def test_headers_over_plain_http_to_another_host_are_warned_about(
    capsys: pytest.CaptureFixture[str], server_url: str
) -> None:
    url = "http://192.0.2.1:9/mcp"  # TEST-NET-1: never answers
    _, _, err = scan(capsys, url, "--header", f"Authorization: {TOKEN}", "--timeout", "1")
    assert f"note: {url} is plain http: the headers cross the network unencrypted" in err
    _, _, err = scan(capsys, server_url, "--header", f"Authorization: {TOKEN}")
    assert err == ""


def test_the_cli_starts_without_the_sdk_and_scan_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `mcp` is not a runtime dependency: loading the CLI must not import it.
    probe = "import sys, authz.cli; print('mcp' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "False"
    # As if mcp were missing: no module, and no attribute left by an earlier scan's import.
    monkeypatch.setitem(sys.modules, "authz.scan.client", None)
    monkeypatch.delattr("authz.scan.client", raising=False)
    code, _, err = scan(capsys, "http://127.0.0.1:1/mcp")
    assert code == 2
    assert "pip install 'mcp-authz[scan]'" in err
