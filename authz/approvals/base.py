"""The approval-store contract shared by the in-process and Redis backends.

An approval is bound to one exact call: the caller's identity and grant, the tool, and a
digest of the canonical JSON of its arguments. A call that differs in any of them is a new
request. An approved request lets that call through once; after that, or after the request's
lifetime, the same call needs a new approval.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from authz.protocol.identity import claims_match


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    USED = "used"


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


class ApprovalStore(Protocol):
    async def request(self, request: Request, lifetime: int) -> tuple[Approval, bool]:
        """The live approval for this exact call, or a new pending one; True if new.

        Atomic: concurrent identical calls while pending share one request.
        """
        ...

    async def consume(self, approval_id: str) -> bool:
        """Approved → used, exactly once across every replica; False if not (any longer)."""
        ...

    async def decide(self, approval_id: str, approve: bool, by: str) -> Approval:
        """Pending → approved or denied; raises ApprovalError otherwise."""
        ...

    async def get(self, approval_id: str) -> Approval | None: ...

    async def pending(self) -> Sequence[Approval]: ...

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
