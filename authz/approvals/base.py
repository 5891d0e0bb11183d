"""The approval-store contract shared by the in-process and Redis backends.

An approval is bound to one exact call: the caller's identity and grant, the tool, and a
digest of the canonical JSON of its arguments. A call that differs in any of them is a new
request. An approved request lets that call through once; after that, or after the request's
lifetime, the same call needs a new approval.

Using an approval is two steps, so that nothing refused is charged and an approval is used
once: the decision core spends it (approved -> in use, atomically) before it counts the
call's limits, then commits it (gone) when the call passes, or releases it (in use ->
approved) when the call is refused for another reason.

Pending requests are capped per identity and in total (`ApprovalCaps`): an agent cannot
flood the people who decide, nor the store. Listing is paged, each page's cost bounded.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from authz.protocol.identity import claims_match


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    # Spent by a call being decided right now: gone once it passes, approved again if refused.
    IN_USE = "in_use"


# What `new_approval_id` makes; anything else cannot name a record and is never looked up.
APPROVAL_ID = re.compile(r"apr_[A-Za-z0-9_-]{1,64}")
# Approvals per page of a listing: the default, and the most one call returns (so one call to
# the store, a Lua script on Redis, has a bounded cost).
DEFAULT_PAGE = 100
MAX_PAGE = 200


# The default caps: far more than people can decide at once, far less than a flood.
DEFAULT_MAX_PENDING: Final = 1000
DEFAULT_MAX_PENDING_PER_IDENTITY: Final = 20


@dataclass(frozen=True, slots=True)
class ApprovalCaps:
    """The most pending requests the store holds, in total and for one identity."""

    total: int = DEFAULT_MAX_PENDING
    per_identity: int = DEFAULT_MAX_PENDING_PER_IDENTITY

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_identity < 1:
            raise ValueError(
                "the caps of pending approvals must be at least 1: got "
                f"{self.total} (--approvals-max-pending) and {self.per_identity} "
                "(--approvals-max-pending-per-identity)"
            )


@dataclass(frozen=True, slots=True)
class ApprovalPage:
    """Pending requests, soonest expiry first, and the token of the next page ("" if none)."""

    approvals: tuple[Approval, ...]
    next_token: str = ""


@dataclass(frozen=True, slots=True)
class Request:
    """What a person is asked to approve, and who may answer."""

    identity: str
    grant: str
    tool: str
    arguments: Mapping[str, Any]
    rule: str
    reason: str
    approvers: tuple[str, ...] = ()
    approver_claims: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The exact call this request is for; any change in it is another request."""
        return call_digest(self.identity, self.grant, self.tool, self.arguments)

    def to_dict(self) -> dict[str, Any]:
        """As JSON: what Redis stores and what the webhook tells a person."""
        return {
            "identity": self.identity,
            "grant": self.grant,
            "tool": self.tool,
            "arguments": dict(self.arguments),
            "rule": self.rule,
            "reason": self.reason,
            "approvers": list(self.approvers),
            "approver_claims": {k: list(v) for k, v in self.approver_claims.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Request:
        return cls(
            d["identity"],
            d["grant"],
            d["tool"],
            d["arguments"],
            d["rule"],
            d["reason"],
            tuple(d["approvers"]),
            {k: tuple(v) for k, v in d["approver_claims"].items()},
        )


def call_digest(identity: str, grant: str, tool: str, arguments: Mapping[str, Any]) -> str:
    canonical = json.dumps(
        [identity, grant, tool, arguments],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    status: Status
    request: Request
    # Unix seconds; the request, and any approval of it, is void after `expires_at`.
    requested_at: float
    expires_at: float
    decided_by: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Approval:
        return cls(
            d["id"],
            Status(d["status"]),
            Request.from_dict(d),
            d["requested_at"],
            d["expires_at"],
            d["decided_by"],
        )


class ApprovalError(Exception):
    """An approval that cannot be decided: unknown, expired, already decided, or the
    approver is not allowed to."""


class PageTokenError(ApprovalError):
    """A page token that no listing of this store handed out."""


class ApprovalsFull(Exception):  # noqa: N818 - a state of the store, like StoreUnavailable
    """No room for one more pending request: the caller's identity, or the store, holds
    its cap. `retry_after` is the seconds until the soonest of those requests expires."""

    def __init__(self, scope: str, cap: int, retry_after: float) -> None:
        where = "for this identity" if scope == "identity" else "in total"
        super().__init__(f"{cap} approval requests are already pending {where}")
        self.scope = scope
        self.cap = cap
        self.retry_after = retry_after


def page_token(position: str, approval_id: str) -> str:
    """The token of the page after the entry at `position` (the store's own sort key)."""
    return f"{position}:{approval_id}"


def read_page_token(token: str, position_ok: Callable[[str], bool]) -> tuple[str, str]:
    """(position, id) of a token from `page_token` whose position the store accepts;
    PageTokenError for anything else."""
    position, _, approval_id = token.rpartition(":")
    if (
        not position
        or len(position) > 32
        or not APPROVAL_ID.fullmatch(approval_id)
        or not position_ok(position)
    ):
        raise PageTokenError(f"page token {token[:80]!r} was not handed out by a listing")
    return position, approval_id


class ApprovalStore(Protocol):
    async def request(self, request: Request, lifetime: int) -> tuple[Approval, bool]:
        """The live approval for this exact call, or a new pending one; True if new.

        Atomic: concurrent identical calls while pending share one request. Raises
        ApprovalsFull, creating nothing, when a new request would pass a cap. O(1) in the
        number of requests held (O(log n) on Redis).
        """
        ...

    async def spend(self, approval_id: str) -> bool:
        """Approved → in use, exactly once across every replica; False if not (any longer)."""
        ...

    async def release(self, approval_id: str) -> None:
        """In use → approved: the call that spent it was refused for another reason."""
        ...

    async def commit(self, approval_id: str) -> None:
        """In use → gone: the call passed; the next identical call asks anew."""
        ...

    async def decide(self, approval_id: str, approve: bool, by: str) -> Approval:
        """Pending → approved or denied; raises ApprovalError otherwise."""
        ...

    async def get(self, approval_id: str) -> Approval | None: ...

    async def pending(self, size: int = DEFAULT_PAGE, after: str = "") -> ApprovalPage:
        """At most `size` (<= MAX_PAGE) pending requests, soonest expiry first, after the
        page whose token is `after`; PageTokenError for a token it did not hand out."""
        ...

    async def ready(self) -> None:
        """Connect and check the round trip before the first call (start-up waits on it)."""
        ...

    async def close(self) -> None: ...


def may_approve(approval: Approval, approver: str, claims: Mapping[str, Any]) -> bool:
    """Whether `approver` may decide this request: never the caller who asked, and, when
    the rule names approvers (identities or claim values), only one of them."""
    request = approval.request
    if approver == request.identity:
        return False
    if not request.approvers and not request.approver_claims:
        return True
    return approver in request.approvers or claims_match(claims, request.approver_claims)
