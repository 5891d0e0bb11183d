"""The policy as the evaluator sees it: immutable, validated, ready to match.

Both file formats (ours, which the seed uses, and PolicyLayer Intercept's YAML) load into
this one model; there is one evaluator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import re2

from authz.policy.conditions import Condition
from authz.protocol.identity import Caller, claims_match
from authz.protocol.tools import RiskClass


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    # Allow only once a person has approved this exact call.
    APPROVE = "approve"


# What may happen to a tool no rule lists: asking a person about every unknown tool is not
# a posture, so `approve` is for rules only.
POSTURES = (Action.ALLOW, Action.DENY)


class OnChange(StrEnum):
    """What happens to a call of a tool whose definition drifted from its pin."""

    # Refused with TOOL_CHANGED until an operator accepts the new definition.
    DENY = "deny"
    # Each call waits for a person's approval, as an `approve` rule would make it.
    APPROVE = "approve"
    # Judged against the new definition, and the drift noted in the audit line.
    LOG = "log"


# The class of a tool the catalogue cannot class: never listed, or no catalogue at all.
UNKNOWN_RISK = "unknown"
# The keys of `risk` rules: every class, and `unknown`.
RISK_LABELS = (*(c.label for c in RiskClass), UNKNOWN_RISK)


class ListView(StrEnum):
    """What a caller's `tools/list` shows (`tools_list` in both syntaxes)."""

    # Only the tools this caller could call: hidden and outright-denied ones are left out.
    FILTERED = "filtered"
    # Every tool the server lists; calls are still judged one by one.
    WHOLE = "whole"


class Mode(StrEnum):
    ENFORCE = "enforce"
    # Evaluate and record "would deny", but let the call through.
    DRY_RUN = "dry_run"


class Scope(StrEnum):
    """Whose budget a limit counts: per identity within its grant, per identity across
    grants, per identity and MCP session, or one budget for everyone."""

    GRANT = "grant"
    IDENTITY = "identity"
    SESSION = "session"
    GLOBAL = "global"


NAMED_WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True, slots=True)
class Limit:
    """A budget: at most `max` units in any rolling `window` seconds, kept per `scope`."""

    counter: str
    window: int
    max: int
    scope: Scope

    def describe(self) -> str:
        return f"{self.max} per {self.window}s per {self.scope.value}"


@dataclass(frozen=True, slots=True)
class Counting:
    """How one rule draws on a budget: a fixed number of units, or an argument's value."""

    limit: Limit
    increment: int = 1
    increment_from: tuple[str, ...] | None = None
    # The rule named when this budget refuses a call, e.g. '/all_tools/limits/calls-per-minute';
    # empty for the id of the rule that holds it.
    id: str = ""


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """When an `approve` rule asks a person, for how long, and who may answer."""

    # All must hold for approval to be needed; none means every call needs it.
    when: tuple[Condition, ...] = ()
    # Seconds a request (and an approval of it) stays valid.
    lifetime: int = 900
    approvers: tuple[str, ...] = ()
    approver_claims: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rule:
    # Where the rule stands in the policy, as a JSON pointer ('/tools/get_balance',
    # '/tools/create_charge/deny_if/args.amount-gt') or Intercept's 'tools.t.rules[1] (name)':
    # shown to agents and operators alike.
    id: str
    action: Action
    reason: str | None = None
    # All must hold, or the call is refused with `reason`.
    conditions: tuple[Condition, ...] = ()
    counts: tuple[Counting, ...] = ()
    mode: Mode = Mode.ENFORCE
    approval: ApprovalRule | None = None
    # The call is refused when any of these holds or cannot be judged (PolicyLayer's deny_if).
    denies: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class Entry:
    """The rules under one key of `tools` (or `methods`); every one must pass."""

    id: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class _Pattern:
    glob: str
    # An RE2 program: matching time is linear in the name, whatever the glob's shape.
    regex: Any
    entry: Entry


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Entries keyed by exact name or glob (`*` any run of characters, `?` one character).

    An exact key always beats a pattern. Among patterns the most specific wins: the one
    with the most literal (non-wildcard) characters; on a tie, the one written first.
    """

    exact: Mapping[str, Entry] = field(default_factory=dict)
    patterns: tuple[_Pattern, ...] = ()

    @classmethod
    def build(cls, entries: Mapping[str, Entry]) -> RuleSet:
        exact = {k: e for k, e in entries.items() if not is_glob(k)}
        # sorted() is stable, so equally specific patterns keep their order in the file.
        globs = sorted((k for k in entries if is_glob(k)), key=lambda g: -literal_count(g))
        return cls(exact, tuple(_Pattern(g, glob_regex(g), entries[g]) for g in globs))

    def match(self, name: str) -> Entry | None:
        entry = self.exact.get(name)
        if entry is not None:
            return entry
        return next((p.entry for p in self.patterns if p.regex.fullmatch(name)), None)

    def __len__(self) -> int:
        return len(self.exact) + len(self.patterns)


def is_glob(key: str) -> bool:
    return "*" in key or "?" in key


def literal_count(glob: str) -> int:
    return len(glob) - glob.count("*") - glob.count("?")


def glob_regex(glob: str) -> Any:
    """The glob as an RE2 program. Python's backtracking `re` takes time exponential in the
    number of `*`s on a near-miss (a policy's `a*b*c*d` against a long tool name stalled the
    event loop for seconds); RE2 never backtracks."""
    parts = (".*" if c == "*" else "." if c == "?" else re2.escape(c) for c in glob)
    return re2.compile("(?s)" + "".join(parts))


@dataclass(frozen=True, slots=True)
class CatalogueRules:
    """How the policy reads the tool catalogue: pins, unknown tools, trust and baselines."""

    on_change: OnChange = OnChange.DENY
    # A tools/call of a tool its upstream never listed: the gateway cannot check its schema
    # nor class it, so by default it does not guess.
    on_unknown: Action = Action.DENY
    # Upstreams whose annotations are taken as they are (they may loosen a class).
    trusted: frozenset[str] = frozenset()
    # The operator's class per tool name or glob, matched as tool rules are (exact first,
    # then the most specific glob); each entry's id is the class's label.
    baselines: RuleSet = field(default_factory=RuleSet)

    def baseline(self, tool: str) -> RiskClass | None:
        """The operator's class for `tool`: a floor the server's hints cannot lower."""
        entry = self.baselines.match(tool)
        return None if entry is None else RiskClass[entry.id.upper()]


@dataclass(frozen=True, slots=True)
class Grant:
    """Tool rules for a set of callers. The policy's top level is the grant of everyone
    that no named grant claims."""

    name: str
    default: Action
    tools: RuleSet
    # Rules every tool call in this grant must also pass (Intercept's "*" key), after the
    # tool's own; they never rescue a tool that `default: deny` refuses.
    every_tool: tuple[Rule, ...] = ()
    # Who belongs: identities by exact name or glob, or JWT claim values (any one matches).
    identities: RuleSet = field(default_factory=RuleSet)
    claims: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    mode: Mode = Mode.ENFORCE
    # Rules per risk class (`read`, `write`, `destructive`, `unknown`): a call of a tool in
    # that class must pass them too, after the tool's own rules; a class with rules also
    # governs tools the grant does not name, as their entry would.
    risk: Mapping[str, Entry] = field(default_factory=dict)

    def admits(self, identity: str, claims: Mapping[str, Any]) -> bool:
        return self.identities.match(identity) is not None or claims_match(claims, self.claims)


@dataclass(frozen=True, slots=True)
class Policy:
    everyone: Grant
    grants: tuple[Grant, ...] = ()
    # Rules for methods other than tools/call; an unlisted method is allowed.
    methods: RuleSet = field(default_factory=RuleSet)
    # Tools refused whatever the grant (`hide`): names or globs; "*" hides all.
    hidden: frozenset[str] = frozenset()
    # Identifies the exact file content that made this policy (a hash), for logs and audit.
    version: str = ""
    source: str = ""
    # Things that load but deserve a look (unreachable rules, features only partly honoured).
    warnings: tuple[str, ...] = ()
    # What the agent is told when the policy itself refuses (hidden, default deny); None for
    # the gateway's own sentence.
    on_deny: str | None = None
    catalogue: CatalogueRules = field(default_factory=CatalogueRules)
    list_view: ListView = ListView.FILTERED
    # Verdicts on tool calls whose rules never read the arguments, by (grant, tool, risk):
    # the same for every such call while this policy lasts (authz/policy/evaluate.py). Not
    # an init field, so a policy made with dataclasses.replace starts with none.
    verdicts: dict[tuple[int, str, str], Any] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    @property
    def default(self) -> Action:
        return self.everyone.default

    @property
    def tools(self) -> RuleSet:
        return self.everyone.tools

    def grant_for(self, identity: str, claims: Mapping[str, Any]) -> Grant:
        if not self.grants:
            return self.everyone
        return next((g for g in self.grants if g.admits(identity, claims)), self.everyone)

    def grant_of(self, caller: Caller) -> Grant | None:
        """The caller's grant: the one its grant token names (None when the policy has no
        such grant), else the first that admits it."""
        if caller.policy_grant is None:
            return self.grant_for(caller.identity, caller.claims)
        return next((g for g in self.grants if g.name == caller.policy_grant), None)

    def grant_named(self, name: str) -> Grant | None:
        """The grant called `name` (the top level is "default"), None when there is none."""
        if name == self.everyone.name:
            return self.everyone
        return next((g for g in self.grants if g.name == name), None)

    def is_hidden(self, tool: str) -> bool:
        """Whether `hide` names the tool: pure, for the call-time refusal and for whatever
        filters `tools/list`."""
        if tool in self.hidden:
            return True
        return bool(self.hidden) and any(
            is_glob(h) and glob_regex(h).fullmatch(tool) for h in self.hidden
        )
