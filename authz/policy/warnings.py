"""Rules that load but can never take effect: worth a warning from `mcp-authz validate`."""

from __future__ import annotations

import re

from authz.policy.model import Action, Entry, Grant, Mode, Policy, RuleSet


def shadow_warnings(policy: Policy) -> list[str]:
    found: list[str] = []
    for grant in (*policy.grants, policy.everyone):
        found += _patterns(grant.tools) + _after_deny(grant.tools)
        found += [
            f"{t}: never applies, the tool is hidden"
            for t in grant.tools.exact
            if policy.is_hidden(t)
        ]
    found += _patterns(policy.methods) + _unreachable_grants(policy.grants)
    return found


def _patterns(rules: RuleSet) -> list[str]:
    # Patterns are tried most specific first; a later one that matches exactly the same
    # names (`a*` and `a**`) can never be reached.
    seen: dict[str, str] = {}
    found = []
    for p in rules.patterns:
        norm = re.sub(r"\*+", "*", p.glob)
        if norm in seen:
            found.append(f"{p.entry.id}: never matches, {seen[norm]} matches the same names first")
        else:
            seen[norm] = p.entry.id
    return found


def _after_deny(rules: RuleSet) -> list[str]:
    entries: list[Entry] = [*rules.exact.values(), *(p.entry for p in rules.patterns)]
    found = []
    for entry in entries:
        for i, rule in enumerate(entry.rules[:-1]):
            if rule.action is Action.DENY and rule.mode is Mode.ENFORCE:
                found += [
                    f"{later.id}: never evaluated, {rule.id} always denies first"
                    for later in entry.rules[i + 1 :]
                ]
                break
    return found


def _unreachable_grants(grants: tuple[Grant, ...]) -> list[str]:
    found = []
    for i, grant in enumerate(grants):
        for earlier in grants[:i]:
            if "*" in earlier.identities.exact or any(
                p.glob.strip("*") == "" for p in earlier.identities.patterns
            ):
                found.append(
                    f"grants.{grant.name}: never reached, grants.{earlier.name} admits "
                    "every identity first"
                )
                break
            if (earlier.identities.exact.keys(), earlier.claims) == (
                grant.identities.exact.keys(),
                grant.claims,
            ) and not grant.identities.patterns:
                found.append(
                    f"grants.{grant.name}: never reached, grants.{earlier.name} admits "
                    "the same callers first"
                )
                break
    return found
