"""One request, one decision: parse, identify, evaluate, count.

This is the single decision core every transport calls. It does no I/O of its own but the
counter store's one atomic operation, and it never raises for anything a client sends.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from authz.errors import Refusal, RequestRefused
from authz.identity import Caller, IdentitySource, caller_of
from authz.limits.base import CounterStore, HitResult, LimitState, StoreUnavailable, combine
from authz.mcp import McpCall, RequestId, parse_request
from authz.policy.evaluate import Verdict, evaluate, hits
from authz.policy.model import Policy
from authz.request import HttpRequest


class FailMode(StrEnum):
    """What to do with a call that needs counting when the counter store cannot answer."""

    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Outcome:
    decision_id: str
    policy_version: str
    refusal: Refusal | None
    rule: str
    reason: str
    calls: tuple[McpCall, ...] = ()
    # The call a refusal is about (the first denied one of a batch).
    subject: McpCall | None = None
    caller: Caller | None = None
    limits: tuple[LimitState, ...] = ()
    retry_after: float | None = None
    # Allowed only because the store was down and the fail mode is open.
    fail_open: bool = False
    request_ids: tuple[RequestId | None, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    @property
    def label(self) -> str:
        return "allowed" if self.refusal is None else self.refusal.label


class Decider:
    def __init__(
        self,
        policy: Callable[[], Policy],
        identity: IdentitySource,
        store: CounterStore,
        fail_mode: FailMode = FailMode.CLOSED,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._policy = policy
        self._identity = identity
        self._store = store
        self._fail_mode = fail_mode
        self._new_id = new_id

    async def decide(self, request: HttpRequest) -> Outcome:
        base = Outcome(self._new_id(), self._policy().version, None, "", "")
        try:
            calls = parse_request(request)
        except RequestRefused as e:
            return replace(
                base,
                refusal=e.refusal,
                rule="request",
                reason=e.message,
                request_ids=(e.request_id,),
            )
        base = replace(base, calls=calls, request_ids=tuple(c.id for c in calls))
        identity = self._identity.identify(request)
        if identity is None:
            return replace(
                base,
                refusal=Refusal.UNAUTHENTICATED,
                rule="identity",
                reason="the request carries no identity from the configured source",
            )
        return await self._judge(replace(base, caller=caller_of(request, identity)))

    async def _judge(self, base: Outcome) -> Outcome:
        policy = self._policy()
        verdicts = [(call, evaluate(policy, call)) for call in base.calls]
        for call, verdict in verdicts:
            if not verdict.allowed:
                return _verdict(base, call, verdict, Refusal.DENIED)
        counted = [(call, v) for call, v in verdicts if v.limits]
        if not counted:
            return _allowed(base, verdicts)
        assert base.caller is not None  # noqa: S101 - set by decide() before judging
        wanted = combine([h for _, v in counted for h in hits(v.limits, base.caller)])
        try:
            result = await self._store.hit(wanted)
        except StoreUnavailable as e:
            return self._unavailable(base, counted[0], str(e))
        if not result.allowed:
            return _limited(base, counted, result)
        return replace(_allowed(base, counted), limits=result.states)

    def _unavailable(self, base: Outcome, first: tuple[McpCall, Verdict], error: str) -> Outcome:
        call, verdict = first
        reason = f"rate limits cannot be checked ({error})"
        if self._fail_mode is FailMode.OPEN:
            return replace(
                base,
                subject=call,
                rule=verdict.rule,
                fail_open=True,
                reason=reason + "; allowed because the fail mode is open",
            )
        return _verdict(
            base,
            call,
            Verdict(False, verdict.rule, reason + "; the fail mode is closed"),
            Refusal.LIMITS_UNAVAILABLE,
        )


def _allowed(base: Outcome, verdicts: list[tuple[McpCall, Verdict]]) -> Outcome:
    if not verdicts:
        return replace(base, rule="request", reason="no MCP call in the request")
    call, verdict = verdicts[0]
    return replace(base, subject=call, rule=verdict.rule, reason=verdict.reason)


def _verdict(base: Outcome, call: McpCall, verdict: Verdict, refusal: Refusal) -> Outcome:
    return replace(base, refusal=refusal, subject=call, rule=verdict.rule, reason=verdict.reason)


def _limited(base: Outcome, counted: list[tuple[McpCall, Verdict]], result: HitResult) -> Outcome:
    state = result.blocking[0]
    limit = next(
        lim for _, v in counted for lim in v.limits if lim.counter == state.hit.key.counter
    )
    call, verdict = next((c, v) for c, v in counted if limit in v.limits)
    wait = result.retry_after
    spent = f'limit "{limit.counter}" ({limit.describe()}) is spent'
    reason = (
        f"{spent}; retry in {_seconds(wait)}s"
        if wait is not None
        else (f'the call costs more than limit "{limit.counter}" ({limit.describe()}) ever allows')
    )
    return replace(
        base,
        refusal=Refusal.RATE_LIMITED,
        subject=call,
        rule=verdict.rule,
        reason=reason,
        limits=result.states,
        retry_after=wait,
    )


def _seconds(wait: float) -> int:
    return max(1, int(-(-wait // 1)))


def retry_seconds(outcome: Outcome) -> int | None:
    """Whole seconds to wait before the refused call can fit (rounded up, at least 1)."""
    return None if outcome.retry_after is None else _seconds(outcome.retry_after)
