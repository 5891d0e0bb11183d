"""Tell someone an approval is waiting: an HTTP POST of the request, off the Check path.

`notify` only puts the request on a bounded queue (a full queue drops it, logged): a Check
never waits for the webhook. One background task posts each request as JSON, retrying
connection failures, timeouts, 408, 429 and 5xx with exponential backoff; other answers are
final. With a secret, each POST is signed: `X-MCP-Authz-Signature: sha256=HEX`, the
HMAC-SHA256 of `TIMESTAMP.BODY` keyed by the secret, `TIMESTAMP` being the
`X-MCP-Authz-Timestamp` header (unix seconds), so a receiver can refuse stale replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from authz.approvals.base import Approval

log = logging.getLogger("mcp_authz.approvals")

EVENT: Final = "approval.requested"
MIN_SECRET_BYTES: Final = 16
_RETRIED: Final = frozenset({408, 429})

Sleep = Callable[[float], Awaitable[None]]


def payload(approval: Approval, console_url: str | None = None) -> dict[str, Any]:
    """The JSON body: the exact call to approve, who asked, who may answer, and until when;
    with a console, the link to its page there (`console_url`)."""
    body = {
        "event": EVENT,
        "id": approval.id,
        "status": approval.status.value,
        **approval.request.to_dict(),
        "requested_at": _iso(approval.requested_at),
        "expires_at": _iso(approval.expires_at),
    }
    if console_url is not None:
        body["console_url"] = f"{console_url.rstrip('/')}/approvals/{approval.id}"
    return body


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return (
        "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )


def read_secret(path: Path) -> bytes:
    """The signing secret from a file; raises ValueError so start-up fails saying why."""
    try:
        # Trailing whitespace is the newline `openssl rand -hex 32 > secret` leaves.
        secret = path.read_bytes().rstrip()
    except OSError as e:
        raise ValueError(f"cannot read the webhook secret {path}: {e.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the webhook secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


class ApprovalWebhook:
    def __init__(
        self,
        url: str,
        secret: bytes | None = None,
        *,
        queue_size: int = 256,
        attempts: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 5.0,
        sleep: Sleep = asyncio.sleep,
        console_url: str | None = None,
    ) -> None:
        require_http_url("approval webhook", url)
        self._url = url
        self._secret = secret
        self._queue: asyncio.Queue[Approval] = asyncio.Queue(queue_size)
        self._attempts = attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._timeout = timeout
        self._sleep = sleep
        self._console_url = console_url
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.delivered = 0
        self.failed = 0

    def notify(self, approval: Approval) -> None:
        """Queue a new request for delivery; never blocks, drops it when the queue is full."""
        try:
            self._queue.put_nowait(approval)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "approval webhook queue full (%d): not announcing %s",
                self._queue.maxsize,
                approval.id,
            )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="approval webhook")

    async def drain(self) -> None:
        """Wait until everything queued so far is delivered or given up on."""
        await self._queue.join()

    async def close(self, grace: float = 0.0) -> None:
        """Deliver what is queued for up to `grace` seconds, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), grace)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            approval = await self._queue.get()
            try:
                await self._deliver(approval)
            except Exception:
                log.exception("approval webhook: delivering %s failed unexpectedly", approval.id)
            finally:
                self._queue.task_done()

    async def _deliver(self, approval: Approval) -> None:
        body = json.dumps(payload(approval, self._console_url), ensure_ascii=False).encode()
        delivery = uuid.uuid4().hex
        for attempt in range(1, self._attempts + 1):
            status, problem = await asyncio.to_thread(self._post, body, delivery)
            if status is not None and 200 <= status < 300:
                self.delivered += 1
                return
            final = status is not None and status < 500 and status not in _RETRIED
            if final or attempt == self._attempts:
                self.failed += 1
                log.warning(
                    "approval webhook: gave up on %s after %d attempt(s): %s",
                    approval.id,
                    attempt,
                    problem,
                )
                return
            await self._sleep(min(self._backoff * 2 ** (attempt - 1), self._max_backoff))

    def _post(self, body: bytes, delivery: str) -> tuple[int | None, str]:
        """One POST (run in a worker thread): the status, or None and what went wrong."""
        headers = {
            "content-type": "application/json",
            "user-agent": "mcp-authz",
            "x-mcp-authz-event": EVENT,
            # The same on every retry of one request, so a receiver can drop repeats.
            "x-mcp-authz-delivery": delivery,
        }
        if self._secret is not None:
            timestamp = str(int(time.time()))
            headers["x-mcp-authz-timestamp"] = timestamp
            headers["x-mcp-authz-signature"] = signature(self._secret, timestamp, body)
        request = urllib.request.Request(self._url, body, headers, method="POST")  # noqa: S310 - scheme checked in __init__
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as reply:  # noqa: S310
                return int(reply.status), f"HTTP {reply.status}"
        except urllib.error.HTTPError as e:
            e.close()
            return e.code, f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            return None, str(getattr(e, "reason", e))


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def require_http_url(what: str, url: str) -> None:
    """Refuse, naming `what`, a URL this service would send people or requests to that is
    not http(s) with a host (file://, a bare host name, a typo)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {url!r} is not an http:// or https:// URL")
