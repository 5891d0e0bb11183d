"""Console sign-in over OIDC against a real local provider: real HTTP servers on real ports
(uvicorn, as the gateway serves the console), real redirects, PKCE, signed ID tokens."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from demo_oidc import CLIENT_ID, CLIENT_SECRET, Provider  # examples/, on sys.path

from authz.admin.actions import AdminActions
from authz.approvals.memory import MemoryApprovals
from authz.console.app import COOKIE, create_app
from authz.console.config import build_console
from authz.console.server import ConsoleServer, bind
from authz.limits.memory import MemoryStore
from authz.observe.audit import ArgumentAudit, AuditLog
from authz.observe.recent import RecentRecords
from authz.policy.load import parse_policy
from authz.policy.reload import PolicyHolder

ROLES = {"groups_claim": "groups", "roles": {"approver": ["group:treasury"]}}


@dataclass
class Stack:
    provider: Provider
    console_url: str


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    provider = Provider()
    provider_server = ConsoleServer(provider.app(), bind("127.0.0.1:0"))
    provider.issuer = f"http://127.0.0.1:{provider_server.port}"
    await provider_server.start()
    roles, secret = tmp_path / "roles.yaml", tmp_path / "client-secret"
    roles.write_text(yaml.safe_dump(ROLES))
    secret.write_text(CLIENT_SECRET + "\n")
    sock = bind("127.0.0.1:0")
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = build_console(
        "127.0.0.1:0",
        public_url=url,
        roles_file=roles,
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret_file=secret,
    )
    holder = PolicyHolder(parse_policy(b'{"version": "1"}', "policy.json"))
    audit = AuditLog(io.StringIO(), ArgumentAudit(b"k" * 32))
    actions = AdminActions(MemoryApprovals(), MemoryStore(), holder, audit)
    console = ConsoleServer(create_app(config, actions, RecentRecords()), sock)
    await console.start()
    yield Stack(provider, url)
    await console.stop()
    await provider_server.stop()


async def sign_in(http: httpx.AsyncClient, stack: Stack) -> httpx.Response:
    """Clicks "Sign in" and follows the browser's redirects to the provider and back."""
    signin = await http.get(f"{stack.console_url}/approvals", follow_redirects=True)
    assert 'href="/login"' in signin.text
    answer = await http.get(f"{stack.console_url}/login")
    hops = 0
    while answer.is_redirect and hops < 6:
        hops += 1
        answer = await http.get(str(answer.next_request.url) if answer.next_request else "")
    return answer


async def test_sign_in_with_the_code_flow_and_pkce(stack: Stack) -> None:
    stack.provider.user = {"sub": "u-1", "email": "tess@example.com", "groups": ["treasury"]}
    async with httpx.AsyncClient(timeout=10) as http:
        first = await http.get(f"{stack.console_url}/login")
        assert first.status_code == 302
        query = parse_qs(urlsplit(first.headers["location"]).query)
        assert query["code_challenge_method"] == ["S256"]
        assert query["redirect_uri"] == [f"{stack.console_url}/auth/callback"]
        page = await sign_in(http, stack)
        assert page.status_code == 200, page.text
        assert "tess@example.com" in page.text
        assert "approver" in page.text
        assert stack.provider.tokens_issued == 1
        # The session cookie is HttpOnly and SameSite=Lax (not Secure: the URL is http).
        cookie = next(h for h in first.headers.get_list("set-cookie") if COOKIE in h)
        assert "httponly" in cookie.lower()
        assert "samesite=lax" in cookie.lower()
        # Signing out ends the session.
        token = page.text.split('name="csrf" value="')[1].split('"')[0]
        await http.post(f"{stack.console_url}/logout", data={"csrf": token})
        after = await http.get(f"{stack.console_url}/approvals")
        assert after.status_code == 303
        assert after.headers["location"] == "/signin"


async def test_a_person_the_roles_file_does_not_name_is_not_signed_in(stack: Stack) -> None:
    stack.provider.user = {"sub": "u-2", "email": "eve@example.com", "groups": ["sales"]}
    async with httpx.AsyncClient(timeout=10) as http:
        page = await sign_in(http, stack)
        assert page.status_code == 403
        assert "eve@example.com has no role in this console" in page.text
        again = await http.get(f"{stack.console_url}/approvals")
        assert again.status_code == 303


async def test_a_callback_with_a_forged_state_is_refused(stack: Stack) -> None:
    stack.provider.user = {"sub": "u-1", "email": "tess@example.com", "groups": ["treasury"]}
    async with httpx.AsyncClient(timeout=10) as http:
        started = await http.get(f"{stack.console_url}/login")
        to_provider = await http.get(started.headers["location"])
        code = parse_qs(urlsplit(to_provider.headers["location"]).query)["code"][0]
        forged = await http.get(
            f"{stack.console_url}/auth/callback", params={"code": code, "state": "forged"}
        )
        assert forged.status_code == 403
        assert "refused the sign-in" in forged.text
        assert stack.provider.tokens_issued == 0
        assert (await http.get(f"{stack.console_url}/approvals")).status_code == 303
