"""The console's browser-side defences: a strict Content-Security-Policy and friends on every
answer, and a CSRF token bound to the session on every form that changes anything.

The CSP allows scripts, styles and fetches from the console itself only: no inline script
or style, no eval, no frames, forms posting nowhere else. The CSRF token is a random value
kept in the signed session cookie (SameSite=Lax) and echoed in each form; a POST whose token
does not match, or whose Origin is another site, is refused before any action runs.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "x-csrf-token"
_SESSION_KEY: Final = "csrf"
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # Not no-referrer: with it, browsers send `Origin: null` on form posts.
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """Sets HEADERS on every HTTP answer (and HSTS when served over https)."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self._app = app
        self._headers = [*HEADERS]
        if https:
            self._headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in self._headers}
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message["headers"] = kept + self._headers
            await send(message)

        await self._app(scope, receive, with_headers)


def csrf_token(request: Request) -> str:
    """This session's token, made on first use."""
    token = request.session.get(_SESSION_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[_SESSION_KEY] = token
    return token


def csrf_ok(request: Request, sent: str | None, public_url: str) -> bool:
    """Whether a state-changing request carries this session's token and, if the browser
    names its origin, comes from the console's own."""
    expected = request.session.get(_SESSION_KEY)
    if not isinstance(expected, str) or not sent:
        return False
    origin = request.headers.get("origin")
    if origin is not None and origin != _origin(public_url) and origin != _origin(str(request.url)):
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
