"""The approval webhook against a real HTTP server on a free port.

Backoff delays are recorded by an injected sleep instead of being waited out.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.approvals.base import Approval, Request, Status
from authz.approvals.webhook import ApprovalWebhook, read_secret, signature
from authz.core.decision import Decider
from authz.limits.memory import MemoryStore
from authz.policy.load import parse_policy
from authz.protocol.identity import FromHeader
from tests.unit.support import Gate

SECRET = b"webhook-secret-0123456789"


@dataclass
class Receiver:
    """A real HTTP server answering with `statuses` in turn (then 200), keeping each POST."""

    server: ThreadingHTTPServer
    statuses: list[int] = field(default_factory=list)
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            state.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    state.server.RequestHandlerClass = Handler
    thread = threading.Thread(target=state.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    state.server.shutdown()
    state.server.server_close()
    thread.join()


class Delays(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def approval(n: int = 1) -> Approval:
    request = Request(
        "agent", "default", "withdraw", {"amount": 900 + n, "to": "acct-ü"}, "/tools/withdraw",
        "Withdrawals need a person", ("alice",), {"groups": ("treasury",)},
    )  # fmt: skip
    return Approval(f"apr_{n}", Status.PENDING, request, 1_800_000_000.0, 1_800_000_900.0)


async def test_posts_the_request_signed(receiver: Receiver) -> None:
    hook = ApprovalWebhook(receiver.url, SECRET)
    hook.start()
    hook.notify(approval())
    await hook.drain()
    await hook.close()
    ((headers, body),) = receiver.posts
    assert json.loads(body) == {
        "event": "approval.requested",
        "id": "apr_1",
        "status": "pending",
        "identity": "agent",
        "grant": "default",
        "tool": "withdraw",
        "arguments": {"amount": 901, "to": "acct-ü"},
        "rule": "/tools/withdraw",
        "reason": "Withdrawals need a person",
        "requested_at": "2027-01-15T08:00:00Z",
        "expires_at": "2027-01-15T08:15:00Z",
        "approvers": ["alice"],
        "approver_claims": {"groups": ["treasury"]},
    }
    assert headers["content-type"] == "application/json"
    assert headers["x-mcp-authz-event"] == "approval.requested"
    stamp = headers["x-mcp-authz-timestamp"]
    assert headers["x-mcp-authz-signature"] == signature(SECRET, stamp, body)
    assert headers["x-mcp-authz-signature"] != signature(b"another secret!!", stamp, body)
    assert hook.delivered == 1


async def test_unsigned_without_a_secret(receiver: Receiver) -> None:
    hook = ApprovalWebhook(receiver.url)
    hook.start()
    hook.notify(approval())
    await hook.close(grace=10)
    ((headers, _),) = receiver.posts
    assert "x-mcp-authz-signature" not in headers


async def test_carries_the_console_link_when_the_console_has_a_public_url(
    receiver: Receiver,
) -> None:
    hook = ApprovalWebhook(receiver.url, console_url="https://console.example/")
    hook.start()
    hook.notify(approval(2))
    await hook.close(grace=10)
    assert receiver.bodies()[0]["console_url"] == "https://console.example/approvals/apr_2"
    # Without a console the body has no link at all (see test_posts_the_request_signed).


async def test_retries_with_exponential_backoff(receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 429, 502]
    delays = Delays()
    hook = ApprovalWebhook(receiver.url, backoff=0.5, max_backoff=1.5, sleep=delays)
    hook.start()
    hook.notify(approval())
    await hook.drain()
    await hook.close()
    assert len(receiver.posts) == 5
    assert delays == [0.5, 1.0, 1.5, 1.5]
    # One delivery id for every attempt, so the receiver can drop repeats.
    assert len({h["x-mcp-authz-delivery"] for h, _ in receiver.posts}) == 1
    assert hook.delivered == 1


async def test_a_client_error_is_final_and_the_next_request_still_goes(
    receiver: Receiver,
) -> None:
    receiver.statuses = [400]
    delays = Delays()
    hook = ApprovalWebhook(receiver.url, sleep=delays)
    hook.start()
    hook.notify(approval(1))
    hook.notify(approval(2))
    await hook.drain()
    await hook.close()
    assert [b["id"] for b in receiver.bodies()] == ["apr_1", "apr_2"]
    assert delays == []
    assert (hook.failed, hook.delivered) == (1, 1)


async def test_gives_up_after_its_attempts_when_nobody_listens(receiver: Receiver) -> None:
    url = receiver.url
    receiver.server.shutdown()
    receiver.server.server_close()
    delays = Delays()
    hook = ApprovalWebhook(url, attempts=3, backoff=1, sleep=delays)
    hook.start()
    hook.notify(approval())
    await hook.drain()
    await hook.close()
    assert delays == [1, 2]
    assert hook.failed == 1


async def test_a_full_queue_drops_and_never_blocks(receiver: Receiver) -> None:
    hook = ApprovalWebhook(receiver.url, queue_size=2)
    for n in range(5):
        hook.notify(approval(n))  # not started: nothing is taken off the queue
    assert hook.dropped == 3
    hook.start()
    await hook.drain()
    await hook.close()
    assert [b["id"] for b in receiver.bodies()] == ["apr_0", "apr_1"]


async def test_a_slow_receiver_never_delays_a_check(receiver: Receiver) -> None:
    release = threading.Event()
    original = receiver.server.RequestHandlerClass

    class Slow(original):  # type: ignore[valid-type,misc]
        def do_POST(self) -> None:  # noqa: N802
            release.wait(10)
            super().do_POST()

    receiver.server.RequestHandlerClass = Slow
    policy = parse_policy(
        yaml.safe_dump({"version": "1", "tools": {"withdraw": {"action": "approve"}}}).encode(),
        "p.yaml",
    )
    hook = ApprovalWebhook(receiver.url)
    hook.start()
    gate = Gate(policy)
    gate.decider = Decider(
        lambda: policy, FromHeader("x-agent-id"), MemoryStore(),
        approvals=gate.approvals, on_approval_requested=hook.notify,
    )  # fmt: skip
    outcome = await asyncio.wait_for(gate("withdraw", amount=1), 1.0)
    assert outcome.approval is not None
    assert outcome.refusal is not None
    release.set()
    await hook.drain()
    await hook.close()
    assert [b["id"] for b in receiver.bodies()] == [outcome.approval.id]


def test_bad_settings_stop_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an http"):
        ApprovalWebhook("ftp://example.com/x")
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ValueError, match="shorter than 16 bytes"):
        read_secret(short)
    with pytest.raises(ValueError, match="cannot read the webhook secret"):
        read_secret(tmp_path / "missing")
    good = tmp_path / "good"
    good.write_bytes(SECRET + b"\n")
    assert read_secret(good) == SECRET
