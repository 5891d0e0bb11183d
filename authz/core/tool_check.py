"""The catalogue's part of a decision: look each called tool up, class it, and refuse a call
of a tool that drifted from its pin, was never listed, or is called with arguments its own
schema refuses.

Looking up comes first, because the policy keys rules on the class; refusing comes after the
policy's own verdict, so a tool the policy denies anyway is refused as denied. When the
catalogue cannot answer, the fail mode decides, as for the counter store (closed by default).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from authz.catalogue.base import (
    DEFAULT_UPSTREAM,
    Catalogue,
    CatalogueEntry,
    CatalogueUnavailable,
    Observed,
    upstream_of,
)
from authz.catalogue.validation import Schemas
from authz.core.outcome import Outcome, ToolFacts
from authz.policy.evaluate import Verdict
from authz.policy.model import UNKNOWN_RISK, Action, ApprovalRule, OnChange, Policy, Rule
from authz.protocol.errors import Refusal
from authz.protocol.mcp import McpCall
from authz.protocol.request import HttpRequest
from authz.protocol.tools import RiskClass, classify

# The rule ids of refusals the catalogue makes, as the policy's own are named.
UNKNOWN_TOOL_RULE = "(unknown tool)"
TOOL_CHANGED_RULE = "(tool changed)"
INPUT_SCHEMA_RULE = "(input schema)"


@dataclass(frozen=True, slots=True)
class Looked:
    """One called tool as the catalogue knows it."""

    facts: ToolFacts
    entry: CatalogueEntry | None = None
    # Why the catalogue could not answer; None when it did.
    error: str | None = None


class ToolCheck:
    def __init__(
        self,
        catalogue: Catalogue,
        upstream: str = DEFAULT_UPSTREAM,
        *,
        fail_open: bool = False,
        schemas: Schemas | None = None,
    ) -> None:
        self._catalogue = catalogue
        # A fixed upstream name, or AUTHORITY (see `upstream_of`).
        self._upstream = upstream
        self._fail_open = fail_open
        self._schemas = schemas or Schemas()

    async def look(
        self, policy: Policy, request: HttpRequest, calls: tuple[McpCall, ...]
    ) -> list[Looked | None]:
        """Per call, what the catalogue says of its tool (None for calls of no tool)."""
        upstream = upstream_of(request, self._upstream)
        return [await self._look(policy, upstream, c) if _calls_tool(c) else None for c in calls]

    async def _look(self, policy: Policy, upstream: str, call: McpCall) -> Looked:
        name = str(call.target)
        try:
            entry = await self._catalogue.lookup(upstream, name)
        except CatalogueUnavailable as e:
            return Looked(ToolFacts(upstream, UNKNOWN_RISK), error=str(e))
        if entry is None:
            return Looked(ToolFacts(upstream, UNKNOWN_RISK))
        facts = ToolFacts(
            upstream,
            risk_of(policy, entry).label,
            entry.current.open_world,
            entry.pinned.fingerprint,
            entry.pending.fingerprint if entry.pending else None,
        )
        return Looked(facts, entry)

    def judge(
        self, policy: Policy, base: Outcome, call: McpCall, verdict: Verdict, looked: Looked
    ) -> Outcome | Verdict:
        """The refusal of an allowed call the catalogue stops, or its verdict (with the
        approval a drifted tool needs under `on_change: approve`)."""
        refused = _Refuser(base, call, verdict, looked.facts)
        if looked.error is not None:
            if self._fail_open:
                return verdict
            reason = f"the tool catalogue cannot be read ({looked.error}); the fail mode is closed"
            return refused(Refusal.LIMITS_UNAVAILABLE, verdict.rule, reason)
        if looked.entry is None:
            if policy.catalogue.on_unknown is Action.ALLOW:
                return verdict
            reason = (
                f'tool "{call.target}" was never listed by upstream "{looked.facts.upstream}", '
                "so its arguments cannot be checked nor its risk classed "
                "(catalogue.on_unknown is deny): list the tools first"
            )
            return refused(Refusal.DENIED, UNKNOWN_TOOL_RULE, reason)
        return self._listed(refused, looked.entry, policy.catalogue.on_change)

    def _listed(
        self, refused: _Refuser, entry: CatalogueEntry, on_change: OnChange
    ) -> Outcome | Verdict:
        call, verdict = refused.call, refused.verdict
        if entry.pending is not None:
            changed = _changed(str(call.target), entry, on_change)
            if isinstance(changed, str):
                return refused(Refusal.TOOL_CHANGED, TOOL_CHANGED_RULE, changed)
            if changed is not None and verdict.approval is None:
                verdict = replace(verdict, approval=changed, rule=changed.id)
        problem = self._schemas.problem(entry.current, call.arguments)
        if problem is None:
            return verdict
        refused.facts = replace(refused.facts, argument_path=problem.path)
        return refused(Refusal.INVALID_ARGUMENTS, INPUT_SCHEMA_RULE, problem.message)


@dataclass(slots=True)
class _Refuser:
    """The refusal of one call, built only when the catalogue refuses it: allowed calls are
    the hot path and pay for nothing here."""

    base: Outcome
    call: McpCall
    verdict: Verdict
    facts: ToolFacts

    def __call__(self, refusal: Refusal, rule: str, reason: str) -> Outcome:
        return replace(
            self.base,
            refusal=refusal,
            subject=self.call,
            grant=self.verdict.grant,
            tool=self.facts,
            rule=rule,
            reason=reason,
        )


def _calls_tool(call: McpCall) -> bool:
    return call.method == "tools/call" and call.target is not None


def listing(policy: Policy, seen: Observed | None) -> tuple[bool, str]:
    """Whether a tool a `tools/list` answer carries may be shown, as far as the catalogue
    goes, and its class. Left out: a tool whose calls the catalogue refuses outright (over a
    bound while never-listed tools are denied, or drifted under `on_change: deny`), so the
    new definition's description, the very thing a swap would use to steer the agent, never
    reaches it. `seen` is None without a catalogue."""
    if seen is None:
        return True, UNKNOWN_RISK
    entry = seen.entry
    if entry is None:
        return policy.catalogue.on_unknown is Action.ALLOW, UNKNOWN_RISK
    risk = risk_of(policy, entry).label
    if entry.pending is None:
        return True, risk
    refused = entry.oversized or policy.catalogue.on_change is OnChange.DENY
    return not refused, risk


def risk_of(policy: Policy, entry: CatalogueEntry) -> RiskClass:
    """A catalogued tool's class under `policy`: its hints as far as the policy trusts its
    upstream, never below the operator's baseline; a drifted tool is the stricter of its two
    definitions. The one reading of a class, for decisions and the admin API alike."""
    rules = policy.catalogue
    trusted = entry.upstream in rules.trusted
    baseline = rules.baseline(entry.pinned.name)
    risk = classify(entry.pinned.annotations, baseline, trusted=trusted)
    if entry.pending is not None:
        risk = max(risk, classify(entry.pending.annotations, baseline, trusted=trusted))
    return risk


def _changed(name: str, entry: CatalogueEntry, on_change: OnChange) -> str | Rule | None:
    """Why a drifted tool is refused, the approval rule its calls need, or None (log)."""
    pinned, offered = entry.pinned.fingerprint[:12], (entry.pending or entry.pinned).fingerprint
    drift = f'tool "{name}" changed since it was pinned ({pinned} -> {offered[:12]})'
    if entry.oversized:
        return f"{drift}, to a definition over the catalogue's size bound that cannot be checked"
    if on_change is OnChange.DENY:
        return f"{drift}: refused until an operator accepts the new definition"
    if on_change is OnChange.APPROVE:
        reason = f"{drift}: each call needs a person's approval until an operator accepts it"
        return Rule(TOOL_CHANGED_RULE, Action.APPROVE, reason, approval=ApprovalRule())
    return None
