"""A small OpenID Connect provider: the `make run` demo's sign-in and the console's tests'.

It speaks the authorization code flow with PKCE (S256 only, required) and signs ID tokens
with an RSA key made at start, published at its JWKS endpoint. With `user` set it signs that
person in without asking, as an identity provider with a live session would (the tests);
otherwise it asks for one of `accounts` and a password on a login page (the demo).

Demo only: it keeps codes in memory, has one client and trusts whoever knows a password.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CLIENT_ID = "mcp-authz-console"
CLIENT_SECRET = "console-client-secret-0123456789"  # noqa: S105 - the demo client's
# The demo's people: name -> (password, claims). The console's demo roles file makes
# treasury approvers (and policy managers) and everyone else a viewer.
DEMO_PASSWORD = "demo"  # noqa: S105 - printed by `make run`
DEMO_ACCOUNTS = {
    "alice": (DEMO_PASSWORD, {"email": "alice@example.com", "groups": ["treasury"]}),
    "victor": (DEMO_PASSWORD, {"email": "victor@example.com", "groups": ["engineering"]}),
}
_FLOW = ("client_id", "redirect_uri", "state", "nonce", "code_challenge",
         "code_challenge_method", "response_type")  # fmt: skip


@dataclass
class Grant:
    challenge: str
    nonce: str
    redirect_uri: str
    claims: dict[str, Any]


@dataclass
class Provider:
    issuer: str = ""
    # Signed in without asking when set (tests); else the login page asks for an account.
    user: dict[str, Any] = field(default_factory=dict)
    accounts: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, {"kid": "test-key"}))
    codes: dict[str, Grant] = field(default_factory=dict)
    tokens_issued: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.metadata),
                Route("/authorize", self.authorize, methods=["GET", "POST"]),
                Route("/token", self.token, methods=["POST"]),
                Route("/jwks", self.jwks),
            ]
        )

    async def metadata(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }
        )

    async def authorize(self, request: Request) -> Response:
        q: dict[str, str] = dict(request.query_params)
        claims = dict(self.user)
        if request.method == "POST":
            form = await request.form()
            q = {k: str(form.get(k, "")) for k in _FLOW}
            password, claims = self.accounts.get(str(form.get("username")), ("", {}))
            if not password or not secrets.compare_digest(password, str(form.get("password"))):
                return self._login(q, "unknown account or wrong password")
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            return JSONResponse({"error": "unauthorized_client"}, status_code=400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return JSONResponse({"error": "invalid_request", "why": "PKCE"}, status_code=400)
        if not claims:
            return self._login(q, "")
        code = secrets.token_urlsafe(16)
        self.codes[code] = Grant(
            q["code_challenge"], q.get("nonce", ""), q["redirect_uri"], {"sub": "", **claims}
        )
        back = urlencode({"code": code, "state": q.get("state", "")})
        return RedirectResponse(f"{q['redirect_uri']}?{back}", status_code=302)

    def _login(self, flow: dict[str, str], problem: str) -> Response:
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(flow.get(k, ""))}">'
            for k in _FLOW
        )
        names = ", ".join(sorted(self.accounts))
        page = f"""<!doctype html><html lang="en"><title>Demo sign-in</title>
<h1>Demo identity provider</h1><p>Accounts: {names}; password: {DEMO_PASSWORD}</p>
<p role="alert">{html.escape(problem)}</p>
<form method="post" action="/authorize">{hidden}
<label>Account <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" required></label>
<button type="submit">Sign in</button></form></html>"""
        return HTMLResponse(page, status_code=401 if problem else 200)

    async def token(self, request: Request) -> Response:
        form = await request.form()
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = self.codes.pop(str(form.get("code", "")), None)
        if grant is None or form.get("redirect_uri") != grant.redirect_uri:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = str(form.get("code_verifier", "")).encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if digest.decode() != grant.challenge:
            return JSONResponse({"error": "invalid_grant", "why": "PKCE"}, status_code=400)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            **grant.claims,
        }
        claims["sub"] = claims["sub"] or claims.get("email", "")
        id_token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, self.key)
        self.tokens_issued += 1
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }
        )

    async def jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    args = parser.parse_args()
    provider = Provider(issuer=f"http://{args.host}:{args.port}", accounts=DEMO_ACCOUNTS)
    uvicorn.run(provider.app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
