"""Who is calling, when grant tokens say it (`--identity-source token`).

The token in `Authorization: Bearer` is verified against the grant store on every request
(so a revoked or rotated token fails on its next use, on every replica); the caller is the
grant's label, and its policy is the grant's own document, a grant of the server's policy
it names, or the server's policy.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from authz.grants.base import Grant, Grants
from authz.limits.base import StoreUnavailable
from authz.policy.load import PolicyError, parse_policy
from authz.policy.model import Policy
from authz.protocol.identity import Caller, bearer_token, caller_of
from authz.protocol.request import HttpRequest

# Parsed grant policies kept, by content: more than any deployment has distinct documents.
_CACHED_POLICIES = 256


@dataclass(frozen=True, slots=True)
class Identified:
    caller: Caller
    policy: Policy


class GrantIdentity:
    def __init__(self, grants: Grants, payload_key: str = "jwt_payload") -> None:
        self._grants = grants
        self._payload_key = payload_key
        self._policies: OrderedDict[str, Policy] = OrderedDict()

    async def identify(self, request: HttpRequest, policy: Policy) -> Identified | str:
        """The caller and the policy that judges it, or why the request is refused."""
        token = bearer_token(request)
        if token is None:
            return "the request carries no grant token (Authorization: Bearer TOKEN)"
        try:
            grant = await self._grants.verify(token)
        except StoreUnavailable as e:
            return f"grant tokens cannot be checked ({e}); refused, as nobody can be named"
        if grant is None:
            return "the grant token is unknown, revoked or malformed"
        base = caller_of(request, grant.label, self._payload_key)
        caller = Caller(base.identity, base.session, base.claims, grant.label, grant.policy_grant)
        own = self._policy(grant) if grant.policy_text is not None else policy
        if own is None:
            return f'the policy of grant "{grant.label}" no longer loads: re-create the grant'
        return Identified(caller, own)

    def _policy(self, grant: Grant) -> Policy | None:
        text = grant.policy_text or ""
        cached = self._policies.get(text)
        if cached is not None:
            self._policies.move_to_end(text)
            return cached
        try:
            parsed = parse_policy(text.encode(), f"grant:{grant.label}")
        except PolicyError:
            return None
        self._policies[text] = parsed
        if len(self._policies) > _CACHED_POLICIES:
            self._policies.popitem(last=False)
        return parsed
