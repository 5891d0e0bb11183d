"""The policy as the evaluator sees it: immutable, validated, ready to match."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


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
    counter: str
    window: int
    max: int
    scope: Scope

    def describe(self) -> str:
        return f"{self.max} per {self.window}s per {self.scope.value}"


@dataclass(frozen=True, slots=True)
class Rule:
    # Where the rule stands in the policy, e.g. 'tools.get_balance' or 'tools["db_*"]':
    # shown to agents and operators so a decision can be traced back to a line.
    id: str
    action: Action
    reason: str | None = None
    limits: tuple[Limit, ...] = ()


@dataclass(frozen=True, slots=True)
class _Pattern:
    glob: str
    regex: re.Pattern[str]
    rule: Rule


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Rules keyed by exact name or glob (`*` any run of characters, `?` one character).

    An exact key always beats a pattern. Among patterns the most specific wins: the one
    with the most literal (non-wildcard) characters; on a tie, the one written first.
    """

    exact: Mapping[str, Rule]
    patterns: tuple[_Pattern, ...]

    @classmethod
    def build(cls, rules: Mapping[str, Rule]) -> RuleSet:
        exact = {k: r for k, r in rules.items() if not is_glob(k)}
        globs = [k for k in rules if is_glob(k)]
        # sorted() is stable, so equally specific patterns keep their order in the file.
        globs = sorted(globs, key=lambda g: -len(g.replace("*", "").replace("?", "")))
        return cls(exact, tuple(_Pattern(g, glob_regex(g), rules[g]) for g in globs))

    def match(self, name: str) -> Rule | None:
        rule = self.exact.get(name)
        if rule is not None:
            return rule
        return next((p.rule for p in self.patterns if p.regex.fullmatch(name)), None)


def is_glob(key: str) -> bool:
    return "*" in key or "?" in key


def glob_regex(glob: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True, slots=True)
class Policy:
    default: Action
    tools: RuleSet
    # Rules for methods other than tools/call; an unlisted method is allowed.
    methods: RuleSet
    # Identifies the exact file content that made this policy (a hash), for logs and audit.
    version: str
    source: str
