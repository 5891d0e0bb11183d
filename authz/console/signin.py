"""Who is using the console: from OIDC (authorization code with PKCE, by Authlib) or from a
trusted header an authenticating proxy sets, mapped to roles by the roles file.

A person the roles file gives no role is nobody here: `operator` returns None, and every
page then offers only the sign-in. The header is trusted only because the console listens
where the proxy alone can reach it (docs/console.md, SECURITY.md); it is never a way in on
a listener anyone else can reach.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.starlette_client import OAuth
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authz.admin.actions import Operator
from authz.admin.roles import ROLE_CLAIM
from authz.console.config import ConsoleConfig

log = logging.getLogger("mcp_authz.console")

SESSION_USER: Final = "user"
# The identity provider or the proxy chooses these; the console keeps them bounded.
MAX_IDENTITY_CHARS: Final = 256
MAX_GROUPS: Final = 64
MAX_GROUP_CHARS: Final = 128
SCOPES: Final = "openid email profile"


class SignIn:
    def __init__(self, config: ConsoleConfig) -> None:
        self._config = config
        self._oauth: OAuth | None = None
        if config.oidc is not None:
            self._oauth = OAuth()
            self._oauth.register(
                "oidc",
                client_id=config.oidc.client_id,
                client_secret=config.oidc.client_secret or None,
                server_metadata_url=config.oidc.metadata_url,
                client_kwargs={"scope": SCOPES, "code_challenge_method": "S256"},
            )

    @property
    def uses_oidc(self) -> bool:
        return self._oauth is not None

    def operator(self, request: Request) -> Operator | None:
        """The signed-in person with at least one role, or None."""
        if self._config.trusted_header is not None:
            # One copy each, or nobody: a proxy that adds its header rather than replacing
            # the client's leaves two, and reading either would let the client choose.
            identities = request.headers.getlist(self._config.trusted_header)
            groups = request.headers.getlist(self._config.roles.groups_header)
            if len(identities) != 1 or len(groups) > 1:
                return None
            return self._operator(identities[0], groups[0].split(",") if groups else [])
        user = request.session.get(SESSION_USER)
        if not isinstance(user, dict):
            return None
        return self._operator(str(user.get("identity", "")), list(user.get("groups", [])))

    def _operator(self, identity: str, groups: list[str]) -> Operator | None:
        identity = identity.strip()
        if not identity or len(identity) > MAX_IDENTITY_CHARS or not identity.isprintable():
            return None
        kept = [g.strip()[:MAX_GROUP_CHARS] for g in groups[:MAX_GROUPS] if g.strip()]
        claims = self._config.roles.claims(identity, kept)
        # An empty role list would read as admin to roles_of: nobody without a role gets in.
        if not claims[ROLE_CLAIM]:
            return None
        return Operator(identity, claims)

    async def login(self, request: Request) -> Response:
        if self._oauth is None:
            return RedirectResponse("/", status_code=303)
        redirect = self._config.public_url.rstrip("/") + "/auth/callback"
        client = self._oauth.create_client("oidc")
        response: Response = await client.authorize_redirect(request, redirect)
        return response

    async def callback(self, request: Request) -> tuple[str | None, str]:
        """Completes the code flow: (identity, "") signed in, or (None, why not)."""
        if self._oauth is None:
            return None, "this console signs in through a proxy, not OIDC"
        client = self._oauth.create_client("oidc")
        try:
            token = await client.authorize_access_token(request)
        except OAuthError as e:
            log.warning("console sign-in refused by the identity provider: %s", e.error)
            return None, f"the identity provider refused the sign-in ({e.error})"
        return self._remember(request, token.get("userinfo") or {})

    def _remember(self, request: Request, userinfo: Mapping[str, Any]) -> tuple[str | None, str]:
        roles = self._config.roles
        identity = userinfo.get(roles.identity_claim)
        if not isinstance(identity, str):
            return None, f"the identity provider sent no {roles.identity_claim!r} claim"
        groups = userinfo.get(roles.groups_claim, [])
        groups = [groups] if isinstance(groups, str) else groups
        groups = [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []
        # A new session for the signed-in person: nothing from before sign-in (a CSRF token
        # included) carries over.
        request.session.clear()
        request.session[SESSION_USER] = {"identity": identity, "groups": groups[:MAX_GROUPS]}
        if self.operator(request) is None:
            request.session.pop(SESSION_USER, None)
            return None, f"{identity[:MAX_IDENTITY_CHARS]} has no role in this console"
        return identity, ""
