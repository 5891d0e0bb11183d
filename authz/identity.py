"""Who is calling, taken only from what Envoy vouches for.

Each source reads a value Envoy established (a header Envoy itself sets after stripping the
client's copy, the payload of a JWT its jwt_authn filter verified, or the mTLS peer it
authenticated). A source that finds nothing yields None and the request is refused: an
unidentified caller never falls back to someone else's budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from authz.request import HttpRequest

ANONYMOUS = "anonymous"
DEFAULT_GRANT = "default"


@dataclass(frozen=True, slots=True)
class Caller:
    identity: str
    # The MCP session (Mcp-Session-Id). Client-chosen: good for per-session courtesy limits,
    # never for enforcement, since an agent can always open a new session.
    session: str | None = None
    grant: str = DEFAULT_GRANT


class IdentitySource(Protocol):
    def identify(self, request: HttpRequest) -> str | None: ...


class Anonymous:
    """No identity source configured: every caller is one, and limits are shared."""

    def identify(self, request: HttpRequest) -> str | None:
        return ANONYMOUS


@dataclass(frozen=True, slots=True)
class FromHeader:
    header: str

    def identify(self, request: HttpRequest) -> str | None:
        return request.header(self.header.lower()) or None


@dataclass(frozen=True, slots=True)
class FromJwtClaim:
    """A claim of the payload Envoy's jwt_authn filter verified (`payload_in_metadata`)."""

    claim: str
    namespace: str = "envoy.filters.http.jwt_authn"
    payload_key: str = "jwt_payload"

    def identify(self, request: HttpRequest) -> str | None:
        payload = request.metadata.get(self.namespace, {}).get(self.payload_key)
        value = payload.get(self.claim) if isinstance(payload, dict) else None
        return value if isinstance(value, str) and value else None


class FromPeerPrincipal:
    def identify(self, request: HttpRequest) -> str | None:
        return request.peer_principal or None


def caller_of(request: HttpRequest, identity: str) -> Caller:
    return Caller(identity=identity, session=request.header("mcp-session-id"))
