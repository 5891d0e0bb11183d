"""The admin actions, one implementation for every front end (the gRPC API, the console).

Each action authenticates the operator, checks the role it needs (authz/admin/roles.py), runs,
and is written to the audit log and traced whatever its end: one audit trail, whichever
front end a person used. A refusal is a `Refused` carrying a transport-neutral `Code` that
each front end maps to its own answer (a gRPC status, an HTTP status).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar

from authz.admin.roles import Permission, may
from authz.approvals.base import (
    DEFAULT_PAGE,
    MAX_PAGE,
    Approval,
    ApprovalError,
    ApprovalPage,
    ApprovalStore,
    PageTokenError,
    may_approve,
)
from authz.catalogue.base import Catalogue, CatalogueEntry, CatalogueUnavailable
from authz.core.tool_check import risk_of
from authz.grants.base import GrantError, GrantExistsError, GrantNotFoundError
from authz.limits.base import CounterKey, CounterStore, Hit, LimitState, StoreUnavailable
from authz.observe.audit import AuditLog
from authz.observe.telemetry import Telemetry
from authz.policy.explain import explain
from authz.policy.model import Limit, Policy, Rule, Scope
from authz.policy.reload import PolicyHolder
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall
from authz.protocol.tools import RiskClass

T = TypeVar("T")
SERVICE: Final = "mcpauthz.admin.v1.AdminService"
MAX_APPROVAL_ID: Final = 128
# The subject parts each scope keys its budgets by (see policy.evaluate.hits).
SUBJECT_PARTS: Final = {
    Scope.GRANT: ("grant", "identity"),
    Scope.IDENTITY: ("identity",),
    Scope.SESSION: ("identity", "session"),
    Scope.GLOBAL: (),
}
# What each admin action needs; every other action is a read.
NEEDS: Final = {
    "approve": Permission.DECIDE_APPROVALS,
    "deny": Permission.DECIDE_APPROVALS,
    "reset_counter": Permission.RESET_COUNTERS,
    "create_grant": Permission.MANAGE_GRANTS,
    "rotate_grant": Permission.MANAGE_GRANTS,
    "revoke_grant": Permission.MANAGE_GRANTS,
    "list_grants": Permission.MANAGE_GRANTS,
    # Moving a pin changes what every agent's calls are judged against, as a policy does.
    "accept_tool": Permission.MANAGE_POLICIES,
}


class Code(StrEnum):
    """Why an action was refused; named as gRPC's status codes, which the API maps to."""

    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    INVALID_ARGUMENT = "invalid_argument"
    FAILED_PRECONDITION = "failed_precondition"
    ALREADY_EXISTS = "already_exists"
    UNAVAILABLE = "unavailable"


_GRANT_ERRORS: Final = {
    GrantExistsError: Code.ALREADY_EXISTS,
    GrantNotFoundError: Code.NOT_FOUND,
}


class Refused(Exception):  # noqa: N818 - an answer, like grpc's own status codes
    """An admin action that was not carried out, and why."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Operator:
    """Who a front end authenticated, and the claims roles and `may_approve` check."""

    identity: str
    claims: Mapping[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClassedTool:
    """A catalogue entry and its class under the policy in force."""

    entry: CatalogueEntry
    risk: RiskClass


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    version: str
    source: str
    warnings: tuple[str, ...]
    reload_errors: tuple[str, ...] | None  # None: the last reload (if any) succeeded
    # Unix seconds: the policy in force was loaded; a reload was last refused (None: never).
    loaded_at: float | None = None
    refused_at: float | None = None


class AdminActions:
    def __init__(
        self,
        approvals: ApprovalStore,
        counters: CounterStore,
        policy: PolicyHolder,
        audit: AuditLog,
        telemetry: Telemetry | None = None,
        *,
        catalogue: Catalogue | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._approvals = approvals
        self._counters = counters
        self._policy = policy
        self._audit = audit
        self._telemetry = telemetry or Telemetry.off()

    @property
    def policy(self) -> Policy:
        return self._policy.current

    async def pending(
        self, operator: Operator | None, page_size: int = 0, page_token: str = ""
    ) -> ApprovalPage:
        """One page of pending requests: `page_size` 0 is DEFAULT_PAGE, more than MAX_PAGE
        is MAX_PAGE, so one call costs the store a bounded amount whatever is asked."""

        async def work(_: Operator) -> ApprovalPage:
            if page_size < 0:
                raise Refused(Code.INVALID_ARGUMENT, f"page_size {page_size} is negative")
            size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
            try:
                return await self._approvals.pending(size, page_token)
            except PageTokenError as e:
                raise Refused(Code.INVALID_ARGUMENT, str(e)) from None

        return await self.run(operator, "list_approvals", "", work)

    async def approval(self, operator: Operator | None, approval_id: str) -> Approval:
        return await self.run(
            operator, "get_approval", approval_id, lambda _: self._live(approval_id)
        )

    async def decide(
        self, operator: Operator | None, approval_id: str, *, approve: bool, note: str = ""
    ) -> Approval:
        async def work(who: Operator) -> Approval:
            approval = await self._live(approval_id)
            if not may_approve(approval, who.identity, who.claims):
                raise Refused(Code.PERMISSION_DENIED, _not_allowed(approval, who))
            try:
                return await self._approvals.decide(approval_id, approve, who.identity)
            except ApprovalError as e:
                raise Refused(Code.FAILED_PRECONDITION, str(e)) from None

        action = "approve" if approve else "deny"
        return await self.run(operator, action, approval_id, work, note=note)

    async def usage(
        self, operator: Operator | None, counter: str, scope: str, subject: Sequence[str]
    ) -> LimitState:
        hit = self.budget(counter, scope, subject)
        target = _counter_target(counter, scope, subject)
        return await self.run(operator, "get_usage", target, lambda _: self._counters.usage(hit))

    async def usages(
        self, operator: Operator | None, budgets: Sequence[tuple[str, str, Sequence[str]]]
    ) -> list[LimitState]:
        """Several counters' usage, as one audited read (the console's Usage page)."""

        async def work(_: Operator) -> list[LimitState]:
            return [await self._counters.usage(self.budget(*b)) for b in budgets]

        return await self.run(operator, "get_usage", f"{len(budgets)} counter(s)", work)

    async def reset(
        self, operator: Operator | None, counter: str, scope: str, subject: Sequence[str]
    ) -> LimitState:
        async def work(_: Operator) -> LimitState:
            hit = self.budget(counter, scope, subject)
            await self._counters.reset(hit.key)
            return await self._counters.usage(hit)

        target = _counter_target(counter, scope, subject)
        return await self.run(operator, "reset_counter", target, work)

    async def policy_status(self, operator: Operator | None) -> PolicyStatus:
        async def work(_: Operator) -> PolicyStatus:
            policy, error = self._policy.current, self._policy.last_error
            return PolicyStatus(
                policy.version,
                policy.source,
                tuple(policy.warnings),
                tuple(f"{p.path}: {p.message}" for p in error.problems) if error else None,
                self._policy.loaded_at,
                self._policy.refused_at,
            )

        return await self.run(operator, "get_policy_status", "", work)

    async def tools(self, operator: Operator | None, upstream: str = "") -> list[ClassedTool]:
        """Every catalogued tool (of one upstream, or all), classed by the policy in force."""

        async def work(_: Operator) -> list[ClassedTool]:
            entries = await self._catalogue_in_use().entries(upstream or None)
            policy = self._policy.current
            return [ClassedTool(e, risk_of(policy, e)) for e in entries]

        return await self.run(operator, "list_tools", upstream, work)

    async def accept_tool(
        self, operator: Operator | None, upstream: str, name: str, fingerprint: str, note: str = ""
    ) -> ClassedTool:
        """Pin the tool to its pending definition `fingerprint`, in the operator's name."""

        async def work(who: Operator) -> ClassedTool:
            catalogue = self._catalogue_in_use()
            try:
                entry = await catalogue.accept(upstream, name, fingerprint, by=who.identity)
            except KeyError as e:
                raise Refused(Code.NOT_FOUND, str(e.args[0])) from None
            except ValueError as e:
                raise Refused(Code.FAILED_PRECONDITION, str(e)) from None
            return ClassedTool(entry, risk_of(self._policy.current, entry))

        target = json.dumps([upstream, name, fingerprint], ensure_ascii=False)
        return await self.run(operator, "accept_tool", target, work, note=note)

    def _catalogue_in_use(self) -> Catalogue:
        if self._catalogue is None:
            raise Refused(
                Code.FAILED_PRECONDITION,
                "this gateway keeps no tool catalogue (serve --catalogue on)",
            )
        return self._catalogue

    async def explain(
        self, operator: Operator | None, call: McpCall, caller: Caller
    ) -> dict[str, Any]:
        """How the policy in force decides `call` by `caller`: `mcp-authz check`'s answer."""

        async def work(_: Operator) -> dict[str, Any]:
            return explain(self._policy.current, call, caller)

        return await self.run(operator, "explain", call.target or call.method or "", work)

    @property
    def keeps_catalogue(self) -> bool:
        return self._catalogue is not None

    def budget(self, counter: str, scope: str, subject: Sequence[str]) -> Hit:
        """The policy's budget `counter` for `subject`; Refused if there is none such."""
        policy = self._policy.current
        limit = limits_of(policy).get(counter)
        if limit is None:
            raise Refused(
                Code.NOT_FOUND, f"no counter {counter!r} in the policy in force ({policy.version})"
            )
        if scope and scope != limit.scope.value:
            raise Refused(
                Code.INVALID_ARGUMENT,
                f'counter "{limit.counter}" is kept per {limit.scope.value}, not {scope}',
            )
        parts = SUBJECT_PARTS[limit.scope]
        if len(subject) != len(parts):
            wanted = " ".join(p.upper() for p in parts) or "nothing"
            raise Refused(
                Code.INVALID_ARGUMENT,
                f'counter "{limit.counter}" is kept per {limit.scope.value}: its subject is '
                f"{wanted}, got {len(subject)} part(s)",
            )
        return Hit(
            CounterKey(limit.counter, limit.scope.value, tuple(subject)), limit.max, limit.window
        )

    async def run(
        self,
        operator: Operator | None,
        action: str,
        target: str,
        work: Callable[[Operator], Awaitable[T]],
        note: str = "",
    ) -> T:
        """Authenticate, check the role, run `work`, and audit and trace it whatever its end."""
        identity = operator.identity if operator else None
        attributes = {"mcp_authz.admin.action": action, "mcp_authz.admin.target": target}
        with self._telemetry.admin(f"{SERVICE}/{action}", attributes) as span:
            try:
                result = await work(_permitted(_authenticated(operator), action))
            except GrantError as e:
                refusal = Refused(_GRANT_ERRORS.get(type(e), Code.INVALID_ARGUMENT), str(e))
            except StoreUnavailable as e:
                refusal = Refused(Code.UNAVAILABLE, f"the store is unavailable: {e}")
            except CatalogueUnavailable as e:
                refusal = Refused(Code.UNAVAILABLE, f"the tool catalogue is unavailable: {e}")
            except Refused as e:
                refusal = e
            else:
                self._audit.record_admin(
                    action, identity, target, "ok", note=note, span=span.get_span_context()
                )
                return result
            span.set_attribute("mcp_authz.admin.result", refusal.code.value)
            self._audit.record_admin(
                action,
                identity,
                target,
                refusal.code.value,
                note=note,
                span=span.get_span_context(),
            )
        raise refusal

    async def _live(self, approval_id: str) -> Approval:
        # Ids are short (approvals/base.py); a longer one is nobody's, and is never sent on.
        approval = (
            await self._approvals.get(approval_id) if len(approval_id) <= MAX_APPROVAL_ID else None
        )
        if approval is None:
            raise Refused(
                Code.NOT_FOUND, f"no live approval {approval_id!r} (unknown, used or expired)"
            )
        return approval


def _authenticated(operator: Operator | None) -> Operator:
    if operator is None:
        raise Refused(
            Code.UNAUTHENTICATED, "a known admin token is required (authorization: Bearer TOKEN)"
        )
    return operator


def _permitted(operator: Operator, action: str) -> Operator:
    needed = NEEDS.get(action, Permission.READ)
    if not may(operator.claims, needed):
        raise Refused(
            Code.PERMISSION_DENIED,
            f"{operator.identity} may not {action.replace('_', ' ')}: it needs {needed.value}",
        )
    return operator


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


def _counter_target(counter: str, scope: str, subject: Sequence[str]) -> str:
    return json.dumps([counter, scope, *subject], ensure_ascii=False)


def limits_of(policy: Policy) -> dict[str, Limit]:
    """Every counter of the policy by name (a counter has one definition in a policy)."""
    rules: list[Rule] = []
    for grant in (policy.everyone, *policy.grants):
        entries = [*grant.tools.exact.values(), *(p.entry for p in grant.tools.patterns)]
        rules += [rule for entry in entries for rule in entry.rules]
        rules += grant.every_tool
        rules += [rule for entry in grant.risk.values() for rule in entry.rules]
    methods = [*policy.methods.exact.values(), *(p.entry for p in policy.methods.patterns)]
    rules += [rule for entry in methods for rule in entry.rules]
    return {c.limit.counter: c.limit for rule in rules for c in rule.counts}
