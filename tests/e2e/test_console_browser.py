"""The console in a real browser: Debian's chromium, headless, driven by Playwright.

With the `make run` demo's policy and roles file, approvals, counters and the tool catalogue
in a real Redis, a person signs in through the demo's OIDC provider (code flow with PKCE),
watches an agent's withdrawal appear while the agent (the official MCP SDK client, through
Envoy) waits, approves it and sees the agent's retry pass, denies another, filters the
decisions, resets a counter and sees the catalogue. Each page is photographed;
`make console-screenshots` keeps the pictures in docs/console/.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from demo_oidc import (  # examples/, on sys.path
    CLIENT_ID,
    CLIENT_SECRET,
    DEMO_ACCOUNTS,
    DEMO_PASSWORD,
    Provider,
)
from mcp import Client, MCPError
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import RedisServer, free_port
from tests.e2e.conftest import REPO, GatewayFactory

pytestmark = pytest.mark.e2e

POLICY = REPO / "examples" / "policies" / "demo.yaml"
ROLES_FILE = REPO / "examples" / "console-roles.yaml"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
APPROVAL_REQUIRED = -32005
APPROVAL_DENIED = -32006
# How long an agent keeps retrying while its request waits for a person.
AGENT_PATIENCE = 60.0
RETRY_EVERY = 1.0
# How long Playwright waits at most for what a person would see (milliseconds).
SEE = 30_000
SCREENSHOTS = "MCP_AUTHZ_CONSOLE_SCREENSHOTS"
TRACE_LINK = re.compile(r"^http://grafana\.invalid/explore\?traceId=[0-9a-f]{32}$")


class Agent(threading.Thread):
    """An agent asking to transfer `amount` and retrying while its request is pending."""

    def __init__(self, url: str, amount: int) -> None:
        super().__init__(daemon=True)
        self.url, self.amount = url, amount
        self.codes: list[int] = []
        self.result = ""

    def run(self) -> None:
        try:
            self.result = asyncio.run(self._transfer())
        # Reported by the test's assertion rather than lost as a thread's exception.
        except Exception as e:
            self.result = f"failed: {e!r}"

    async def _transfer(self) -> str:
        deadline = time.monotonic() + AGENT_PATIENCE
        async with Client(self.url) as client:
            # As agents do: the listing is what the catalogue pins the tools to.
            await client.list_tools()
            while True:
                try:
                    await client.call_tool(
                        "transfer_funds", {"amount": self.amount, "to": "acct-1"}
                    )
                except MCPError as e:
                    self.codes.append(e.code)
                    if e.code == APPROVAL_DENIED:
                        return "denied"
                    if e.code != APPROVAL_REQUIRED or time.monotonic() > deadline:
                        return f"refused {e.code}"
                    await asyncio.sleep(RETRY_EVERY)
                else:
                    return "passed"


@pytest.fixture
def provider() -> Iterator[Provider]:
    """The demo's OIDC provider, with its login page and accounts, on a real port."""
    port = free_port()
    provider = Provider(issuer=f"http://127.0.0.1:{port}", accounts=DEMO_ACCOUNTS)
    server = uvicorn.Server(
        uvicorn.Config(provider.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield provider
    server.should_exit = True
    thread.join()


@pytest.fixture
def browser() -> Iterator[Browser]:
    # A bound on every wait for what a person would see, generous for loaded CI machines:
    # never a measure of speed (that is `make bench`).
    expect.set_options(timeout=SEE)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield chromium
        chromium.close()


class Shots:
    def __init__(self, page: Page, folder: Path) -> None:
        self.page, self.folder = page, folder
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> None:
        self.page.screenshot(path=self.folder / f"{name}.png", full_page=True)


def wait_for(agent: Agent) -> str:
    agent.join(AGENT_PATIENCE + 10)
    return agent.result


@pytest.mark.parametrize("transport", ["grpc"])
def test_approve_deny_filter_and_reset_in_the_browser(
    gateway_for: GatewayFactory,
    provider: Provider,
    browser: Browser,
    own_redis: RedisServer,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET)
    console = f"http://127.0.0.1:{free_port()}"
    flags = [
        "--redis-url", own_redis.url,
        "--catalogue", "on",
        "--console-listen", console.removeprefix("http://"),
        "--console-public-url", console,
        "--console-roles-file", str(ROLES_FILE),
        "--console-oidc-issuer", provider.issuer,
        "--console-oidc-client-id", CLIENT_ID,
        "--console-oidc-client-secret-file", str(secret),
        "--console-trace-url", "http://grafana.invalid/explore?traceId={trace_id}",
    ]  # fmt: skip
    with gateway_for(POLICY, *flags) as mcp_url:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        # Errors the console's pages report: a CSP refusal, a failed script or fetch (the
        # provider's login page is not ours, and has no favicon).
        page.on(
            "console",
            lambda m: (
                errors.append(m.text)
                if m.type == "error" and m.location.get("url", "").startswith(console)
                else None
            ),
        )
        shots = Shots(page, tmp_path / "screens")

        # Sign in: the console sends the browser to the provider and back.
        page.goto(f"{console}/approvals")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        shots.take("signin")
        page.get_by_role("link", name="Sign in with your identity provider").click()
        page.get_by_label("Account").fill("alice")
        page.get_by_label("Password").fill(DEMO_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("alice@example.com")).to_be_visible()
        expect(page.get_by_role("heading", name="Pending (0)")).to_be_visible()
        # An agent asks to move 500; the queue shows it without a reload.
        first = Agent(mcp_url, 500)
        first.start()
        row = page.get_by_role("row").filter(has_text="transfer_funds")
        expect(row).to_be_visible()
        expect(row).to_contain_text("anonymous")
        # Its risk class, from the catalogue: the demo server hints write, not destructive.
        expect(row).to_contain_text("write")
        shots.take("approvals")
        row.get_by_role("link", name="Review").click()
        expect(page.locator("pre.arguments")).to_contain_text('"amount": 500')
        page.get_by_label("Note (kept in the audit log)").fill("payroll run, checked")
        shots.take("approval")
        page.get_by_role("button", name="Approve").click()
        expect(page.get_by_role("status")).to_contain_text("Approved")
        assert wait_for(first) == "passed"
        assert first.codes[0] == APPROVAL_REQUIRED

        # Another agent asks to move 700; this one is denied.
        second = Agent(mcp_url, 700)
        second.start()
        row = page.get_by_role("row").filter(has_text="transfer_funds")
        expect(row).to_be_visible()
        row.get_by_role("link", name="Review").click()
        expect(page.locator("pre.arguments")).to_contain_text('"amount": 700')
        page.get_by_label("Note (kept in the audit log)").fill("not in this quarter's plan")
        page.get_by_role("button", name="Deny").click()
        expect(page.get_by_role("status")).to_contain_text("Denied")
        assert wait_for(second) == "denied"
        decided = page.get_by_role("region", name="Decided")
        expect(decided).to_contain_text("not in this quarter's plan")
        expect(decided).to_contain_text("payroll run, checked")

        # The denial among the decisions, by filter, with its trace link.
        page.get_by_role("link", name="Decisions").click()
        page.get_by_label("Outcome").select_option("approval_denied")
        page.get_by_role("button", name="Filter").click()
        rows = page.locator("table.decisions tbody tr")
        expect(rows.first).to_contain_text("approval_denied")
        for text in rows.all_inner_texts():
            assert "approval_denied" in text
        expect(rows.first.get_by_role("link", name="trace")).to_have_attribute("href", TRACE_LINK)
        page.get_by_label("Outcome").select_option("")
        page.get_by_role("button", name="Filter").click()
        shots.take("decisions")

        # The approved transfer drew one of ten; reset the counter.
        page.get_by_role("link", name="Usage").click()
        budget = page.get_by_role("row").filter(has_text="transfers")
        expect(budget).to_contain_text("1 / 10")
        shots.take("usage")
        budget.get_by_role("button", name="Reset").click()
        expect(page.get_by_role("status")).to_contain_text("Reset transfers")
        expect(page.get_by_role("row").filter(has_text="transfers")).to_contain_text("0 / 10")

        # The catalogue the agents' listings filled, classed by the policy in force.
        page.get_by_role("link", name="Tools").click()
        tool_row = page.get_by_role("row").filter(has_text="transfer_funds")
        expect(tool_row).to_contain_text("pinned")
        expect(tool_row).to_contain_text("write")
        closing = page.get_by_role("row").filter(has_text="close_account")
        expect(closing).to_contain_text("destructive")
        shots.take("tools")
        # Keyboard: the first Tab reaches the skip link, the next ones the navigation.
        page.keyboard.press("Tab")
        expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        page.keyboard.press("Tab")
        expect(page.get_by_role("link", name="Approvals")).to_be_focused()

        page.get_by_role("link", name="Policy").click()
        page.get_by_label("Tool").fill("transfer_funds")
        page.get_by_label("Arguments (JSON object)").fill('{"amount": 5000, "to": "acct-1"}')
        page.get_by_role("button", name="Explain").click()
        expect(page.locator(".answer")).to_contain_text("transfers")
        shots.take("policy")

        # No script or style was refused by the Content-Security-Policy, nothing failed.
        assert errors == []
    _keep(tmp_path / "screens")


def _keep(screens: Path) -> None:
    """Copies the screenshots to $MCP_AUTHZ_CONSOLE_SCREENSHOTS when it is set."""
    target = os.environ.get(SCREENSHOTS)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in screens.glob("*.png"):
            shutil.copy(shot, Path(target) / shot.name)
