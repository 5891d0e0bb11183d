"""Grant tokens through real Envoy, mcp-authz and the official Python SDK client.

Each client presents its grant token as `Authorization: Bearer`; the seed policy's 30 calls a
minute (`scope: grant`) are counted per token, a revoked token is refused on its very next
call with -32003 / 401 and a Bearer challenge, and the demo server (its --header-log) sees
its own credential on every request and never the agent's token.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from stack import HOST, SEED_POLICY, executable

from tests.conftest import free_port
from tests.e2e.conftest import GatewayFactory, UpstreamRequests
from tests.e2e.test_python_sdk import LISTEN_KEY, spend_the_seed_budget

pytestmark = pytest.mark.e2e

UNAUTHENTICATED = -32003
SEED_RULE = "/tools/binance_us_create_listen_key/limits/binance_us_create_listen_key_rate"
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"  # noqa: S105 (a test fixture)
UPSTREAM_SECRET = "upstream-only-secret-7f3a9c"  # noqa: S105 (a test fixture)
CLI_TIMEOUT = 60


@dataclass
class Responses:
    """Every HTTP response the SDK client received, as the SDK's own httpx client saw it."""

    seen: list[httpx2.Response] = field(default_factory=list)

    async def record(self, response: httpx2.Response) -> None:
        self.seen.append(response)


@dataclass
class GrantGateway:
    url: str
    admin_address: str
    admin_token_file: Path

    def grants(self, *argv: str) -> str:
        """`mcp-authz grants ...` against this gateway's admin API; its standard output."""
        common = ["--admin-address", self.admin_address, "--admin-token-file"]
        done = subprocess.run(
            [executable("mcp-authz"), "grants", *argv, *common, str(self.admin_token_file)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def create(self, label: str) -> str:
        """A new grant's token, as `grants create` prints it (once)."""
        out = self.grants("create", "--label", label)
        return next(line for line in out.splitlines() if line.startswith("mcpa_"))

    @asynccontextmanager
    async def client(self, token: str, responses: Responses | None = None) -> AsyncIterator[Client]:
        """The official SDK client presenting `token` as a bearer token on every request."""
        http = create_mcp_http_client(headers={"authorization": f"Bearer {token}"})
        if responses is not None:
            http.event_hooks["response"].append(responses.record)
        async with http, Client(streamable_http_client(self.url, http_client=http)) as client:
            yield client


def mcp_errors(group: BaseExceptionGroup[BaseException]) -> list[MCPError]:
    """The MCPErrors anywhere in an exception group, nested groups included."""
    found: list[MCPError] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            found += mcp_errors(error)
        elif isinstance(error, MCPError):
            found.append(error)
    return found


def token_flags(tmp_path: Path, *extra: str) -> tuple[str, ...]:
    """`serve` flags for identity source token with the admin API on a port of its own."""
    (tmp_path / "grant.key").write_bytes(b"k" * 32)
    (tmp_path / "admin-tokens").write_text(f"{ADMIN_TOKEN} e2e-admin\n")
    return (
        "--identity-source", "token",
        "--grant-key-file", str(tmp_path / "grant.key"),
        "--grants-file", str(tmp_path / "grants.json"),
        "--admin-listen", f"{HOST}:{free_port()}",
        "--admin-tokens-file", str(tmp_path / "admin-tokens"),
        *extra,
    )  # fmt: skip


def gateway_with_tokens(
    gateway_for: GatewayFactory, tmp_path: Path, policy: Path, *extra: str
) -> Iterator[GrantGateway]:
    flags = token_flags(tmp_path, *extra)
    admin_address = flags[flags.index("--admin-listen") + 1]
    token_file = tmp_path / "my-admin-token"
    token_file.write_text(ADMIN_TOKEN)
    with gateway_for(policy, *flags) as url:
        yield GrantGateway(url, admin_address, token_file)


@pytest.fixture
def grant_gateway(gateway_for: GatewayFactory, tmp_path: Path) -> Iterator[GrantGateway]:
    """The seed policy, grant tokens, and no upstream credential of its own."""
    yield from gateway_with_tokens(gateway_for, tmp_path, SEED_POLICY)


@pytest.fixture
def credentialed_gateway(gateway_for: GatewayFactory, tmp_path: Path) -> Iterator[GrantGateway]:
    """As `grant_gateway`, with the upstream's own bearer token set by the gateway."""
    secret = tmp_path / "upstream-bearer"
    secret.write_text(UPSTREAM_SECRET + "\n")
    yield from gateway_with_tokens(
        gateway_for, tmp_path, SEED_POLICY, "--upstream-bearer-file", str(secret)
    )


async def test_each_token_has_its_own_thirty_calls_a_minute(grant_gateway: GrantGateway) -> None:
    alice = grant_gateway.create("alice-laptop")
    ci = grant_gateway.create("ci-runner")
    async with grant_gateway.client(alice) as client:
        data = await spend_the_seed_budget(client)
    assert (data["rule"], data["tool"]) == (SEED_RULE, LISTEN_KEY)
    async with grant_gateway.client(ci) as client:
        assert not (await client.call_tool(LISTEN_KEY)).is_error


async def test_a_revoked_token_is_refused_on_its_next_call(grant_gateway: GrantGateway) -> None:
    token = grant_gateway.create("ci-runner")
    responses = Responses()
    async with grant_gateway.client(token, responses) as client:
        assert not (await client.call_tool(LISTEN_KEY)).is_error
        grant_gateway.grants("revoke", "ci-runner")
        before = len(responses.seen)
        with pytest.raises(MCPError) as refused:
            await client.call_tool(LISTEN_KEY)
    assert refused.value.code == UNAUTHENTICATED
    (answer,) = responses.seen[before : before + 1]
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="mcp-authz"'


async def test_an_unknown_token_is_refused_before_the_session_starts(
    grant_gateway: GrantGateway,
) -> None:
    responses = Responses()
    # The SDK's connect raises from its task group: the MCPError arrives in a group.
    with pytest.raises(ExceptionGroup) as failed:
        async with grant_gateway.client("mcpa_" + "x" * 43, responses):
            pass
    assert {e.code for e in mcp_errors(failed.value)} == {UNAUTHENTICATED}
    assert {r.status_code for r in responses.seen} == {401}


async def test_upstream_sees_its_own_credential_and_never_the_grant_token(
    credentialed_gateway: GrantGateway, upstream_requests: UpstreamRequests
) -> None:
    token = credentialed_gateway.create("alice-laptop")
    responses = Responses()
    async with credentialed_gateway.client(token, responses) as client:
        assert not (await client.call_tool(LISTEN_KEY)).is_error
        await client.list_tools(cache_mode="bypass")
    seen = upstream_requests.seen()
    assert seen, "the demo server logged no request"
    for request in seen:
        authorization = [v for k, v in request["headers"] if k == "authorization"]
        assert authorization == [f"Bearer {UPSTREAM_SECRET}"], request
        assert not any(token in v for _, v in request["headers"]), request
    for response in responses.seen:
        assert UPSTREAM_SECRET not in str(response.headers), response.headers


async def test_without_an_upstream_credential_no_authorization_goes_upstream(
    grant_gateway: GrantGateway, upstream_requests: UpstreamRequests
) -> None:
    token = grant_gateway.create("alice-laptop")
    async with grant_gateway.client(token) as client:
        assert not (await client.call_tool(LISTEN_KEY)).is_error
    seen = upstream_requests.seen()
    assert seen, "the demo server logged no request"
    for request in seen:
        assert "authorization" not in {k for k, _ in request["headers"]}, request
        assert not any(token in v for _, v in request["headers"]), request
