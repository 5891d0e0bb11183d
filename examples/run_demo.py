"""The `make run` demo: the demo MCP server behind Envoy, guarded by mcp-authz.

Starts the demo OIDC provider (:9400), the demo MCP server (:8000), mcp-authz with the demo
policy (the seed's rule plus transfers that wait for a person), the in-process store and the
console (:9191, console :9300), and Envoy with deploy/envoy/envoy.yaml (:10000, admin
:9901); waits until all serve, says how to call them and where to approve, and stops them
all on Ctrl-C or SIGTERM (or when one dies).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import textwrap
from pathlib import Path
from types import FrameType

from demo_oidc import CLIENT_ID, CLIENT_SECRET, DEMO_ACCOUNTS, DEMO_PASSWORD
from mcp import Client
from stack import (
    HOST,
    REPO,
    Ports,
    Stack,
    StartupError,
    running_stack,
    start_demo_oidc,
)

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
DEMO_POLICY = REPO / "examples" / "policies" / "demo.yaml"
CONSOLE_ROLES = REPO / "examples" / "console-roles.yaml"
CONSOLE_PORT = 9300
OIDC_PORT = 9400
CONSOLE_URL = f"http://{HOST}:{CONSOLE_PORT}"

# The curl line's headers, as a 2026-07-28 client sends them (tests/e2e/test_demo_snippet.py
# sends the same request).
CURL_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "transfer_funds",
}
CURL_BODY = (
    '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"transfer_funds",'
    '"arguments":{"amount":500,"to":"mallory"},"_meta":{'
    '"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
    '"io.modelcontextprotocol/clientCapabilities":{}}}}'
)


def python_snippet(url: str) -> str:
    """A whole script, runnable as it is printed: the agent's tool list (filtered for it by
    ext_proc), then 31 calls, the last one refused."""
    return f'''import asyncio

from mcp import Client, MCPError


async def main() -> None:
    async with Client("{url}") as client:
        listing = await client.list_tools()
        print("tools:", [tool.name for tool in listing.tools])
        for n in range(1, 32):
            try:
                await client.call_tool("binance_us_create_listen_key")
                print(n, "allowed")
            except MCPError as e:
                print(n, "refused:", e.error.message)


asyncio.run(main())
'''


async def pin_tools(url: str) -> list[str]:
    """One tools/list through the gateway, so the tool catalogue pins every tool the server
    offers before the first call: a call of a tool never listed is refused. Returns what this
    caller's list shows (ext_proc filters it)."""
    async with Client(url) as client:
        listing = await client.list_tools()
    return [tool.name for tool in listing.tools]


def console_flags(workdir: Path) -> tuple[str, ...]:
    """`serve` flags for the console, signing people in through the demo OIDC provider."""
    secret = workdir / "console-client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    return (
        "--console-listen", f"{HOST}:{CONSOLE_PORT}",
        "--console-public-url", CONSOLE_URL,
        "--console-roles-file", str(CONSOLE_ROLES),
        "--console-oidc-issuer", f"http://{HOST}:{OIDC_PORT}",
        "--console-oidc-client-id", CLIENT_ID,
        "--console-oidc-client-secret-file", str(secret),
    )  # fmt: skip


def curl_line(url: str) -> str:
    headers = " ".join(f"-H '{k}: {v}'" for k, v in CURL_HEADERS.items())
    return f"curl -s {url} {headers} \\\n    -d '{CURL_BODY}'"


def instructions(stack: Stack, workdir: Path) -> str:
    url = stack.ports.mcp_url
    accounts = ", ".join(
        f"{name} ({claims['groups'][0]})" for name, (_, claims) in DEMO_ACCOUNTS.items()
    )
    return f"""
mcp-authz demo is up. MCP endpoint (through Envoy): {url}
Policy {DEMO_POLICY.name}: default deny; binance_us_create_listen_key allowed 30 times a
minute; transfer_funds over 100 waits for a person from treasury.

Console: {CONSOLE_URL}  (sign in as alice, password {DEMO_PASSWORD}; accounts: {accounts})
The tool catalogue has pinned the server's tools (its Tools page): a tool whose definition
changes is refused until someone accepts it, and arguments must match each tool's schema.

Ask to transfer 500 (refused with a JSON-RPC error, HTTP 200: an approval is requested):
  {curl_line(url)}
The request appears in the console's Approvals page; approve it there, run the same curl
again and the transfer goes through (once).

From Python (official SDK): the server offers four tools, the agent's tools/list shows the
two the policy lets it call, and the 31st call within a minute is refused; save as
demo_calls.py and run it with .venv/bin/python demo_calls.py:
{textwrap.indent(python_snippet(url), "  ")}
mcp-authz decisions print below; demo server, OIDC provider and Envoy logs are in
{workdir}.
Ctrl-C stops them all.
"""


def wait_for_stop(stack: Stack) -> signal.Signals | None:
    """Block until Ctrl-C or SIGTERM (returned) or until one of the processes dies (None)."""
    waited = {*STOP_SIGNALS, signal.SIGCHLD}
    # Blocked only now: children inherit the mask, and must still die on SIGTERM. A child
    # that died before this line sent a SIGCHLD nobody saw, hence the check after it.
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    while stack.all_running():
        received = signal.sigwait(waited)
        if received in STOP_SIGNALS:
            return signal.Signals(received)
    return None


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM while starting up unwinds like Ctrl-C, so started processes are stopped."""
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="mcp-authz-demo-"))
    ports = Ports()
    try:
        ports.ensure_free()
        with running_stack(
            ports,
            DEMO_POLICY,
            workdir,
            authz_log=None,
            # The tool catalogue (docs/catalogue.md): pins each tool's definition, validates
            # arguments strictly, classes tools by risk; ext_proc feeds it the lists.
            authz_options=("--catalogue", "on", *console_flags(workdir)),
            before=(lambda: start_demo_oidc(OIDC_PORT, workdir / "demo_oidc.log"),),
        ) as stack:
            asyncio.run(pin_tools(stack.ports.mcp_url))
            print(instructions(stack, workdir), flush=True)
            received = wait_for_stop(stack)
            if received is None:
                dead = ", ".join(p.name for p in stack.processes if not p.running())
                print(f"\n{dead} exited; stopping the rest (logs in {workdir})", file=sys.stderr)
                return 1
            print(f"\nstopping ({received.name})", flush=True)
    except StartupError as error:
        print(error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted while starting; stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
