"""Who is calling, taken only from what Envoy vouches for.

Each source reads a value Envoy established (a header Envoy itself sets after stripping the
client's copy, the payload of a JWT its jwt_authn filter verified, or the mTLS peer it
authenticated). A source that finds nothing yields None and the request is refused: an
unidentified caller never falls back to someone else's budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from authz.protocol.bounds import MAX_IDENTITY, MAX_SESSION_ID, bounded
from authz.protocol.request import HttpRequest

ANONYMOUS = "anonymous"
JWT_NAMESPACE = "envoy.filters.http.jwt_authn"


class IdentitySourceKind(StrEnum):
    """Where `--identity-source` says the caller's identity comes from."""

    NONE = "none"
    HEADER = "header"
    JWT = "jwt"
    MTLS = "mtls"
    # A grant token in `Authorization: Bearer`, looked up in the grant store (authz/grants).
    TOKEN = "token"  # noqa: S105 - the name of a source, not a secret


# Not frozen, as McpCall (authz/protocol/mcp.py): one per request; never changed once made.
@dataclass(slots=True)
class Caller:
    identity: str
    # The MCP session (Mcp-Session-Id). Client-chosen: good for per-session courtesy limits,
    # never for enforcement, since an agent can always open a new session.
    session: str | None = None
    # Claims of the JWT Envoy verified, if any: grants may select callers by them.
    claims: Mapping[str, Any] = field(default_factory=dict)
    # The label of the grant token that identified the caller (identity source `token`),
    # and the grant of the policy that token names, if it names one.
    grant_label: str | None = None
    policy_grant: str | None = None


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
    payload_key: str = "jwt_payload"

    def identify(self, request: HttpRequest) -> str | None:
        value = jwt_claims(request, self.payload_key).get(self.claim)
        return value if isinstance(value, str) and value else None


def jwt_claims(request: HttpRequest, payload_key: str = "jwt_payload") -> Mapping[str, Any]:
    """The payload of the JWT Envoy's jwt_authn filter verified, or {} without one."""
    payload = request.metadata.get(JWT_NAMESPACE, {}).get(payload_key)
    return payload if isinstance(payload, dict) else {}


class FromPeerPrincipal:
    def identify(self, request: HttpRequest) -> str | None:
        return request.peer_principal or None


def bearer_token(request: HttpRequest) -> str | None:
    """The credential of `Authorization: Bearer TOKEN`, or None without one."""
    scheme, _, token = (request.header("authorization") or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def caller_of(request: HttpRequest, identity: str, payload_key: str = "jwt_payload") -> Caller:
    """The caller; RequestRefused if its identity or session id is over its bound."""
    session = request.headers.get("mcp-session-id")
    if session is not None:
        bounded(session, MAX_SESSION_ID, "the Mcp-Session-Id header")
    bounded(identity, MAX_IDENTITY, "the caller's identity")
    return Caller(identity, session, jwt_claims(request, payload_key))


# Claims that carry OAuth scopes. RFC 6749 section 3.3 (and RFC 9068 for access-token JWTs)
# puts them in `scope` as one string of space-separated tokens; Okta and Azure AD use `scp`,
# as an array or in the same string form. Each scope is matched on its own.
SCOPE_CLAIMS = frozenset({"scope", "scp"})


def claims_match(claims: Mapping[str, Any], wanted: Mapping[str, tuple[Any, ...]]) -> bool:
    """Whether any claim holds one of its wanted values; a list-valued claim (`groups`)
    matches when any element does, a scope claim when any of its scopes does."""
    for claim, values in wanted.items():
        for value in claim_values(claims, claim):
            if isinstance(value, str | int) and not isinstance(value, bool) and value in values:
                return True
    return False


def claim_values(claims: Mapping[str, Any], claim: str) -> list[Any]:
    """The values a claim holds: a list's elements, a scope string's scopes, or the value."""
    held = claims.get(claim)
    if isinstance(held, list):
        return held
    if claim in SCOPE_CLAIMS and isinstance(held, str):
        # Only U+0020 separates scope tokens (RFC 6749's scope-token excludes it); any other
        # character, other whitespace included, is part of a token and compared exactly.
        return [scope for scope in held.split(" ") if scope]
    return [held]
