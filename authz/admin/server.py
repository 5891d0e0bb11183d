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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc

from authz._gen.mcpauthz.admin.v1 import admin_pb2 as pb
from authz._gen.mcpauthz.admin.v1 import admin_pb2_grpc
from authz.admin.roles import Permission, may
from authz.approvals.base import Approval, ApprovalError, ApprovalStore, Status, may_approve
from authz.grants.base import Grant, GrantError, GrantExistsError, GrantNotFoundError, Grants
from authz.limits.base import CounterKey, CounterStore, Hit, LimitState, StoreUnavailable
from authz.observe.audit import AuditLog
from authz.observe.telemetry import Telemetry
from authz.policy.load import PolicyError, parse_policy
from authz.policy.model import Limit, Policy, Rule, Scope
from authz.policy.reload import PolicyHolder

log = logging.getLogger("mcp_authz.admin")

SERVICE: Final = "mcpauthz.admin.v1.AdminService"
# Shorter tokens could be guessed; `openssl rand -hex 32` makes a good one.
MIN_TOKEN_CHARS: Final = 16
# The subject parts each scope keys its budgets by (see policy.evaluate.hits).
SUBJECT_PARTS: Final = {
    Scope.GRANT: ("grant", "identity"),
    Scope.IDENTITY: ("identity",),
    Scope.SESSION: ("identity", "session"),
    Scope.GLOBAL: (),
}
_STATUS: Final = {
    Status.PENDING: pb.APPROVAL_STATUS_PENDING,
    Status.APPROVED: pb.APPROVAL_STATUS_APPROVED,
    Status.DENIED: pb.APPROVAL_STATUS_DENIED,
}
# What each admin action needs (authz/admin/roles.py); every other action is a read.
NEEDS: Final = {
    "approve": Permission.DECIDE_APPROVALS,
    "deny": Permission.DECIDE_APPROVALS,
    "reset_counter": Permission.RESET_COUNTERS,
    "create_grant": Permission.MANAGE_GRANTS,
    "rotate_grant": Permission.MANAGE_GRANTS,
    "revoke_grant": Permission.MANAGE_GRANTS,
    "list_grants": Permission.MANAGE_GRANTS,
}
_GRANT_ERRORS: Final = {
    GrantExistsError: grpc.StatusCode.ALREADY_EXISTS,
    GrantNotFoundError: grpc.StatusCode.NOT_FOUND,
}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Operator:
    """Who an admin token stands for, and the claims `may_approve` checks."""

    identity: str
    claims: Mapping[str, list[str]] = field(default_factory=dict)


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


class Refused(Exception):  # noqa: N818 - an answer, like grpc's own status codes
    """An admin call answered with a gRPC error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
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
    ) -> None:
        self._grants = grants
        self._tokens = tokens
        self._approvals = approvals
        self._counters = counters
        self._policy = policy
        self._audit = audit
        self._telemetry = telemetry or Telemetry.off()

    async def ListApprovals(self, request: pb.ListApprovalsRequest, context: Context) -> Any:  # noqa: N802 - gRPC method name
        async def work(_: Operator) -> pb.ListApprovalsResponse:
            pending = await self._approvals.pending()
            return pb.ListApprovalsResponse(approvals=[approval_message(a) for a in pending])

        return await self._call(context, "list_approvals", "", work)

    async def GetApproval(self, request: pb.GetApprovalRequest, context: Context) -> Any:  # noqa: N802
        async def work(_: Operator) -> pb.Approval:
            return approval_message(await self._live(request.id))

        return await self._call(context, "get_approval", request.id, work)

    async def Approve(self, request: pb.DecideRequest, context: Context) -> Any:  # noqa: N802
        return await self._decide(request, context, approve=True)

    async def Deny(self, request: pb.DecideRequest, context: Context) -> Any:  # noqa: N802
        return await self._decide(request, context, approve=False)

    async def GetUsage(self, request: pb.CounterRequest, context: Context) -> Any:  # noqa: N802
        async def work(_: Operator) -> pb.Usage:
            hit = self._budget(request)
            return usage_message(await self._counters.usage(hit))

        return await self._call(context, "get_usage", _counter_target(request), work)

    async def ResetCounter(self, request: pb.CounterRequest, context: Context) -> Any:  # noqa: N802
        async def work(_: Operator) -> pb.Usage:
            hit = self._budget(request)
            await self._counters.reset(hit.key)
            return usage_message(await self._counters.usage(hit))

        return await self._call(context, "reset_counter", _counter_target(request), work)

    async def GetPolicyStatus(self, request: pb.GetPolicyStatusRequest, context: Context) -> Any:  # noqa: N802
        async def work(_: Operator) -> pb.PolicyStatus:
            return policy_status(self._policy)

        return await self._call(context, "get_policy_status", "", work)

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

    def _grant_store(self) -> Grants:
        if self._grants is None:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this gateway does not use grant tokens (serve --identity-source token)",
            )
        return self._grants

    def _validate_grant_policy(self, label: str, text: str) -> None:
        try:
            parse_policy(text.encode(), f"grant:{label}")
        except PolicyError as e:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None

    async def _decide(self, request: pb.DecideRequest, context: Context, *, approve: bool) -> Any:
        async def work(operator: Operator) -> pb.Approval:
            approval = await self._live(request.id)
            if not may_approve(approval, operator.identity, operator.claims):
                raise Refused(grpc.StatusCode.PERMISSION_DENIED, _not_allowed(approval, operator))
            try:
                decided = await self._approvals.decide(request.id, approve, operator.identity)
            except ApprovalError as e:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
            return approval_message(decided)

        action = "approve" if approve else "deny"
        return await self._call(context, action, request.id, work, note=request.note)

    async def _live(self, approval_id: str) -> Approval:
        approval = await self._approvals.get(approval_id)
        if approval is None:
            raise Refused(
                grpc.StatusCode.NOT_FOUND,
                f"no live approval {approval_id!r} (unknown, used or expired)",
            )
        return approval

    def _budget(self, request: pb.CounterRequest) -> Hit:
        policy = self._policy.current
        limit = limits_of(policy).get(request.counter)
        if limit is None:
            raise Refused(
                grpc.StatusCode.NOT_FOUND,
                f"no counter {request.counter!r} in the policy in force ({policy.version})",
            )
        if request.scope and request.scope != limit.scope.value:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'counter "{limit.counter}" is kept per {limit.scope.value}, not {request.scope}',
            )
        parts = SUBJECT_PARTS[limit.scope]
        if len(request.subject) != len(parts):
            wanted = " ".join(p.upper() for p in parts) or "nothing"
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'counter "{limit.counter}" is kept per {limit.scope.value}: its subject is '
                f"{wanted}, got {len(request.subject)} part(s)",
            )
        key = CounterKey(limit.counter, limit.scope.value, tuple(request.subject))
        return Hit(key, limit.max, limit.window)

    async def _call(
        self,
        context: Context,
        action: str,
        target: str,
        work: Callable[[Operator], Awaitable[T]],
        note: str = "",
    ) -> T:
        """Authenticate, run `work`, and audit and trace the call whatever its end."""
        operator = self._tokens.identify(context.invocation_metadata() or ())
        identity = operator.identity if operator else None
        attributes = {"mcp_authz.admin.action": action, "mcp_authz.admin.target": target}
        with self._telemetry.admin(f"{SERVICE}/{action}", attributes) as span:
            try:
                result = await work(_permitted(_authenticated(operator), action))
            except GrantError as e:
                refusal = Refused(
                    _GRANT_ERRORS.get(type(e), grpc.StatusCode.INVALID_ARGUMENT), str(e)
                )
            except StoreUnavailable as e:
                refusal = Refused(grpc.StatusCode.UNAVAILABLE, f"the store is unavailable: {e}")
            except Refused as e:
                refusal = e
            else:
                self._audit.record_admin(
                    action, identity, target, "ok", note=note, span=span.get_span_context()
                )
                return result
            result_label = refusal.code.name.lower()
            span.set_attribute("mcp_authz.admin.result", result_label)
            self._audit.record_admin(
                action, identity, target, result_label, note=note, span=span.get_span_context()
            )
        return await context.abort(refusal.code, refusal.message)


def _authenticated(operator: Operator | None) -> Operator:
    if operator is None:
        raise Refused(
            grpc.StatusCode.UNAUTHENTICATED,
            "a known admin token is required (authorization: Bearer TOKEN)",
        )
    return operator


def _permitted(operator: Operator, action: str) -> Operator:
    needed = NEEDS.get(action, Permission.READ)
    if not may(operator.claims, needed):
        raise Refused(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{operator.identity} may not {action.replace('_', ' ')}: it needs {needed.value}",
        )
    return operator


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


def _not_allowed(approval: Approval, operator: Operator) -> str:
    request = approval.request
    if operator.identity == request.identity:
        return f"{operator.identity} asked for {approval.id} and cannot decide it"
    names = [
        *request.approvers,
        *(f"{k}={v}" for k, vs in request.approver_claims.items() for v in vs),
    ]
    allowed = ", ".join(names)
    return f"{operator.identity} may not decide {approval.id}: rule {request.rule} names {allowed}"


def _counter_target(request: pb.CounterRequest) -> str:
    return json.dumps([request.counter, request.scope, *request.subject], ensure_ascii=False)


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


def policy_status(holder: PolicyHolder) -> pb.PolicyStatus:
    policy, error = holder.current, holder.last_error
    return pb.PolicyStatus(
        version=policy.version,
        source=policy.source,
        warnings=list(policy.warnings),
        reload_failed=error is not None,
        reload_errors=[f"{p.path}: {p.message}" for p in error.problems] if error else [],
    )


def limits_of(policy: Policy) -> dict[str, Limit]:
    """Every counter of the policy by name (a counter has one definition in a policy)."""
    rules: list[Rule] = []
    for grant in (policy.everyone, *policy.grants):
        entries = [*grant.tools.exact.values(), *(p.entry for p in grant.tools.patterns)]
        rules += [rule for entry in entries for rule in entry.rules]
        rules += grant.every_tool
    methods = [*policy.methods.exact.values(), *(p.entry for p in policy.methods.patterns)]
    rules += [rule for entry in methods for rule in entry.rules]
    return {c.limit.counter: c.limit for rule in rules for c in rule.counts}


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
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
