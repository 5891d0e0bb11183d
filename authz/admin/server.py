"""The admin gRPC API (proto/mcpauthz/admin/v1): approvals, counters, policy status.

Served on a port of its own, off unless `--admin-listen` is given. Every call presents a
bearer token from the admin tokens file, which names the operator and the claims that make
them an approver; the approval rules are enforced with `may_approve` (never the agent that
asked). Every call, refused or not, is written to the audit log and is a span of its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc

from authz._gen.mcpauthz.admin.v1 import admin_pb2 as pb
from authz._gen.mcpauthz.admin.v1 import admin_pb2_grpc
from authz.admin.actions import AdminActions, ClassedTool, Code, Operator, PolicyStatus, Refused
from authz.approvals.base import Approval, ApprovalStore, Status
from authz.catalogue.base import Catalogue
from authz.grants.base import Grant, Grants
from authz.limits.base import CounterStore, LimitState
from authz.observe.audit import AuditLog
from authz.observe.telemetry import Telemetry
from authz.policy.load import PolicyError, parse_policy
from authz.policy.reload import PolicyHolder
from authz.protocol.tools import ToolDefinition

log = logging.getLogger("mcp_authz.admin")

# Shorter tokens could be guessed; `openssl rand -hex 32` makes a good one.
MIN_TOKEN_CHARS: Final = 16
_STATUS: Final = {
    Status.PENDING: pb.APPROVAL_STATUS_PENDING,
    Status.APPROVED: pb.APPROVAL_STATUS_APPROVED,
    Status.DENIED: pb.APPROVAL_STATUS_DENIED,
    Status.IN_USE: pb.APPROVAL_STATUS_IN_USE,
}
# What each admin action needs (authz/admin/roles.py); every other action is a read.
T = TypeVar("T")


class AdminTokens:
    """The admin tokens file: `TOKEN IDENTITY [claim=value,claim=value...]` per line.

    Only SHA-256 digests of the tokens are kept in memory.
    """

    def __init__(self, operators: Mapping[str, Operator]) -> None:
        self._by_digest = dict(operators)

    @classmethod
    def load(cls, path: Path) -> AdminTokens:
        """Raises ValueError naming the file and line of anything wrong, so start-up fails."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot read the admin tokens file {path}: {e.strerror}") from None
        operators: dict[str, Operator] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                token, operator = _token_line(line)
            except ValueError as e:
                raise ValueError(f"{path}:{number}: {e}") from None
            if _digest(token) in operators:
                raise ValueError(f"{path}:{number}: this token is already on an earlier line")
            operators[_digest(token)] = operator
        if not operators:
            raise ValueError(f"{path}: no tokens (lines of TOKEN IDENTITY [claim=value,...])")
        return cls(operators)

    def identify(self, metadata: Iterable[tuple[str, str | bytes]]) -> Operator | None:
        for key, value in metadata:
            if key.lower() == "authorization" and isinstance(value, str):
                scheme, _, token = value.strip().partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return self._by_digest.get(_digest(token.strip()))
        return None


def _token_line(line: str) -> tuple[str, Operator]:
    parts = line.split()
    if len(parts) not in (2, 3):
        raise ValueError("expected TOKEN IDENTITY [claim=value,claim=value...]")
    token, identity = parts[:2]
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token is shorter than {MIN_TOKEN_CHARS} characters")
    claims: dict[str, list[str]] = {}
    for pair in parts[2].split(",") if len(parts) == 3 else []:
        claim, sep, value = pair.partition("=")
        if not sep or not claim or not value:
            raise ValueError(f"claim {pair!r} is not claim=value")
        claims.setdefault(claim, []).append(value)
    return token, Operator(identity, claims)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """A thin gRPC front on `AdminActions`: tokens to an `Operator`, results to messages."""

    def __init__(
        self,
        tokens: AdminTokens,
        approvals: ApprovalStore,
        counters: CounterStore,
        policy: PolicyHolder,
        audit: AuditLog,
        *,
        telemetry: Telemetry | None = None,
        grants: Grants | None = None,
        catalogue: Catalogue | None = None,
    ) -> None:
        self._grants = grants
        self._tokens = tokens
        self._actions = AdminActions(
            approvals, counters, policy, audit, telemetry, catalogue=catalogue
        )

    async def ListApprovals(self, request: pb.ListApprovalsRequest, context: Context) -> Any:  # noqa: N802 - gRPC method name
        page = await self._answer(
            context,
            lambda op: self._actions.pending(op, request.page_size, request.page_token),
        )
        return pb.ListApprovalsResponse(
            approvals=[approval_message(a) for a in page.approvals],
            next_page_token=page.next_token,
        )

    async def GetApproval(self, request: pb.GetApprovalRequest, context: Context) -> Any:  # noqa: N802
        found = await self._answer(context, lambda op: self._actions.approval(op, request.id))
        return approval_message(found)

    async def Approve(self, request: pb.DecideRequest, context: Context) -> Any:  # noqa: N802
        return await self._decide(request, context, approve=True)

    async def Deny(self, request: pb.DecideRequest, context: Context) -> Any:  # noqa: N802
        return await self._decide(request, context, approve=False)

    async def GetUsage(self, request: pb.CounterRequest, context: Context) -> Any:  # noqa: N802
        state = await self._answer(
            context,
            lambda op: self._actions.usage(op, request.counter, request.scope, request.subject),
        )
        return usage_message(state)

    async def ResetCounter(self, request: pb.CounterRequest, context: Context) -> Any:  # noqa: N802
        state = await self._answer(
            context,
            lambda op: self._actions.reset(op, request.counter, request.scope, request.subject),
        )
        return usage_message(state)

    async def GetPolicyStatus(self, request: pb.GetPolicyStatusRequest, context: Context) -> Any:  # noqa: N802
        return policy_status_message(await self._answer(context, self._actions.policy_status))

    async def CreateGrant(self, request: pb.CreateGrantRequest, context: Context) -> Any:  # noqa: N802
        async def work(_: Operator) -> pb.GrantWithToken:
            text = request.policy_text or None
            if text is not None:
                self._validate_grant_policy(request.label, text)
            grant, token = await self._grant_store().create(
                request.label, text, request.policy_grant or None
            )
            return pb.GrantWithToken(grant=grant_message(grant), token=token)

        return await self._call(context, "create_grant", request.label, work)

    async def ListGrants(self, request: pb.ListGrantsRequest, context: Context) -> Any:  # noqa: N802
        async def work(_: Operator) -> pb.ListGrantsResponse:
            grants = await self._grant_store().list()
            return pb.ListGrantsResponse(grants=[grant_message(g) for g in grants])

        return await self._call(context, "list_grants", "", work)

    async def RotateGrant(self, request: pb.GrantRequest, context: Context) -> Any:  # noqa: N802
        async def work(_: Operator) -> pb.GrantWithToken:
            grant, token = await self._grant_store().rotate(request.label)
            return pb.GrantWithToken(grant=grant_message(grant), token=token)

        return await self._call(context, "rotate_grant", request.label, work)

    async def RevokeGrant(self, request: pb.GrantRequest, context: Context) -> Any:  # noqa: N802
        async def work(_: Operator) -> pb.GrantInfo:
            return grant_message(await self._grant_store().revoke(request.label))

        return await self._call(context, "revoke_grant", request.label, work)

    async def ListTools(self, request: pb.ListToolsRequest, context: Context) -> Any:  # noqa: N802
        tools = await self._answer(context, lambda op: self._actions.tools(op, request.upstream))
        return pb.ListToolsResponse(tools=[tool_message(t) for t in tools])

    async def AcceptTool(self, request: pb.AcceptToolRequest, context: Context) -> Any:  # noqa: N802
        accepted = await self._answer(
            context,
            lambda op: self._actions.accept_tool(
                op, request.upstream, request.name, request.fingerprint, request.note
            ),
        )
        return tool_message(accepted)

    def _grant_store(self) -> Grants:
        if self._grants is None:
            raise Refused(
                Code.FAILED_PRECONDITION,
                "this gateway does not use grant tokens (serve --identity-source token)",
            )
        return self._grants

    def _validate_grant_policy(self, label: str, text: str) -> None:
        try:
            parse_policy(text.encode(), f"grant:{label}")
        except PolicyError as e:
            raise Refused(Code.INVALID_ARGUMENT, str(e)) from None

    async def _decide(self, request: pb.DecideRequest, context: Context, *, approve: bool) -> Any:
        decided = await self._answer(
            context,
            lambda op: self._actions.decide(op, request.id, approve=approve, note=request.note),
        )
        return approval_message(decided)

    async def _call(
        self, context: Context, action: str, target: str, work: Callable[[Operator], Awaitable[T]]
    ) -> T:
        return await self._answer(context, lambda op: self._actions.run(op, action, target, work))

    async def _answer(
        self, context: Context, action: Callable[[Operator | None], Awaitable[T]]
    ) -> T:
        """Runs an action as the caller's token says, turning a refusal into a gRPC status."""
        operator = self._tokens.identify(context.invocation_metadata() or ())
        try:
            return await action(operator)
        except Refused as e:
            return await context.abort(grpc.StatusCode[e.code.name], e.message)


def grant_message(grant: Grant) -> pb.GrantInfo:
    message = pb.GrantInfo(
        label=grant.label,
        created_at=datetime.fromtimestamp(grant.created_at, UTC),
        has_own_policy=grant.policy_text is not None,
        policy_grant=grant.policy_grant or "",
    )
    if grant.rotated_at is not None:
        message.rotated_at.FromDatetime(datetime.fromtimestamp(grant.rotated_at, UTC))
    return message


def approval_message(approval: Approval) -> pb.Approval:
    request = approval.request
    return pb.Approval(
        id=approval.id,
        status=_STATUS[approval.status],
        identity=request.identity,
        grant=request.grant,
        tool=request.tool,
        arguments_json=json.dumps(dict(request.arguments), ensure_ascii=False),
        rule=request.rule,
        reason=request.reason,
        approvers=list(request.approvers),
        approver_claims_json=json.dumps(
            {k: list(v) for k, v in request.approver_claims.items()}, ensure_ascii=False
        ),
        requested_at=datetime.fromtimestamp(approval.requested_at, UTC),
        expires_at=datetime.fromtimestamp(approval.expires_at, UTC),
        decided_by=approval.decided_by or "",
    )


def tool_message(tool: ClassedTool) -> pb.Tool:
    entry = tool.entry
    pending = entry.pending
    return pb.Tool(
        upstream=entry.upstream,
        name=entry.pinned.name,
        fingerprint=entry.pinned.fingerprint,
        definition_json=definition_json(entry.pinned),
        pending_fingerprint=pending.fingerprint if pending else "",
        pending_json=definition_json(pending) if pending and not entry.oversized else "",
        risk=tool.risk.label,
        removed=entry.removed,
        oversized=entry.oversized,
        accepted_by=entry.accepted_by or "",
        first_seen=datetime.fromtimestamp(entry.first_seen, UTC),
        last_seen=datetime.fromtimestamp(entry.last_seen, UTC),
    )


def definition_json(tool: ToolDefinition) -> str:
    """A definition as an operator reviews it: every field it is fingerprinted by."""
    return json.dumps(tool.fields(), ensure_ascii=False, sort_keys=True)


def usage_message(state: LimitState) -> pb.Usage:
    hit = state.hit
    return pb.Usage(
        counter=hit.key.counter,
        scope=hit.key.scope,
        subject=list(hit.key.subject),
        used=state.used,
        remaining=state.remaining,
        limit=hit.limit,
        window_seconds=hit.window,
        retry_after_seconds=-1.0 if state.retry_after is None else state.retry_after,
    )


def policy_status_message(status: PolicyStatus) -> pb.PolicyStatus:
    return pb.PolicyStatus(
        version=status.version,
        source=status.source,
        warnings=list(status.warnings),
        reload_failed=status.reload_errors is not None,
        reload_errors=list(status.reload_errors or ()),
    )


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT listens on loopback only."""
    return is_loopback_host(listen.rpartition(":")[0].strip("[]"))


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class AdminTls:
    """The admin port's certificate and key, and the CA its clients' certificates must
    chain to (mTLS) when given."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            ca = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as e:
            raise ValueError(f"cannot read the admin TLS files: {e}") from None
        return grpc.ssl_server_credentials([pair], ca, require_client_auth=ca is not None)


async def create_admin_server(
    listen: str, servicer: AdminServicer, tls: AdminTls | None = None
) -> tuple[grpc.aio.Server, int]:
    """A started admin server bound to `listen` (port 0 picks a free one) and its port."""
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = (
        server.add_secure_port(listen, tls.credentials())
        if tls
        else server.add_insecure_port(listen)
    )
    if port == 0:
        raise OSError(f"cannot listen on {listen} for the admin API")
    await server.start()
    return server, port
